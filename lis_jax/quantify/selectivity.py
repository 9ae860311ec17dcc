"""What each unit changes: per-unit metric changes, bootstrap intervals, a random-direction
null, and a ranking of units per concept.

A *concept* is a (part, metric) pair, e.g. (cap, area). For unit u and start sample s,
the change of a concept over the sweep is its value at the last step minus its value at
the first step, normalised as the reference's notebook does (kaschube-lab/LinkingInStyle
notebooks/LinkingInStyle.ipynb, `get_feat_change_single_unit`):

  area          relative: (last - first) / first, with first = 0 replaced by 1; read
                from `log_area` (the calibrated set), the log ratio log(last / first),
                and the object's (the last part) as twice the log ratio of the spread
                of its parts' centres (`part_spread`; a part's own size moves the
                union's area but not where the parts sit)
  luminance     divided by the largest luminance (85 on the reference's scale); the
                calibrated set's brightness is already in [0, 1]
  angle         wrapped into [-90, 90) degrees (orientations are mod 180; the reference
                takes the raw difference); in a concept set with an `ANGLE_WEIGHT` source
                (the calibrated set), times the part's elongation at the first step:
                a rotation turns an elongated part's axis by the rotation angle, while a
                near-round part's moment axis is set by shape details and swings
                whatever the rotation, so its change is given the weight its axis has
                (0 for a disk)
  motion        distance the part's centre of mass moved, in pixels (>= 0)
  all others    raw difference (entropy in bits, contrast, colour in [0, 1], centre /
                width / height in pixels, eccentricity)

A unit's sweep moves every start sample along the same direction in w (the link is
linear), so the null is a set of R random directions, each applied to every start
sample and shared by all units, drawn with the units' geometry (r-space directions with
the units' swept ranges, pushed through the link: lis_jax.analysis.nulls; the earlier
isotropic-w directions behind quantify.null_space = 'w') (`shared_null_statistics`).
Per unit and concept:
  mean, ci_low, ci_high   the average change over the start samples (the median by
                          default, robust to the odd failed measurement; or the mean, the
                          reference's) and its percentile bootstrap interval (resampling
                          start samples)
  null_rms                RMS over the null directions of the same average change
  effect                  mean / null_rms
  p_null                  two-sided permutation p-value: (#{null directions whose |average
                          change| exceeds the unit's} + V (1 + ties)) / (1 + R), V ~ U(0, 1),
                          and where fewer than 10 null directions reach it, a generalized
                          Pareto tail fitted to the null's largest quarter
                          (lis_jax.analysis.calls), so p is not capped at 1 / (R + 1);
                          valid because under the null the unit's sweep is one more
                          random-direction sweep (P(p <= alpha) ~ alpha: `null_calls`
                          measures it on the null directions, leave one out)
  q_null                  Benjamini-Hochberg q-value over the family of every
                          (unit, concept) pair of the table
  p_change, q_change,     the second call, on the size of the change rather than its rank
  changes                 among random directions: a one-sided t-test across the start
                          samples of H0 |mean change| <= min_effect x null_rms
                          (quantify.min_effect, 0.5: half a random direction's RMS
                          change), BH over the same family; 'changes' is q_change <=
                          q_level. On the built-in world a unit's sweep moves its factors
                          no more than random r-space directions do (README "Which units
                          are selective"), so 'selective' (beyond random) calls nothing
                          there while 'changes' finds the units that move a concept
  selective               q_null <= q_level (quantify.q_level, 0.1: the false-discovery
                          rate of the table's calls is controlled at that level);
                          q_level None: p_null <= alpha, uncorrected
  rank                    rank among all units for this concept of |mean| (1 = largest
                          change, the reference's quantity) or of |effect|

`unit_statistics` is the earlier null (one independent random direction per unit and
start sample, a bootstrap of its changes); it ignores that a unit's samples share one
direction and flags far more than alpha of random-direction sweeps
(benchmarks/selectivity_results.md); it is kept only to measure that.

Undefined changes (a part absent at the first or last step) are left out of that
concept's statistics (`n` says how many samples remained).
"""
from __future__ import annotations

import csv
import warnings
from typing import Mapping, Sequence

import numpy as np

from lis_jax.analysis import calls
from lis_jax.quantify import metrics

