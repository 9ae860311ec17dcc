"""The decision boundary along a counterfactual path: where it is crossed, what changes.

A counterfactual search (lis_jax.counterfactuals) ends with a shift s of the origin
image's representation r; its path is
  w(t) = link(relu(r - t s)),  t in [0, 1]   (w(0) ~ w_before, w(1) = w_after).
The classifier's prediction on the image generated from w(t) starts at the origin
class; `crossings` finds, per search,
  t_leave  the first t where the prediction is no longer the origin class
  t_reach  the first t where it is the target class
("first": the first bracket on a grid of `n_grid` points, then `n_iter` bisection
steps inside it, so t is known to (1 / (n_grid - 1)) / 2^n_iter; each bisection step
classifies the midpoints of both crossings of every search in one batch).

What changes across the boundary: a concept's (part x metric) change from w_before to
the image where the target is reached (`crossing_t`: t_reach, else t_leave, else 1),
normalised as quantify's sweep changes are; per (origin -> target) pair, a mean with a
bootstrap interval over the pair's searches and a test against null paths from the same
starts (`pair_statistics`): R null paths per search that differ from the real one only
in their direction in r-space (analysis.nulls.boundary_ends; `null_ends`, random
directions in w of the same w-length, is the earlier null), each search's change ranked
among its own null paths (an exact permutation p), the pair's searches combined by
Fisher's method, and Benjamini-Hochberg over the (pair x concept) family. `null_path_calls` makes the same
calls on the null paths themselves: the false-positive rate before correction (near
alpha when calibrated) and the chance of any call after it (<= q when BH holds).
"""
from __future__ import annotations

import warnings
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lis_jax.analysis import calls, rsa


def path_w(link, r: jax.Array, shift: jax.Array, t: jax.Array) -> jax.Array:
  """w on the counterfactual path: r, shift [B, D], t [B] -> link(relu(r - t shift)) [B, w_dim]."""
  return link(jax.nn.relu(r - t[:, None] * shift))


def bisect(cond: Callable[[jax.Array], jax.Array], lo: jax.Array, hi: jax.Array, n_iter: int
           ) -> tuple[jax.Array, jax.Array]:
  """Bisection of a per-row condition that is False at lo and True at hi.

  Args:
    cond: t [N] -> bool [N] (row-wise; called once per step on all rows).
    lo, hi: [N] bracket ends.
    n_iter: halvings.
  Returns:
    (lo, hi) [N], hi - lo = (hi0 - lo0) / 2^n_iter, still False at lo and True at hi.
  """
  def step(_, c):
    lo, hi = c
    mid = (lo + hi) / 2
    ok = cond(mid)
    return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)
  return jax.lax.fori_loop(0, n_iter, step, (lo, hi))


