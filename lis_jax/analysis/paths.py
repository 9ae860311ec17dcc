"""Five analyses of the counterfactual paths (the reference's `src/counterfactual_analysis/`).

A search (lis_jax.stages.counterfactual) ends with a shift s of an origin-class sample's
representation r; its path is r(t) = r - t s, seen by the generator as
w(t) = link(relu(r(t))) and by the classifier as the image G(w(t)).

  (a) probabilities   `readout`: the classifier's softmax p(target), p(origin) on the
                      image of every point of a t grid (`t_grid`), and the head's on
                      relu(r(t)) itself (image_sampling_rshift.py: `probas`).
  (b) past the end    the same grid continued past t = 1 in steps of the same size (the
                      reference's `add_steps`): does p(target) keep rising?
  (c) trajectories    `pair_frames`: per class pair a PCA of the paired data of both
                      classes (pc_traj_counterfactual.py fits its PCA on two classes), in r
                      and in w; `readout` projects the path in r, the re-encoded r (the
                      classifier's features of the path's images, the reference's
                      'rcycled') and w on the first two PCs, and measures how far along
                      the line from the origin class's mean to the target's each point is
                      (`progress`: 0 at the origin mean, 1 at the target mean).
  (d) relevant units  `relevant_units` / `unit_counts` / `recurrence`: the units with the
                      largest |r - relu(r - s)| of each search counted across searches
                      (transition_relevant_units.py: the top 10 per search), tested
                      against searches that pick their units at random.
  (e) transfer        `mean_shifts` / `transfer` / `transfer_statistics`: a pair's mean
                      effective shift (shift_opt.py: use_avg_shift_over_samples) applied
                      to new samples of the origin class; success = the classifier calls
                      the regenerated image the target; beside it a null shift (a random
                      direction, the same norm, the same samples).

Jitted work is plain functions of arrays and callables (the stage binds G, clf and link);
the statistics are numpy (scipy for the binomial tails).
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

N_PC = 2  # principal components the trajectories are drawn in


# ----------------------------------------------------------------------------- (a), (b)


def t_grid(n_points: int, n_past: int) -> np.ndarray:
  """[n_points + n_past] t values: n_points on [0, 1] (both ends), then n_past further steps
  of the same size past t = 1 (the reference's `alphas` with `add_steps`)."""
  base = np.linspace(0.0, 1.0, n_points)
  step = 1.0 / (n_points - 1)
  return np.concatenate([base, 1.0 + step * np.arange(1, n_past + 1)]).astype(np.float32)


def _pick(x: jax.Array, idx: jax.Array) -> jax.Array:
  """x [B, C], idx [B] -> x[b, idx[b]] [B]."""
  return jnp.take_along_axis(x, idx[:, None], axis=1)[:, 0]


def project(x: jax.Array, frame: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """Points x [..., B, D] in their search's frame (`pair_frames` rows gathered per search:
  mean [B, D], components [B, N_PC, D], origin_mean [B, D], axis [B, D]) -> (pc [..., B, N_PC],
  progress [..., B]: (x - origin_mean) . axis, 0 at the origin class's mean, 1 at the target's)."""
  pc = jnp.einsum("...bd,bkd->...bk", x - frame["mean"], frame["components"])
  prog = jnp.einsum("...bd,bd->...b", x - frame["origin_mean"], frame["axis"])
  return pc, prog


def readout_at(image_fn: Callable, head: Callable, r: jax.Array, shift: jax.Array, origin: jax.Array,
               target: jax.Array, t: jax.Array, frame_r: Mapping[str, jax.Array],
               frame_w: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """Probabilities and trajectory points of B paths r - t s at one t (jit it; t a traced scalar).

  Args:
    image_fn: r_shifted [B, D] -> (w [B, w_dim], features [B, D], logits [B, C]) of the image
      generated from w = link(relu(r_shifted)) (features: the classifier's re-encoded r).
    head: r [B, D] -> logits [B, C] (the classifier's last layer).
    r, shift: [B, D]; origin, target: [B] class ids; t: scalar.
    frame_r, frame_w: the searches' pair frames in r and in w (see `project`).
  Returns:
    [B] arrays: p_target, p_origin, pred (image), p_target_r, p_origin_r, pred_r (head on
    relu(r - t s)), prog_r, prog_img, prog_w (`project`'s progress of relu(r - t s), of the
    re-encoded r, of w); [B, N_PC]: pc_r, pc_img, pc_w.
  """
  rt = jax.nn.relu(r - t * shift)
  w, feats, logits = image_fn(r - t * shift)
  p = jax.nn.softmax(logits, -1)
  lr = head(rt)
  pr = jax.nn.softmax(lr, -1)
  pc_r, prog_r = project(rt, frame_r)
  pc_i, prog_i = project(feats, frame_r)
  pc_w, prog_w = project(w, frame_w)
  return {"p_target": _pick(p, target), "p_origin": _pick(p, origin), "pred": jnp.argmax(logits, -1),
          "p_target_r": _pick(pr, target), "p_origin_r": _pick(pr, origin), "pred_r": jnp.argmax(lr, -1),
          "pc_r": pc_r, "pc_img": pc_i, "pc_w": pc_w, "prog_r": prog_r, "prog_img": prog_i, "prog_w": prog_w}


def readout(image_fn: Callable, head: Callable, r: jax.Array, shift: jax.Array, origin: jax.Array,
            target: jax.Array, ts: jax.Array, frame_r: Mapping[str, jax.Array],
            frame_w: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """`readout_at` at every t of ts [T] (lax.map: B images at a time) -> its arrays as [B, T(, N_PC)]."""
  out = jax.lax.map(lambda t: readout_at(image_fn, head, r, shift, origin, target, t, frame_r, frame_w), ts)
  return {k: jnp.moveaxis(v, 0, 1) for k, v in out.items()}


def stack_points(points: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """`readout_at` outputs at T values of t -> `readout`'s [B, T(, N_PC)] arrays."""
  return {k: np.stack([np.asarray(p[k]) for p in points], 1) for k in points[0]}


def first_above(p: np.ndarray, ts: np.ndarray, level: float = 0.5) -> np.ndarray:
  """[B] the first t where p [B, T] reaches `level`, linearly interpolated between grid
  points (ts [T] increasing); t itself where the path starts at or above it; NaN if never."""
  p = np.asarray(p, np.float64)
  above = p >= level
  k = np.argmax(above, axis=1)
  found = above.any(1)
  prev = np.maximum(k - 1, 0)
  rows = np.arange(p.shape[0])
  p0, p1 = p[rows, prev], p[rows, k]
  with np.errstate(invalid="ignore", divide="ignore"):
    frac = np.where(p1 > p0, (level - p0) / (p1 - p0), 1.0)
  t = np.where(k == 0, ts[0], ts[prev] + np.clip(frac, 0, 1) * (ts[k] - ts[prev]))
  return np.where(found, t, np.nan)


def probability_summary(p_target: np.ndarray, p_origin: np.ndarray, pred: np.ndarray, target: np.ndarray,
                        ts: np.ndarray) -> dict:
  """(a) and (b) in numbers: p [B, T] on the grid ts [T] (t = 1 on it), pred [B, T], target [B].

  Returns: t; mean_p_target / mean_p_origin [T] (mean over searches); p_target_at_1 /
  p_origin_at_1 / p_target_end (mean at t = 1 and at the grid's end); t50_median (median
  over searches reaching it of the first t with p(target) >= 0.5) and reach50 (share
  reaching it by t = 1); past: share of paths whose p(target) at the end is >= its value at
  t = 1 (keeps rising or holds) and share still predicted the target at the end, of those
  predicted the target at t = 1.
  """
  ts = np.asarray(ts, np.float64)
  one = int(np.argmin(np.abs(ts - 1.0)))
  t50 = first_above(p_target, ts)
  within = np.isfinite(t50) & (t50 <= 1.0 + 1e-6)
  hit1 = pred[:, one] == target
  out = {"t": ts.tolist(), "mean_p_target": np.mean(p_target, 0).tolist(),
         "mean_p_origin": np.mean(p_origin, 0).tolist(),
         "p_target_at_0": float(np.mean(p_target[:, 0])), "p_origin_at_0": float(np.mean(p_origin[:, 0])),
         "p_target_at_1": float(np.mean(p_target[:, one])), "p_origin_at_1": float(np.mean(p_origin[:, one])),
         "reach50": float(np.mean(within)),
         "t50_median": float(np.median(t50[within])) if within.any() else None}
  if ts.size > one + 1:
    out["t_end"] = float(ts[-1])
    out["p_target_end"] = float(np.mean(p_target[:, -1]))
    out["past_holds"] = float(np.mean(p_target[:, -1] >= p_target[:, one] - 1e-6))
    out["past_still_target"] = float(np.mean(pred[hit1, -1] == target[hit1])) if hit1.any() else None
  return out


# ----------------------------------------------------------------------------- (c)


def _top_components(cov: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
  """Covariances [..., D, D] -> (components [..., n, D], explained variance ratio [..., n]):
  eigenvectors of the n largest eigenvalues, each signed so that its largest-|.| coordinate
  is positive."""
  val, vec = np.linalg.eigh(cov)
  val, vec = val[..., ::-1][..., :n], np.swapaxes(vec[..., ::-1][..., :n], -1, -2)
  big = np.take_along_axis(vec, np.argmax(np.abs(vec), -1)[..., None], -1)
  vec = vec * np.where(big < 0, -1.0, 1.0)
  total = np.maximum(np.trace(cov, axis1=-2, axis2=-1)[..., None], 1e-300)   # the sum of the eigenvalues
  return vec, np.clip(val, 0, None) / total


def pca(x: np.ndarray, n: int = N_PC) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Principal components of x [N, D] (float64, from the covariance's eigenvectors).

  Returns (mean [D], components [n, D] orthonormal, largest variance first, sign such that
  each component's largest-|.| coordinate is positive; explained variance ratio [n])."""
  x = np.asarray(x, np.float64)
  mean = x.mean(0)
  xc = x - mean
  comps, evr = _top_components(xc.T @ xc / max(x.shape[0] - 1, 1), n)
  return mean, comps, evr


def pair_frames(x: np.ndarray, cls: np.ndarray, pairs: Sequence[tuple[int, int]], n: int = N_PC) -> dict:
  """Per ordered pair (origin, target): the PCA of the rows of both classes in x [N, D], the
  origin class's mean and the progress axis (mu_target - mu_origin) / |mu_target - mu_origin|^2.

  Each class's mean and scatter matrix are formed once (float64); a pair's covariance is
  (S_o + S_t + n_o n_t / (n_o + n_t) d d^T) / (n_o + n_t - 1), d = mu_o - mu_t (the pooled
  scatter of the two classes' rows), and all pairs' eigenproblems are solved in one call.

  Returns arrays [n_pairs, ...]: mean, components [.., n, D], explained [.., n], origin_mean, axis.
  """
  x = np.asarray(x, np.float64)
  cls = np.asarray(cls)
  used = sorted({c for p in pairs for c in p})
  cnt, mu, scat = {}, {}, {}
  for c in used:
    xc = x[cls == c]
    cnt[c], mu[c] = xc.shape[0], xc.mean(0)
    scat[c] = (xc - mu[c]).T @ (xc - mu[c])
  o, t = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
  n_o, n_t = np.array([cnt[c] for c in o], np.float64), np.array([cnt[c] for c in t], np.float64)
  m_o, m_t = np.stack([mu[c] for c in o]), np.stack([mu[c] for c in t])
  d = m_o - m_t
  sets = sorted({(min(a, b), max(a, b)) for a, b in pairs})   # (o, t) and (t, o) share one fit
  cov = []
  for a, b in sets:
    e = mu[a] - mu[b]
    cov.append((scat[a] + scat[b] + cnt[a] * cnt[b] / (cnt[a] + cnt[b]) * np.outer(e, e)) / (cnt[a] + cnt[b] - 1))
  comps, evr = _top_components(np.stack(cov), n)
  which = np.array([sets.index((min(a, b), max(a, b))) for a, b in pairs])
  comps, evr = comps[which], evr[which]
  out = {"mean": (n_o[:, None] * m_o + n_t[:, None] * m_t) / (n_o + n_t)[:, None], "components": comps,
         "explained": evr, "origin_mean": m_o, "axis": -d / np.maximum(np.sum(d * d, -1, keepdims=True), 1e-300)}
  return {k: v.astype(np.float32) for k, v in out.items()}


# ----------------------------------------------------------------------------- (d)


def effective_shifts(r: np.ndarray, shift: np.ndarray) -> np.ndarray:
  """[B, D] what a search changes in r: r - relu(r - s) (the reference's r - r_shifted)."""
  r = np.asarray(r, np.float32)
  return r - np.maximum(r - np.asarray(shift, np.float32), 0.0)


@jax.jit
def _abs_top(x, k_arr):
  return jax.lax.top_k(jnp.abs(x), k_arr.shape[0])[1]


def relevant_units(eff: np.ndarray, k: int) -> np.ndarray:
  """[B, k] each search's k units with the largest |effective shift| [B, D], largest first."""
  return np.asarray(_abs_top(jnp.asarray(eff), jnp.zeros(k)))


def unit_counts(top: np.ndarray, n_units: int, groups: np.ndarray | None = None,
                n_groups: int = 1) -> np.ndarray:
  """[n_groups, n_units] how often each unit is among a search's relevant units (top [B, k]),
  per group (groups [B] in [0, n_groups); None: one group of all searches)."""
  g = np.zeros(top.shape[0], int) if groups is None else np.asarray(groups, int)
  flat = (g[:, None] * n_units + np.asarray(top)).reshape(-1)
  return np.bincount(flat, minlength=n_groups * n_units).reshape(n_groups, n_units)


def recurrence(counts: np.ndarray, n_searches: int, k: int, n_units: int) -> dict[str, np.ndarray]:
  """Does a unit recur among the searches' relevant units more than chance?

  Null: each search's k relevant units are a uniformly random k-subset of the n_units
  (independent searches), so a unit's count is Binomial(n_searches, k / n_units). Test:
  the binomial upper tail P(count' >= count) per unit; family: all units, Bonferroni
  (the counts are negatively dependent: they sum to n_searches k).

  Returns: expected (scalar), p [n_units], p_adj [n_units] (Bonferroni, capped at 1).
  """
  # Local imports of scipy.stats (here and below): it takes ~1 s to import, which every
  # command would pay at start-up (`python -m lis_jax.main` imports every stage).
  from scipy import stats as sps
  counts = np.asarray(counts)
  prob = k / n_units
  p = sps.binom.sf(counts - 1, n_searches, prob)
  return {"expected": n_searches * prob, "p": p, "p_adj": np.minimum(p * n_units, 1.0)}


# ----------------------------------------------------------------------------- (e)


def mean_shifts(eff: np.ndarray, origin: np.ndarray, target: np.ndarray, use: np.ndarray,
                pairs: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
  """Per pair the mean effective shift [n_pairs, D] over its searches with `use` [B] true
  (NaN rows where none), and how many searches each mean is over [n_pairs]."""
  eff = np.asarray(eff, np.float64)
  out = np.full((len(pairs), eff.shape[1]), np.nan)
  n = np.zeros(len(pairs), int)
  for i, (o, t) in enumerate(pairs):
    rows = (origin == o) & (target == t) & use
    n[i] = int(rows.sum())
    if n[i]:
      out[i] = eff[rows].mean(0)
  return out, n


def transfer_inputs(r_new: np.ndarray, shift: np.ndarray, directions: np.ndarray) -> np.ndarray:
  """The shifted representations to classify: [2, P, S, D] (0: r_new - shift, 1: r_new - |shift| d).

  r_new [P, S, D] new origin-class samples per pair; shift [P, D] the pair's mean shift;
  directions [P, S, D] unit vectors (one random direction per sample: the null)."""
  norm = np.linalg.norm(shift, axis=-1)[:, None, None]
  return np.stack([r_new - shift[:, None], r_new - norm * directions]).astype(np.float32)


def classify_rows(predict: Callable, x: np.ndarray, batch: int, extra: tuple[int, ...] = ()) -> np.ndarray:
  """predict (jitted: [batch, D] -> [batch, *extra]) on the rows of x [..., D], in batches of a
  fixed size (the last padded with copies of the first row: one compilation) -> [..., *extra]."""
  flat = np.asarray(x, np.float32).reshape(-1, x.shape[-1])
  n = flat.shape[0]
  m = -(-n // batch) * batch
  pad = np.concatenate([flat, np.repeat(flat[:1], m - n, 0)]) if m > n else flat
  out = np.concatenate([np.asarray(predict(jnp.asarray(pad[i:i + batch]))) for i in range(0, m, batch)])
  return out[:n].reshape(x.shape[:-1] + tuple(extra))


def wilson(k: np.ndarray, n: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
  """Wilson score interval of k successes in n trials (arrays; NaN where n = 0)."""
  k = np.asarray(k, np.float64)
  n = np.asarray(n, np.float64)
  from scipy import stats as sps  # Local: see recurrence's note.
  z = sps.norm.ppf(0.5 + level / 2)
  with np.errstate(invalid="ignore", divide="ignore"):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
  return np.where(n > 0, centre - half, np.nan), np.where(n > 0, centre + half, np.nan)


def mcnemar_greater(real: np.ndarray, null: np.ndarray) -> np.ndarray:
  """One-sided exact McNemar test per row: does the real shift succeed more often than the
  null shift on the same samples? real, null [P, S] bool. Under H0 (equal success
  probability) the discordant samples split Binomial(b + c, 1/2): p = P(X >= b), b = real
  only, c = null only; 1 where no sample is discordant."""
  from scipy import stats as sps  # Local: see recurrence's note.
  real, null = np.asarray(real, bool), np.asarray(null, bool)
  b = np.sum(real & ~null, -1)
  c = np.sum(~real & null, -1)
  return np.where(b + c > 0, sps.binom.sf(b - 1, b + c, 0.5), 1.0)


def transfer_statistics(real: np.ndarray, null: np.ndarray, valid: np.ndarray, *, level: float = 0.95,
                        q_level: float = 0.1) -> dict[str, np.ndarray]:
  """Per pair: success rates of the transferred shift and of its null, Wilson intervals, the
  one-sided exact McNemar p (`mcnemar_greater`), Benjamini-Hochberg q over the pairs (the
  family) and the call 'transfers' (q <= q_level).

  Args:
    real, null: [P, S] bool success per new sample; valid: [P, S] bool (samples that exist;
      a pair without a mean shift has none).
  Returns: [P] arrays n, k, rate, ci_low, ci_high, k_null, rate_null, null_low, null_high, p, q,
  transfers.
  """
  from lis_jax.analysis import calls
  valid = np.asarray(valid, bool)
  real, null = np.asarray(real, bool) & valid, np.asarray(null, bool) & valid
  n = valid.sum(-1)
  k, k0 = real.sum(-1), null.sum(-1)
  lo, hi = wilson(k, n, level)
  lo0, hi0 = wilson(k0, n, level)
  with np.errstate(invalid="ignore", divide="ignore"):
    rate, rate0 = np.where(n > 0, k / n, np.nan), np.where(n > 0, k0 / n, np.nan)
  p = np.where(n > 0, mcnemar_greater(real, null), np.nan)
  q = calls.bh_qvalues(p)
  with np.errstate(invalid="ignore"):
    called = q <= q_level
  return {"n": n, "k": k, "rate": rate, "ci_low": lo, "ci_high": hi, "k_null": k0, "rate_null": rate0,
          "null_low": lo0, "null_high": hi0, "p": p, "q": q, "transfers": called}