# Concepts measured per part: name -> source in the metrics dict (ellipse fields, 'ell_*',
# are those of the part's largest connected component). Two sets (`quantify.concepts`):
# 'reference' measures what the reference measures; 'calibrated' swaps in the metrics
# that track their factor on images with known factors (benchmarks/selectivity_results.md):
# brightness (mean RGB) for Rec. 601 luma, contrast (std / mean brightness over the part's
# interior) for local entropy, and the whole part's moment orientation for the largest
# component's ellipse angle.
CONCEPT_SETS = {
    "reference": {
        "area": "area",
        "luminance": "luminance",
        "texture": "entropy_mean",
        "colour_r": "colour_r",
        "colour_g": "colour_g",
        "colour_b": "colour_b",
        "centre_x": "centre_x",
        "centre_y": "centre_y",
        "eccentricity": "ell_eccentricity",
        "angle": "ell_angle",
        "width": "ell_width",
        "height": "ell_height",
    },
}
# The calibrated set (issue 19) also reads luminance over the part's interior (away from
# edge pixels that mix in the background's and neighbours' colours), an area's change as a
# log ratio (shrinking and growing by one factor are equally large), and weights the angle's
# change by the part's elongation (`sweep_changes`; ANGLE_WEIGHT is a weight, not a concept).
ANGLE_WEIGHT = "elongation"
# Texture is the contrast of the colour channel with the fewest saturated pixels
# (`channel_contrast`): bright stripes clip at 255 in some channel, and the brightness (the
# mean of the channels) then loses their peaks, so its contrast fell as the part brightened.
# The object's area (the last part, `metrics.OBJECT_PART`) is read from the spread of its
# parts' centres (OBJECT_SIZE, `part_spread`): a part's width or height changes its own
# extent and with it the union's area, but not where the parts sit, so the spread moves
# with the whole object's size alone (`sweep_changes`: twice its log ratio, an area's).
OBJECT_SIZE = "object_size"
PART_SPREAD = "part_spread"
CONCEPT_SETS["calibrated"] = {**CONCEPT_SETS["reference"], "area": "log_area", "luminance": "interior_brightness",
                              "texture": "channel_contrast", "angle": "angle", ANGLE_WEIGHT: "elongation",
                              OBJECT_SIZE: PART_SPREAD}
CONCEPT_SOURCES = CONCEPT_SETS["reference"]
CONCEPT_METRICS = tuple(CONCEPT_SOURCES) + ("motion",)  # The same names in every set.
TABLE_COLUMNS = ("unit", "part", "metric", "mean", "ci_low", "ci_high", "n", "null_rms", "effect",
                 "p_null", "q_null", "selective", "rank")
AVERAGES = ("mean", "median", "hl")  # a unit's average change over its start samples (quantify.average)
UNIT_TABLE_COLUMNS = TABLE_COLUMNS + ("p_change", "q_change", "changes")  # quantify's table: both calls


def concept_sources(name: str) -> dict[str, str]:
  """The concept set `name` ('reference' or 'calibrated'): concept -> metrics-dict key."""
  if name not in CONCEPT_SETS:
    raise ValueError(f"unknown concept set {name!r} (choose from {', '.join(CONCEPT_SETS)})")
  return CONCEPT_SETS[name]


def concept_values(m: Mapping[str, np.ndarray],
                   sources: Mapping[str, str] = CONCEPT_SOURCES) -> np.ndarray:
  """Metrics dict (from metrics.part_metrics, any leading shape) -> [..., P, M'] values.

  M' = len(sources) (motion is derived from two steps in `sweep_changes`, which also
  drops an ANGLE_WEIGHT and an OBJECT_SIZE column after using them); a PART_SPREAD source
  is computed from the parts' centres (`part_spread`).
  """
  cols = []
  for src in sources.values():
    if src == PART_SPREAD:
      cols.append(part_spread(m["centre_x"], m["centre_y"]))
      continue
    x = np.asarray(m[src], np.float64)
    cols.append(x[..., 0] if src.startswith("ell_") else x)  # largest component
  return np.stack(cols, -1)