def _first_bracket(hit: jax.Array, grid: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """hit [B, K] bool on grid [K] -> (lo, hi, found) [B]: grid points around the first hit.

  A hit at the first grid point gives lo = hi = grid[0] (nothing to bisect).
  """
  found = hit.any(1)
  k = jnp.argmax(hit, axis=1)
  return grid[jnp.maximum(k - 1, 0)], grid[k], found


def crossings(predict: Callable[[jax.Array, jax.Array], jax.Array], origin: jax.Array,
              target: jax.Array, *, n_grid: int, n_iter: int) -> dict[str, jax.Array]:
  """Where the prediction leaves the origin class and where it reaches the target.

  Args:
    predict: (t [N], rows [N]) -> predicted class [N] of search `rows[i]` at t[i].
    origin, target: [B] class ids.
    n_grid: grid points on [0, 1] (>= 2) searched for the first bracket.
    n_iter: bisection steps inside it.
  Returns:
    t_leave, t_reach [B] (NaN where never found: the crossing's upper bracket end, the
    first t known to satisfy it); leave_found, reach_found [B] bool; width [B] the
    bracket width the crossings are known to; pred_grid [B, K] int predictions on the grid.
  """
  b = origin.shape[0]
  rows = jnp.arange(b)
  grid = jnp.linspace(0.0, 1.0, n_grid)
  pred = jax.lax.map(lambda t: predict(jnp.full((b,), t), rows), grid).T  # [B, K]
  lo_l, hi_l, found_l = _first_bracket(pred != origin[:, None], grid)
  lo_r, hi_r, found_r = _first_bracket(pred == target[:, None], grid)
  both = jnp.concatenate([rows, rows])
  is_leave = jnp.arange(2 * b) < b
  orig2, targ2 = jnp.concatenate([origin, origin]), jnp.concatenate([target, target])

  def cond(t):
    p = predict(t, both)
    return jnp.where(is_leave, p != orig2, p == targ2)

  lo, hi = bisect(cond, jnp.concatenate([lo_l, lo_r]), jnp.concatenate([hi_l, hi_r]), n_iter)
  t_leave = jnp.where(found_l, hi[:b], jnp.nan)
  t_reach = jnp.where(found_r, hi[b:], jnp.nan)
  return {"t_leave": t_leave, "t_reach": t_reach, "leave_found": found_l, "reach_found": found_r,
          "width": (hi - lo)[:b], "pred_grid": pred}


def crossing_t(t_leave: np.ndarray, t_reach: np.ndarray) -> np.ndarray:
  """[B] the t whose image is compared with w_before: t_reach, else t_leave, else 1."""
  return np.where(np.isfinite(t_reach), t_reach, np.where(np.isfinite(t_leave), t_leave, 1.0))


def path_points(t_leave: np.ndarray, t_reach: np.ndarray, n_points: int) -> np.ndarray:
  """[B, n_points + 2] the t measured per search: a grid on [0, 1] and both crossings.

  Columns: n_points grid values (0 and 1 included), then t_leave, then t_reach (NaN
  crossings replaced by crossing_t so every column can be rendered).
  """
  grid = np.broadcast_to(np.linspace(0.0, 1.0, n_points), (t_leave.size, n_points))
  ct = crossing_t(t_leave, t_reach)
  return np.concatenate([grid, np.where(np.isfinite(t_leave), t_leave, ct)[:, None],
                         np.where(np.isfinite(t_reach), t_reach, ct)[:, None]], 1)


def first_copies(t: np.ndarray) -> np.ndarray:
  """[B, T] -> [B, T] index of the first column of each row holding the same t.

  Points equal to an earlier one on the same path (t_leave == t_reach where the
  prediction goes straight from origin to target, crossings that fell back to t = 1)
  are measured once and copied.
  """
  same = t[:, :, None] == t[:, None, :]  # [B, T, T]: column j equals column k
  return np.argmax(same, axis=2)


def null_ends(w_start: np.ndarray, w_end: np.ndarray, key: jax.Array, search_ids: np.ndarray,
              draws: int) -> np.ndarray:
  """Random paths of the same length from the same starts.

  Args:
    w_start, w_end: [B, w_dim]; search_ids [B] (with key, they seed each direction, so a
      resumed or re-batched run draws the same ones); draws: R per search.
  Returns:
    [B, R, w_dim] = w_start + |w_end - w_start| d / |d|, d ~ N(0, I).
  """
  def one(i):
    d = jax.random.normal(jax.random.fold_in(key, i), (draws, w_start.shape[-1]))
    return d / jnp.linalg.norm(d, axis=-1, keepdims=True)
  d = np.asarray(jax.vmap(one)(jnp.asarray(search_ids)))
  length = np.linalg.norm(w_end - w_start, axis=-1)[:, None, None]
  return w_start[:, None] + length * d


def group_by_pair(origin: np.ndarray, target: np.ndarray) -> tuple[list[tuple[int, int]], np.ndarray]:
  """(pairs in first-seen order, [n_pairs, S] search indices; -1 pads unequal groups)."""
  pairs = list(dict.fromkeys(zip(origin.tolist(), target.tolist())))
  groups = [np.flatnonzero((origin == o) & (target == t)) for o, t in pairs]
  s = max(g.size for g in groups)
  idx = np.full((len(pairs), s), -1)
  for i, g in enumerate(groups):
    idx[i, :g.size] = g
  return pairs, idx


def take_rows(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
  """x [B, ...] gathered at idx [...] (-1 -> NaN rows), e.g. a pair's searches (group_by_pair)."""
  return _take(x, idx)


def _take(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
  """x [B, ...] gathered at idx [...] (-1 -> NaN rows)."""
  out = x[np.maximum(idx, 0)].astype(np.float64)
  out[idx < 0] = np.nan
  return out


def search_pvalues(x: np.ndarray, null: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Each search's two-sided p against its own null paths: x [B, F], null [B, R, F] ->
  [B, F] p = (#{|null| > |x|} + V (1 + #{|null| = |x|})) / (1 + R'), V ~ U(0, 1), R' the
  defined draws: exactly uniform when x is one more null path (whatever the search's own
  distribution of changes), NaN where x is undefined or no draw is."""
  a = np.abs(np.asarray(x, np.float64))[:, None]  # [B, 1, F]
  b = np.abs(np.asarray(null, np.float64))
  ok = np.isfinite(b)
  with np.errstate(invalid="ignore"):
    above = np.sum(ok & (b > a), axis=1)
    ties = np.sum(ok & (b == a), axis=1)
  n = ok.sum(1)
  p = (above + rng.uniform(size=above.shape) * (ties + 1.0)) / (n + 1.0)
  return np.where(np.isfinite(a[:, 0]) & (n > 0), p, np.nan)


def fisher_combine(p: np.ndarray, idx: np.ndarray) -> np.ndarray:
  """Fisher's combination of the searches' p [B, F] per pair (idx [n_pairs, S], -1 =
  padding): chi2.sf(-2 sum log p, 2 k) over a pair's k defined p -> [n_pairs, F]."""
  from scipy import stats as sps
  out = np.full((idx.shape[0], p.shape[1]), np.nan)
  for i, row in enumerate(idx):
    pp = p[row[row >= 0]]  # [k, F]
    k = np.isfinite(pp).sum(0)
    stat = -2.0 * np.nansum(np.log(np.maximum(pp, 1e-300)), axis=0)
    out[i] = np.where(k > 0, sps.chi2.sf(stat, 2 * np.maximum(k, 1)), np.nan)
  return out


def pair_statistics(deltas: np.ndarray, null_deltas: np.ndarray, origin: np.ndarray,
                    target: np.ndarray, *, seed: int, n_boot: int = 1000, level: float = 0.95,
                    alpha: float = 0.05, q_level: float | None = 0.1
                    ) -> tuple[list[tuple[int, int]], dict[str, np.ndarray]]:
  """Per (origin, target) pair and concept: mean change, bootstrap interval, null p and q.

  The test: each search's |change| is ranked among the |changes| along its own R null
  paths (paths that differ from the real one only in their direction: analysis.nulls),
  a randomised permutation p that is exactly uniform under the null whatever that
  search's distribution (`search_pvalues`); a pair's p combines its searches' by Fisher's
  method (the searches' null paths are drawn independently), and the (pair x concept)
  family is corrected by Benjamini-Hochberg. `null_path_calls` makes the same calls on
  the null paths themselves.

  Args:
    deltas: [B, P, M] change of each concept per search; null_deltas: [B, R, P, M].
    origin, target: [B].
    q_level: 'selective' is q <= q_level (None: p <= alpha).
  Returns:
    (pairs, stats): [n_pairs, P, M] arrays mean (of the raw changes), ci_low, ci_high, n,
    null_rms (RMS of the pair's mean over its own searches' null paths), effect
    (mean / null_rms), p_null, q_null, selective, rank (of |mean| among pairs).
  """
  from lis_jax.quantify import selectivity
  pairs, idx = group_by_pair(np.asarray(origin), np.asarray(target))
  b, r = null_deltas.shape[:2]
  shape = deltas.shape[1:]
  rng = np.random.default_rng(seed)
  d = _take(deltas, idx)  # [n_pairs, S, P, M]
  out = {k: np.empty((len(pairs),) + shape) for k in ("mean", "ci_low", "ci_high", "null_rms")}
  for i in range(len(pairs)):
    out["mean"][i], out["ci_low"][i], out["ci_high"][i] = selectivity.bootstrap_ci(
        d[i], rng=rng, n_boot=n_boot, level=level)
    rows = idx[i][idx[i] >= 0]
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)
      ms = np.nanmean(null_deltas[rows].reshape(rows.size, r, -1) ** 2, axis=(0, 1)) / rows.size
    out["null_rms"][i] = np.sqrt(ms).reshape(shape)
  p_s = search_pvalues(deltas.reshape(b, -1), null_deltas.reshape(b, r, -1), rng)
  out["p_null"] = fisher_combine(p_s, idx).reshape((len(pairs),) + shape)
  out["n"] = np.sum(np.isfinite(d), axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    out["effect"] = np.where(out["null_rms"] > 0, out["mean"] / out["null_rms"], np.nan)
  out["q_null"] = calls.bh_qvalues(out["p_null"])  # one family: every (pair, concept)
  with np.errstate(invalid="ignore"):
    out["selective"] = (out["q_null"] <= q_level) if q_level is not None else (out["p_null"] <= alpha)
  out["rank"] = selectivity.rank_units(out["mean"])
  return pairs, out


def null_path_calls(null_deltas: np.ndarray, origin: np.ndarray, target: np.ndarray, *, seed: int,
                    alpha: float = 0.05, q_level: float = 0.1) -> dict:
  """The pair calls made on null paths: each draw j in turn plays the pairs' paths (its
  change ranked among the other R - 1 null paths of its search), combined and corrected
  exactly as `pair_statistics` does for the real paths.

  Args:
    null_deltas: [B, R, P, M] (R >= 2); origin, target: [B].
  Returns:
    {'fpr': share of (draw, pair, concept) with p <= alpha (uncorrected; alpha in
     expectation), 'fpr_q': share with q <= q_level (BH per draw over pair x concept),
     'fwer': share of draws with any call (every call on a null path is false, so this
     is the family's chance of a false discovery; BH keeps it <= q_level for independent
     or positively dependent tests), 'draws': R}.
  """
  _, idx = group_by_pair(np.asarray(origin), np.asarray(target))
  b, r = null_deltas.shape[:2]
  flat = null_deltas.reshape(b, r, -1)
  rng = np.random.default_rng(seed)
  ps = np.stack([fisher_combine(search_pvalues(flat[:, j], np.delete(flat, j, axis=1), rng), idx)
                 for j in range(r)])  # [R, n_pairs, F]
  ok = np.isfinite(ps)
  q = np.stack([calls.bh_qvalues(p) for p in ps])
  with np.errstate(invalid="ignore"):
    called = q <= q_level
  return {"fpr": float(np.sum((ps <= alpha) & ok) / max(ok.sum(), 1)),
          "fpr_q": float(np.sum(called) / max(ok.sum(), 1)),
          "fwer": float(np.mean(called.reshape(r, -1).any(1))), "draws": int(r)}


def top_concepts(stats: Mapping[str, np.ndarray], parts: Sequence[str], metrics: Sequence[str],
                 k: int) -> list[list[dict]]:
  """Per pair, the k concepts with the largest |effect| (selective first): dicts of part, metric, stats."""
  eff = np.asarray(stats["effect"], np.float64)
  out = []
  for i in range(eff.shape[0]):
    flat = np.where(np.isfinite(eff[i]), np.abs(eff[i]), -1.0).reshape(-1)
    sel = np.asarray(stats["selective"][i]).reshape(-1)
    order = np.lexsort((-flat, ~sel))[:k]
    lst = []
    for c in order:
      p, m = divmod(int(c), len(metrics))
      lst.append({"part": parts[p], "metric": metrics[m], **{
          key: (bool if key == "selective" else float)(np.asarray(stats[key][i]).reshape(-1)[c])
          for key in ("mean", "ci_low", "ci_high", "null_rms", "effect", "p_null", "q_null", "selective")
          if key in stats}})
    out.append(lst)
  return out


def factor_changes(factors_start: Mapping[str, np.ndarray], factors_end: Mapping[str, np.ndarray],
                   ranges: Mapping[str, tuple[float, float]], circular: Sequence[str]) -> dict[str, np.ndarray]:
  """True factor change end - start as a fraction of each factor's range (hues wrap)."""
  out = {}
  for n, a in factors_start.items():
    lo, hi = ranges.get(n, (0.0, 1.0))
    d = np.asarray(factors_end[n], np.float64) - np.asarray(a, np.float64)
    if n in circular:
      d = (d + (hi - lo) / 2) % (hi - lo) - (hi - lo) / 2
    out[n] = d / (hi - lo)
  return out


MIN_FIDELITY = 0.5 ** 0.5  # validate: a factor is compared when its concept follows it on the null paths (Pearson r >= this)
# r >= sqrt(1/2), i.e. R^2 >= 1/2: at least half of the concept's variance along random paths
# is its factor's, so the concept measures its factor more than anything else. Measured on
# the demo's seeds 0-2 (benchmarks/calibration.py, 'boundary_fidelity', issue 19's concepts;
# bootstrap 95% intervals over the 112 searches): the rest 0.91-0.99, body texture vs
# stripe_contrast 0.55-0.61 (0.49-0.67), object area (the parts' spread) vs scale 0.44-0.50
# (0.39-0.54), object angle vs rotation -0.10 to -0.03: no factor within 0.2 of the bar.
# The earlier bar, r >= 0.5, sat inside scale's interval: on the demo's own null paths scale
# was 0.491 on an AMD EPYC and above 0.5 on a Xeon, and calibration's seed 2 was 0.48 on
# the Xeon and 0.5012 on the AMD, so which factors were validated depended on the machine
# (README "Calls and their nulls").


def concept_fidelity(null_deltas: np.ndarray, null_truth: Mapping[str, np.ndarray], parts: Sequence[str],
                     metrics: Sequence[str], factor_concepts: Mapping[str, tuple[str, str]]) -> dict[str, float]:
  """How well each factor's concept measures it on random paths: {factor: Pearson r}.

  Args:
    null_deltas: [B, R, P, M] measured concept changes along the null paths.
    null_truth: {factor: [B, R]} the same paths' true factor changes (fraction of range).
  Returns:
    {factor: r over the defined (search, draw) entries} (NaN with fewer than 3).
  """
  out = {}
  for f, (part, metric) in factor_concepts.items():
    if f not in null_truth or part not in parts or metric not in metrics:
      continue
    x = np.asarray(null_deltas[:, :, parts.index(part), metrics.index(metric)], np.float64).ravel()
    y = np.asarray(null_truth[f], np.float64).ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    out[f] = float(np.corrcoef(x[ok], y[ok])[0, 1]) if ok.sum() >= 3 and x[ok].std() > 0 and y[ok].std() > 0 \
        else float("nan")
  return out


def validate(stats: Mapping[str, np.ndarray], true_change: Mapping[str, np.ndarray], origin: np.ndarray,
             target: np.ndarray, parts: Sequence[str], metrics: Sequence[str],
             factor_concepts: Mapping[str, tuple[str, str]], null_truth: Mapping[str, np.ndarray] | None = None,
             null_deltas: np.ndarray | None = None, min_fidelity: float = MIN_FIDELITY) -> dict:
  """Measured concept changes against the world's true factor changes, per pair.

  Per pair: the Spearman correlation, over the factors of `factor_concepts` (factor ->
  the (part, metric) concept that shows it), of |effect| of the concept (its mean change
  / the null paths' RMS) with the factor's |mean true change|; and whether the concept
  with the largest |effect| is the one of the factor that truly changes most.

  With the null paths' true changes (`null_truth`), the truth is put on the effect's scale:
  |mean true change| / the RMS of the same mean over the pair's null paths (both sides
  then say how far beyond random paths the pair moves; raw fractions of a factor's range
  are not comparable across factors: random paths move some factors twice as far as
  others). With `null_deltas` too, only the factors whose concept follows them on the
  null paths (`concept_fidelity` >= min_fidelity) are compared: a concept that does not
  measure its factor there (a whole object's orientation across a class change) has no
  rank to validate; the left-out factors and every factor's fidelity are returned.

  Args:
    stats: pair_statistics output ([n_pairs, P, M]); true_change: {factor: [B]} per search.
    origin, target: [B] (the same searches, to group them as pair_statistics does).
    null_truth: {factor: [B, R]} true changes along each search's null paths (optional).
    null_deltas: [B, R, P, M] the null paths' measured changes (optional, with null_truth).
  Returns:
    per_pair: [{origin, target, spearman, top_measured, top_true, right}], mean_spearman,
    share_right_top, chance (1 / number of factors compared), factors, left_out, fidelity.
  """
  pairs, idx = group_by_pair(np.asarray(origin), np.asarray(target))
  factors = [f for f in factor_concepts if f in true_change]
  fidelity = {}
  if null_truth is not None and null_deltas is not None:
    fidelity = concept_fidelity(null_deltas, null_truth, parts, metrics, factor_concepts)
  left_out = [f for f in factors if f in fidelity and not fidelity[f] >= min_fidelity]
  factors = [f for f in factors if f not in left_out]
  eff = np.asarray(stats["effect"], np.float64)
  per_pair = []
  for i, (o, t) in enumerate(pairs):
    measured = np.array([abs(eff[i, parts.index(factor_concepts[f][0]), metrics.index(factor_concepts[f][1])])
                         for f in factors])
    truth = np.array([abs(np.nanmean(_take(np.asarray(true_change[f]), idx[i]))) for f in factors])
    if null_truth is not None:
      rows = idx[i][idx[i] >= 0]
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rms = np.array([np.sqrt(np.nanmean(np.asarray(null_truth[f], np.float64)[rows] ** 2) / rows.size)
                        for f in factors])
      truth = np.where(rms > 0, truth / np.where(rms > 0, rms, 1.0), np.nan)
    ok = np.isfinite(measured) & np.isfinite(truth)
    rho = rsa.spearman(measured[ok], truth[ok]) if ok.sum() >= 3 else float("nan")
    top_m = factors[int(np.argmax(np.where(ok, measured, -1.0)))]
    top_t = factors[int(np.argmax(np.where(ok, truth, -1.0)))]
    per_pair.append({"origin": int(o), "target": int(t), "spearman": rho, "top_measured": top_m,
                     "top_true": top_t, "right": top_m == top_t})
  rhos = np.array([p["spearman"] for p in per_pair])
  return {"per_pair": per_pair, "factors": factors, "left_out": left_out, "fidelity": fidelity,
          "min_fidelity": min_fidelity, "truth_scale": "null paths" if null_truth is not None else "range",
          "mean_spearman": float(np.nanmean(rhos)) if np.isfinite(rhos).any() else float("nan"),
          "share_right_top": float(np.mean([p["right"] for p in per_pair])),
          "chance": 1.0 / len(factors) if factors else float("nan")}


def shifted_unit_relation(top_units: np.ndarray, origin: np.ndarray, target: np.ndarray,
                          pair_top: Sequence[Sequence[dict]], unit_selective: Mapping[int, set]
                          ) -> dict:
  """Are the counterfactual's most shifted units selective for the concepts that change?

  Args:
    top_units: [B, K] the units with the largest |shift| per search.
    origin, target: [B]; pair_top: per pair (group_by_pair order), its top changing
      concepts (dicts with part, metric); unit_selective: {unit: {(part, metric), ...}}
      the concepts each quantified unit is selective for (quantify's table).
  Returns:
    per_pair: [{origin, target, units, selective_share}] (share of the pair's shifted,
    quantified units that are selective for one of its top concepts); mean_share;
    baseline (the same share over all quantified units, averaged over pairs).
  """
  pairs, idx = group_by_pair(np.asarray(origin), np.asarray(target))
  known = sorted(unit_selective)
  rows, base = [], []
  for i, (o, t) in enumerate(pairs):
    concepts = {(c["part"], c["metric"]) for c in pair_top[i]}
    units = sorted({int(u) for s in idx[i] if s >= 0 for u in top_units[s]} & set(known))
    hit = [bool(unit_selective[u] & concepts) for u in units]
    rows.append({"origin": int(o), "target": int(t), "units": units,
                 "selective_share": float(np.mean(hit)) if hit else float("nan")})
    base.append(np.mean([bool(unit_selective[u] & concepts) for u in known]) if known else np.nan)
  shares = np.array([r["selective_share"] for r in rows])
  return {"per_pair": rows,
          "mean_share": float(np.nanmean(shares)) if np.isfinite(shares).any() else float("nan"),
          "baseline": float(np.nanmean(base)) if base else float("nan")}