def part_spread(centre_x: np.ndarray, centre_y: np.ndarray) -> np.ndarray:
  """The spread of the parts' centres, in the object's column.

  Args:
    centre_x, centre_y: [..., P] centres of mass of the parts, the last column the object
      (the union of the others, `metrics.with_object`); NaN for an absent part.
  Returns:
    [..., P]: in the last column the RMS distance (pixels) of the present parts' centres
    (all columns but the last) from their mean, NaN with fewer than two present; NaN in
    the other columns.
  """
  x, y = np.asarray(centre_x, np.float64)[..., :-1], np.asarray(centre_y, np.float64)[..., :-1]
  ok = np.isfinite(x) & np.isfinite(y)
  n = ok.sum(-1)
  with np.errstate(invalid="ignore", divide="ignore"):
    mx = np.where(ok, x, 0.0).sum(-1, keepdims=True) / n[..., None]
    my = np.where(ok, y, 0.0).sum(-1, keepdims=True) / n[..., None]
    sq = np.where(ok, (x - mx) ** 2 + (y - my) ** 2, 0.0).sum(-1) / n
  spread = np.where(n >= 2, np.sqrt(sq), np.nan)
  out = np.full(np.shape(centre_x), np.nan)
  out[..., -1] = spread
  return out


def sweep_changes(first: np.ndarray, last: np.ndarray,
                  sources: Mapping[str, str] = CONCEPT_SOURCES) -> np.ndarray:
  """Normalised change of every concept between two steps.

  Args:
    first, last: [..., P, M'] from `concept_values` at the sweep's first and last step.
    sources: the concept set both were read with.
  Returns:
    [..., P, M] changes, metrics in CONCEPT_METRICS order (NaN where undefined).
  """
  names = list(sources)
  d = last - first
  a = names.index("area")
  if sources["area"] != "log_area":  # a difference of logs is already the log ratio
    d[..., a] = d[..., a] / np.where(first[..., a] == 0, 1.0, first[..., a])
  if sources["luminance"] == "luminance":  # the reference's 0..85 scale; brightness is 0..1
    d[..., names.index("luminance")] /= metrics.MAX_LUMINANCE
  g = names.index("angle")
  d[..., g] = (d[..., g] + 90.0) % 180.0 - 90.0
  if ANGLE_WEIGHT in names:  # the axis's change, weighted by how well the axis is defined
    k = names.index(ANGLE_WEIGHT)
    d[..., g] *= first[..., k]
    d = np.delete(d, k, axis=-1)
    names.remove(ANGLE_WEIGHT)
  if OBJECT_SIZE in names:  # the object's area: twice the log ratio of its parts' spread
    k = list(sources).index(OBJECT_SIZE)  # in first / last
    with np.errstate(invalid="ignore", divide="ignore"):
      d[..., -1, names.index("area")] = 2.0 * np.log(last[..., -1, k] / first[..., -1, k])
    d = np.delete(d, names.index(OBJECT_SIZE), axis=-1)
    names.remove(OBJECT_SIZE)
  motion = np.hypot(d[..., names.index("centre_x")], d[..., names.index("centre_y")])
  return np.concatenate([d, motion[..., None]], -1)


def _resample_counts(rng: np.random.Generator, n_boot: int, n_pool: int, n_draw: int) -> np.ndarray:
  """[n_boot, n_pool] how often each pooled item is drawn in each of n_boot resamples of n_draw."""
  idx = rng.integers(0, n_pool, size=(n_boot, n_draw))
  counts = np.zeros((n_boot, n_pool))
  np.add.at(counts, (np.arange(n_boot)[:, None], idx), 1.0)
  return counts


def _resampled_means(counts: np.ndarray, x: np.ndarray) -> np.ndarray:
  """counts [B, S], x [S, F] (NaN = missing) -> [B, F] means of the resamples (NaN if none valid)."""
  valid = ~np.isnan(x)
  num = counts @ np.where(valid, x, 0.0)
  den = counts @ valid.astype(np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(den > 0, num / np.maximum(den, 1e-300), np.nan)


def _nanmedian(x: np.ndarray, axis: int) -> np.ndarray:
  """np.nanmedian along axis by one sort (NaNs sort last), several times faster on the
  short axes here (a unit's start samples and their pairwise averages)."""
  xs = np.sort(np.moveaxis(x, axis, -1), axis=-1)
  n = np.sum(~np.isnan(xs), axis=-1, keepdims=True)
  lo = np.take_along_axis(xs, np.maximum((n - 1) // 2, 0), -1)
  hi = np.take_along_axis(xs, np.maximum(n // 2, 0), -1)
  return np.where(n > 0, (lo + hi) / 2, np.nan)[..., 0]


def _average(x: np.ndarray, average: str, axis: int) -> np.ndarray:
  """NaN-aware mean, median or Hodges-Lehmann estimate ('hl': the median of the Walsh
  averages (x_i + x_j) / 2, i <= j) of x along axis (NaN where all are NaN)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    if average == "hl":
      n = x.shape[axis]
      i, j = np.triu_indices(n)
      xm = np.moveaxis(x, axis, 0)
      return _nanmedian((xm[i] + xm[j]) / 2, 0)
    return _nanmedian(x, axis) if average == "median" else np.nanmean(x, axis)


def _resampled_hl(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
  """`_average(x[idx], 'hl', 1)` to the bit, without the resamples' Walsh averages.

  A resample's Walsh averages are the sample's own pairwise averages (x_a + x_c) / 2,
  a <= c, each counted n_a n_c times (n_a (n_a + 1) / 2 for a = c; n: how often the
  resample drew each sample): its median is a weighted median over the S (S + 1) / 2
  pairs, sorted once per column instead of once per resample and column (a unit's
  [16, 52] changes, 1000 resamples: 0.20 s -> 0.027 s; tests/test_quantify_selectivity.py).

  Args:
    x: [S, F] samples (NaN = missing); idx: [B, S] each resample's draws (indices into x).
  Returns:
    [B, F] each resample's Hodges-Lehmann estimate (NaN where a column has no value).
  """
  s, f = x.shape
  b = idx.shape[0]
  counts = np.zeros((b, s), np.int64)
  np.add.at(counts, (np.arange(b)[:, None], idx), 1)
  a, c = np.triu_indices(s)
  p = len(a)
  dt = np.int16 if p < (1 << 15) else np.int64   # a resample has S (S + 1) / 2 Walsh averages
  weight = np.where(a == c, counts[:, a] * (counts[:, a] + 1) // 2, counts[:, a] * counts[:, c])
  pairs = (x[a] + x[c]) / 2  # [P, F]
  order = np.argsort(pairs, axis=0, kind="stable")  # [P, F], NaN pairs last
  ranked = np.take_along_axis(pairs, order, 0)
  cum = weight.astype(dt).T[order]  # [P, F, B]: each pair's count, in its column's order ...
  for i in range(1, p):   # ... summed over the pairs up to it (row by row: numpy's cumsum
    cum[i] += cum[i - 1]  # along a leading axis of int16 is ~5x slower)
  valid = np.sum(~np.isnan(pairs), axis=0)  # [F]: the non-NaN pairs come first
  n = np.where(valid[:, None] > 0, cum[np.maximum(valid - 1, 0), np.arange(f)], 0)  # [F, B]
  # the k-th smallest (from 0) is the first pair whose running count exceeds k; past the
  # non-NaN pairs the running count is >= n > k
  lo = np.count_nonzero(cum <= ((n - 1) // 2).astype(dt), axis=0)
  hi = np.minimum(np.count_nonzero(cum <= (n // 2).astype(dt), axis=0), p - 1)
  cols = np.arange(f)[:, None]
  return np.where(n > 0, (ranked[np.minimum(lo, p - 1), cols] + ranked[hi, cols]) / 2, np.nan).T


def _nanpercentile_cols(x: np.ndarray, q: Sequence[float]) -> np.ndarray:
  """np.nanpercentile(x, q, axis=0) to the bit, faster: NaN-free columns go through
  np.percentile together (nanpercentile applies a Python function per column: 4.8 ms
  against 1.1 ms on bootstrap_ci's [1000, 52]); only columns with a NaN take nanpercentile.

  Args:
    x: [B, F] values (NaN = missing).
    q: [Q] percentiles in [0, 100].
  Returns:
    [Q, F] percentiles (NaN for an all-NaN column, with nanpercentile's RuntimeWarning).
  """
  # No rows at all: nanpercentile's own answer.
  clean = ~np.any(np.isnan(x), axis=0) if x.shape[0] else np.zeros(x.shape[1], bool)
  if clean.all():
    return np.percentile(x, q, axis=0)
  out = np.empty((len(q), x.shape[1]))
  if clean.any():
    out[:, clean] = np.percentile(x[:, clean], q, axis=0)
  out[:, ~clean] = np.nanpercentile(x[:, ~clean], q, axis=0)
  return out


def bootstrap_ci(x: np.ndarray, *, rng: np.random.Generator, n_boot: int = 1000,
                 level: float = 0.95, average: str = "mean") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Mean (or median) over axis 0 and its percentile bootstrap interval (NaN-aware).

  Args:
    x: [S, ...] samples (NaN = missing).
    rng: numpy Generator (the caller seeds it).
    n_boot: bootstrap resamples.
    level: interval coverage.
    average: 'mean', 'median' or 'hl' (Hodges-Lehmann).
  Returns:
    average, low, high: each [...].
  """
  s = x.shape[0]
  flat = x.reshape(s, -1).astype(np.float64)
  if average == "hl":
    boots = _resampled_hl(flat, rng.integers(0, s, size=(n_boot, s)))  # [B, F]
  elif average == "median":
    boots = _average(flat[rng.integers(0, s, size=(n_boot, s))], average, 1)  # [B, F]
  else:
    boots = _resampled_means(_resample_counts(rng, n_boot, s, s), flat)  # [B, F]
  q = 100 * (1 - level) / 2
  with warnings.catch_warnings():  # All-NaN columns (a part never present) give NaN quietly.
    warnings.simplefilter("ignore", RuntimeWarning)
    mean = _average(flat, average, 0)
    low, high = _nanpercentile_cols(boots, [q, 100 - q])
  shape = x.shape[1:]
  return mean.reshape(shape), low.reshape(shape), high.reshape(shape)


def null_pvalue(mean: np.ndarray, null: np.ndarray, n_draw: int, *, rng: np.random.Generator,
                n_boot: int = 1000) -> np.ndarray:
  """Two-sided bootstrap p-value of `mean` under the null changes.

  Args:
    mean: [...] observed mean change.
    null: [R, ...] pooled null changes (NaN = missing).
    n_draw: how many changes the observed mean averaged (the number of start samples).
    rng: numpy Generator.
    n_boot: resampled null means.
  Returns:
    [...] p = (1 + #{|null mean| >= |mean|}) / (1 + n_boot); NaN where `mean` is NaN.
  """
  r = null.shape[0]
  flat = null.reshape(r, -1).astype(np.float64)
  boots = _resampled_means(_resample_counts(rng, n_boot, r, n_draw), flat)  # [B, F]
  m = np.abs(mean.reshape(-1))
  with np.errstate(invalid="ignore"):
    hits = np.sum(np.abs(boots) >= m[None], axis=0)
  p = (1.0 + hits) / (1.0 + n_boot)
  return np.where(np.isnan(m), np.nan, p).reshape(mean.shape)


def unit_statistics(deltas: np.ndarray, null_deltas: np.ndarray, *, seed: int, n_boot: int = 1000,
                    level: float = 0.95, alpha: float = 0.05) -> dict[str, np.ndarray]:
  """Statistics of every (unit, concept) pair.

  Args:
    deltas: [U, S, P, M] changes over the sweep for U units and S start samples.
    null_deltas: [U, R, P, M] changes along random directions of each unit's sweep length
      (R = S x draws per sample).
    seed: seeds the bootstrap.
    n_boot, level, alpha: bootstrap resamples, interval coverage, significance level.
  Returns:
    dict of [U, P, M] arrays: mean, ci_low, ci_high, n, null_rms, effect, p_null,
    selective (bool), rank (int, 1 = largest |mean| among units; NaN means last).
  """
  u_count, s = deltas.shape[:2]
  rng = np.random.default_rng(seed)
  out = {k: [] for k in ("mean", "ci_low", "ci_high", "p_null")}
  for u in range(u_count):
    mean, lo, hi = bootstrap_ci(deltas[u], rng=rng, n_boot=n_boot, level=level)
    out["mean"].append(mean)
    out["ci_low"].append(lo)
    out["ci_high"].append(hi)
    out["p_null"].append(null_pvalue(mean, null_deltas[u], s, rng=rng, n_boot=n_boot))
  res = {k: np.stack(v) for k, v in out.items()}
  res["n"] = np.sum(~np.isnan(deltas), axis=1)
  with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
    warnings.simplefilter("ignore", RuntimeWarning)
    res["null_rms"] = np.sqrt(np.nanmean(null_deltas ** 2, axis=1))
    res["effect"] = np.where(res["null_rms"] > 0, res["mean"] / res["null_rms"],
                             np.where(res["mean"] == 0, 0.0, np.inf * np.sign(res["mean"])))
    excludes_zero = (res["ci_low"] > 0) | (res["ci_high"] < 0)
    res["selective"] = (res["p_null"] < alpha) & excludes_zero
  res["rank"] = rank_units(res["mean"])
  return res


def rank_units(score: np.ndarray) -> np.ndarray:
  """[U, ...] scores -> [U, ...] int ranks of |score| among units (1 = largest; NaN last)."""
  key = np.where(np.isnan(score), -np.inf, np.abs(score))
  order = np.argsort(-key, axis=0, kind="stable")
  rank = np.empty_like(order)
  np.put_along_axis(rank, order, np.arange(1, key.shape[0] + 1).reshape(-1, *[1] * (key.ndim - 1))
                    * np.ones_like(order), 0)
  return rank


def shared_null_statistics(deltas: np.ndarray, lengths: np.ndarray, null_deltas: np.ndarray,
                           null_lengths: np.ndarray, *, seed: int, n_boot: int = 1000,
                           level: float = 0.95, alpha: float = 0.05, rank_by: str = "mean",
                           average: str = "median", per_length: bool = False,
                           q_level: float | None = 0.1, min_effect: float = 0.5,
                           intervals: bool = True, per_start_scale: bool = False) -> dict[str, np.ndarray]:
  """Statistics of every (unit, concept) pair against random directions shared by the samples.

  A unit's sweep moves every start sample along the same direction in w (the link is
  linear), so its S changes share one direction; the null is therefore R random
  directions, each applied to all S start samples (their lengths drawn from the units'),
  and the statistic compared is the average change over the samples (or, with
  `per_length`, the average change per unit of sweep length). Under the null hypothesis
  "this unit's sweep is one more random-direction sweep", the unit's statistic and the R
  null statistics are exchangeable, so the permutation p-value
  p = (#{|null| > |unit|} + V (1 + #{|null| = |unit|})) / (1 + R), V ~ U(0, 1) breaking
  ties, is uniform: P(p <= alpha) = alpha whatever the metrics' distributions.

  Args:
    deltas: [U, S, P, M] changes over each unit's sweep.
    lengths: [U] each unit's sweep length |w_last - w_first|.
    null_deltas: [R, S, P, M] changes along R random directions from the same S starts.
    null_lengths: [R] their lengths.
    seed: seeds the bootstrap interval.
    n_boot, level, alpha: bootstrap resamples, interval coverage, significance level.
    rank_by: 'mean' (|average change|: the reference's quantity) or 'effect' (|average
      change| / its null RMS).
    average: 'median' (robust to the odd failed measurement, e.g. an orientation
      flipping on a near-round part), 'hl' (Hodges-Lehmann: the median of the pairwise
      averages, as robust to a few failures and closer to the mean's efficiency; on the
      demo world it ranks units nearer the truth than the median: README) or 'mean' (the
      reference's).
    per_length: compare changes per unit of sweep length (the unit's direction, not its
      length, must stand out) instead of the changes themselves.
    min_effect: the second call, 'changes': the unit's sweep changes the concept by more
      than min_effect x null_rms (a smallest effect of interest on the scale of the
      random directions' changes), a one-sided t-test across the start samples
      (calls.min_effect_pvalues: H0 |mean change| <= min_effect x null_rms), BH over the
      same family.
    intervals: False skips the bootstrap (ci_low, ci_high NaN), for checks that only
      read the calls and ranks.
    per_start_scale: every change first divided by the null's RMS change of the same
      concept at the same start sample (`start_scaled`); mean, null_rms and the
      intervals are then in those units.
  Returns:
    dict of [U, P, M] arrays: mean (the average change, median or mean), ci_low,
    ci_high, n, null_rms (null RMS of the average change, at the unit's length with
    `per_length`), effect (mean / null_rms), p_null, q_null, selective (bool: beyond
    random directions), rank (int), p_change, q_change, changes (bool: the change
    exceeds the smallest effect of interest).
  """
  if rank_by not in ("mean", "effect"):
    raise ValueError(f"rank_by must be 'mean' or 'effect', got {rank_by!r}")
  if average not in AVERAGES:
    raise ValueError(f"average must be one of {', '.join(AVERAGES)}, got {average!r}")
  if per_start_scale:
    deltas, null_deltas = start_scaled(deltas, null_deltas)
  rng = np.random.default_rng(seed)
  out = {k: [] for k in ("mean", "ci_low", "ci_high")}
  if intervals:
    for u in range(deltas.shape[0]):
      mean, lo, hi = bootstrap_ci(deltas[u], rng=rng, n_boot=n_boot, level=level, average=average)
      for k, v in zip(("mean", "ci_low", "ci_high"), (mean, lo, hi)):
        out[k].append(v)
    res = {k: np.stack(v) for k, v in out.items()}  # [U, P, M]
  else:
    mean = _average(deltas, average, 1)
    res = {"mean": mean, "ci_low": np.full(mean.shape, np.nan), "ci_high": np.full(mean.shape, np.nan)}
  res["n"] = np.sum(~np.isnan(deltas), axis=1)
  unit_scale = lengths[:, None, None] if per_length else np.ones((len(lengths), 1, 1))
  null_scale = null_lengths[:, None, None] if per_length else np.ones((len(null_lengths), 1, 1))
  with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
    warnings.simplefilter("ignore", RuntimeWarning)
    stat = res["mean"] / unit_scale  # [U, P, M]
    null = _average(null_deltas, average, 1) / null_scale  # [R, P, M]
    res["p_null"] = _pvalues(stat, null, rng)
    rms = np.sqrt(np.nanmean(null ** 2, axis=0))  # [P, M]
    res["null_rms"] = rms[None] * unit_scale
    res["effect"] = np.where(res["null_rms"] > 0, res["mean"] / res["null_rms"], np.nan)
  res["q_null"] = calls.bh_qvalues(res["p_null"])  # one family: every (unit, concept)
  res["selective"] = _called(res, alpha, q_level)
  res["rank"] = rank_units(res[rank_by])
  per_sample = deltas / unit_scale[:, None]  # [U, S, P, M] on the statistic's scale
  p = calls.min_effect_pvalues(np.moveaxis(per_sample, 1, 0), min_effect * res["null_rms"] / unit_scale)
  res["p_change"] = p
  res["q_change"] = calls.bh_qvalues(p)  # one family: every (unit, concept)
  with np.errstate(invalid="ignore"):
    res["changes"] = (res["q_change"] <= q_level) if q_level is not None else (p <= alpha)
  return res


def _pvalues(stat: np.ndarray, null: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Two-sided permutation p of stat [K, P, M] against null [R, P, M] (|.| compared; ties
  broken at random; a GPD tail where few null draws reach |stat|: analysis.calls)."""
  k = stat.shape[0]
  p = calls.tail_pvalues(np.abs(stat).reshape(k, -1), np.abs(null).reshape(null.shape[0], -1), rng=rng)
  return p.reshape(stat.shape)


def _called(res: Mapping[str, np.ndarray], alpha: float, q_level: float | None) -> np.ndarray:
  """'selective': q <= q_level (BH over the family), or p <= alpha when q_level is None."""
  with np.errstate(invalid="ignore"):
    if q_level is None:
      return np.asarray(res["p_null"] <= alpha)
    return np.asarray(res["q_null"] <= q_level)


def _null_stat(null_deltas: np.ndarray, null_lengths: np.ndarray, average: str,
               per_length: bool) -> np.ndarray:
  """[R, P, M] the statistic of each null direction (its average change over the samples)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    scale = null_lengths[:, None, None] if per_length else 1.0
    return _average(null_deltas, average, 1) / scale


def start_scaled(deltas: np.ndarray, null_deltas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Changes in units of the null's RMS change of the same concept at the same start sample.

  The start samples are different classes, and a concept moves by different amounts per
  unit of its factor in each (a thin trunk's contrast, a small part's area, a saturated
  colour's brightness); the random directions' RMS change at a start sample measures that
  scale. Divided by it, every start sample weighs the same in a unit's average, as every
  start sample weighs the same in a factor's true mean change. Both arrays get the same
  divisor, so a unit and a null direction stay exchangeable under the null.

  Args:
    deltas: [U, S, P, M]; null_deltas: [R, S, P, M].
  Returns:
    both divided by the null's RMS over R [S, P, M] (NaN where it is 0 or undefined).
  """
  with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
    warnings.simplefilter("ignore", RuntimeWarning)
    rms = np.sqrt(np.nanmean(null_deltas ** 2, axis=0))
    rms = np.where(rms > 0, rms, np.nan)[None]
  return deltas / rms, null_deltas / rms


def null_calls(null_deltas: np.ndarray, null_lengths: np.ndarray, *, seed: int, alpha: float = 0.05,
               q_level: float | None = 0.1, average: str = "median",
               per_length: bool = False, per_start_scale: bool = False) -> dict[str, np.ndarray]:
  """The calls made on the null directions themselves, as if they were units.

  Each null direction is tested against the other R - 1 (leave one out) with the units'
  p-value, and the R x concept family is corrected as the units' is.

  Args:
    null_deltas: [R, S, P, M], null_lengths: [R]; the rest as in `shared_null_statistics`.
  Returns:
    {'p_null', 'q_null': [R, P, M], 'selective': [R, P, M] bool (the units' rule),
     'fpr': share of defined (direction, concept) pairs with p <= alpha (near alpha for a
     calibrated p), 'fdr_any': 1.0 if any direction is called selective (every call on
     the null is false, so this is the family's false-discovery proportion > 0)}.
  """
  if per_start_scale:
    _, null_deltas = start_scaled(null_deltas[:0], null_deltas)
  stat = _null_stat(null_deltas, null_lengths, average, per_length)
  r = stat.shape[0]
  rng = np.random.default_rng(seed)
  p = calls.loo_pvalues(np.abs(stat).reshape(r, -1), rng=rng).reshape(stat.shape)
  res = {"p_null": p, "q_null": calls.bh_qvalues(p)}
  res["selective"] = _called(res, alpha, q_level)
  ok = np.isfinite(p)
  res["fpr"] = float(np.sum((p <= alpha) & ok) / max(ok.sum(), 1))
  res["fdr_any"] = float(np.any(res["selective"]))
  return res


def null_false_positive_rate(null_deltas: np.ndarray, null_lengths: np.ndarray, *, seed: int,
                             n_boot: int = 1000, level: float = 0.95, alpha: float = 0.05,
                             average: str = "median", per_length: bool = False) -> float:
  """How often p <= alpha on a random-direction sweep: each null direction in turn is
  tested as a unit against the other R - 1 (leave one out), over all concepts
  (`null_calls`' 'fpr'; n_boot and level are unused, kept for the callers).

  Returns:
    the fraction of (direction, concept) pairs with a defined change and p <= alpha;
    near alpha for a calibrated p-value.
  """
  del n_boot, level
  return null_calls(null_deltas, null_lengths, seed=seed, alpha=alpha, average=average,
                    per_length=per_length)["fpr"]


def table_rows(stats: Mapping[str, np.ndarray], units: Sequence[int],
               part_names: Sequence[str]) -> list[dict]:
  """Tidy rows (one per unit x part x metric) from `unit_statistics` output (UNIT_TABLE_COLUMNS;
  a writer keeps the columns it names)."""
  rows = []
  for i, u in enumerate(units):
    for p, part in enumerate(part_names):
      for k, metric in enumerate(CONCEPT_METRICS):
        row = {"unit": int(u), "part": part, "metric": metric}
        for c in UNIT_TABLE_COLUMNS[3:]:
          if c not in stats:  # unit_statistics has no q_null, the boundary's pairs no 'changes'
            row[c] = False if c in ("selective", "changes") else np.nan
            continue
          v = stats[c][i, p, k]
          row[c] = bool(v) if c in ("selective", "changes") else int(v) if c in ("n", "rank") else float(v)
        rows.append(row)
  return rows


def top_units(rows: Sequence[Mapping], k: int, selective_only: bool = True) -> dict[tuple, list]:
  """{(part, metric): up to k rows by rank} (only selective units unless told otherwise)."""
  out: dict[tuple, list] = {}
  for r in sorted(rows, key=lambda r: r["rank"]):
    if selective_only and not r["selective"]:
      continue
    lst = out.setdefault((r["part"], r["metric"]), [])
    if len(lst) < k:
      lst.append(r)
  return out


def write_csv(path: str, rows: Sequence[Mapping], columns: Sequence[str]) -> None:
  """Writes rows atomically as CSV with the given columns."""
  from lis_jax import io
  with io.atomic_file(path, "w") as f:
    wr = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
    wr.writeheader()
    for r in rows:
      wr.writerow({c: (repr(v) if isinstance(v, float) else v) for c, v in r.items()})
