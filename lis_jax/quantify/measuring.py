"""Measuring a generator's images by parts: the computations of the quantify stage that
other stages share (boundary, population, invariances measure images and read changes
the same way quantify does).

`measure` segments images of w with a trained `segment.Segmenter` and returns the part
metrics (`metrics.part_metrics`); `null_ws` draws the random-direction null; the
`deltas_from_blocks` / `truth_check` pair turns quantify's stored measurements into
concept changes and checks them against a world's ground truth. Settings come as the
quantify config section `c` (lis_jax/stages/quantify.py, `default_config`).
"""
from __future__ import annotations

import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from lis_jax import generators
from lis_jax import memory
from lis_jax import sweeps
from lis_jax.analysis import boundary as boundary_lib
from lis_jax.quantify import metrics, segment, selectivity


@functools.partial(jax.jit, static_argnames=("layers", "resolution", "num_parts", "head_size",
                                             "max_components", "entropy", "truth"))
def _measure(G, seg_params, w, *, layers, resolution, num_parts, head_size, max_components,
             entropy, truth):
  """w [B, w_dim] -> part metrics of G's image over the segmenter's parts + the object.

  Parts: the segmenter's without the background, then `metrics.OBJECT_PART`; with `truth`
  (a GroundTruthWorld), the same again from the world's true masks (2 (P + 1) parts in
  all; the costly per-image work, e.g. the entropy image, is shared).
  """
  ws = generators.broadcast_ws(w, G.num_ws)
  img = segment.resize_images(G.synthesis(ws), resolution)  # [B, R, R, 3]
  logits = segment.head_logits(seg_params, segment.layer_features(G, ws, layers), layers,
                               resolution, num_parts, head_size, lowres=True)
  masks = metrics.with_object(jax.nn.one_hot(jnp.argmax(logits, -1), num_parts)[..., 1:])
  if truth:
    true = segment.resize_images(G.ground_truth(ws)["masks"], resolution)  # [B, R, R, num_parts]
    true = jax.nn.one_hot(jnp.argmax(true, -1), true.shape[-1])[..., 1:]
    masks = jnp.concatenate([masks, metrics.with_object(true)], -1)
  return metrics.part_metrics(img, masks, max_components=max_components, entropy=entropy)


def measure(G, seg: segment.Segmenter, w: np.ndarray, batch_size: int, max_components: int,
            entropy: bool = True, truth: bool = False, setting: str = "quantify.batch_size",
            budget: memory.Budget | None = None) -> dict:
  """Part metrics of the images of w [N, w_dim], in fixed-size batches (one compile) of at
  most `batch_size`: fewer when the memory budget (default: the device's) holds fewer;
  `setting` is the config field named when even one image does not fit.

  Returns metrics.part_metrics' dict over the segmenter's parts and the object ([N, P + 1]
  or [N, P + 1, K]); with `truth`, also 'true.<metric>' from the world's true masks.
  """
  fn = functools.partial(_measure, layers=seg.layers, resolution=seg.resolution,
                         num_parts=seg.num_parts, head_size=seg.size, max_components=max_components,
                         entropy=entropy, truth=truth)
  rows, where = unique_rows(np.asarray(w, np.float32))   # a repeated w is measured once
  m = memory.map_batches(fn, rows, batch_size, G, seg.params,
                         budget=budget or memory.default_budget(), call="segment+measure",
                         setting=setting, stage=setting.split(".")[0])
  m = {k: v[where] for k, v in m.items()}
  if not truth:
    return m
  p = seg.num_parts  # P + 1 measured parts per mask source
  return {**{k: v[:, :p] for k, v in m.items()}, **{f"true.{k}": v[:, p:] for k, v in m.items()}}


def unique_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The distinct rows of x [N, ...] (the same bytes) in order of first appearance [N', ...],
  and the index [N] of each row among them: x == rows[index]. (The boundary stage's paths
  from one start sample share their t = 0 point: 112 searches of the demo, 16 starts.)"""
  if x.shape[0] == 0:
    return x, np.zeros(0, np.int64)
  flat = np.ascontiguousarray(x.reshape(x.shape[0], -1))
  as_bytes = flat.view(np.dtype((np.void, flat.dtype.itemsize * flat.shape[1])))[:, 0]   # -0.0 != 0.0
  _, first, inverse = np.unique(as_bytes, return_index=True, return_inverse=True)
  order = np.argsort(first)   # distinct rows, by first appearance
  rank = np.empty_like(order)
  rank[order] = np.arange(order.size)
  return x[first[order]], rank[inverse.reshape(-1)]


def null_ws(w_start: np.ndarray, lengths: np.ndarray, draws: int, key: jax.Array
            ) -> tuple[np.ndarray, np.ndarray]:
  """End points of the null: random directions in w, each applied to every start sample.

  Args:
    w_start: [S, w_dim] the start samples' own w (link(r)).
    lengths: [U] the units' sweep lengths; each direction takes one of them at random,
      so the null's lengths follow the units'.
    draws: R directions.
    key: PRNG key (the same key gives the same directions and lengths).
  Returns:
    ends [R, S, w_dim] = w_start + length_r d_r / |d_r| (d_r ~ N(0, I)), lengths [R].
  """
  kd, kl = jax.random.split(key)
  d = np.asarray(jax.random.normal(kd, (draws, w_start.shape[-1])), np.float64)
  d /= np.linalg.norm(d, axis=-1, keepdims=True)
  length = np.asarray(lengths, np.float64)[np.asarray(jax.random.randint(kl, (draws,), 0, len(lengths)))]
  return (w_start[None] + length[:, None, None] * d[:, None]).astype(np.float32), length


def uses_entropy(c) -> bool:
  """Whether quantify section `c`'s concept set reads the (costly) local entropy."""
  return "entropy_mean" in selectivity.concept_sources(c.concepts).values()


def measured_parts(seg: segment.Segmenter) -> list[str]:
  """The parts `measure` reports, in order: the segmenter's without the background, then
  the object (the union of the parts)."""
  return list(seg.part_names[1:]) + [metrics.OBJECT_PART]


def measure_concepts(G, seg: segment.Segmenter, w: np.ndarray, batch_size: int, c,
                     setting: str = "quantify.batch_size") -> np.ndarray:
  """[N, P + 1, M'] concept values of the images of w [N, w_dim], read with quantify
  section `c`'s settings (its concept set, its components), as the quantify stage reads
  them; M' = len(concept_sources(c)). Other stages measure images through this."""
  m = measure(G, seg, w, batch_size, c.max_components, entropy=uses_entropy(c), setting=setting)
  return selectivity.concept_values(m, concept_sources(c))


def concept_sources(c) -> dict[str, str]:
  """Quantify section `c`'s concept set (quantify.concepts): concept -> metric key."""
  return selectivity.concept_sources(c.concepts)


def deltas_from_blocks(blocks: list[dict], null: dict, sources: dict, masks: str = "segmenter"):
  """Concept changes of the units' sweeps and of the null's random directions.

  Args:
    blocks: quantify blocks (`load_blocks`); null: the null's outputs (`load_null`).
    sources: the concept set (`selectivity.concept_sources`).
    masks: 'segmenter' or 'true' (the world's true masks; built-in world only).
  Returns:
    units [U], deltas [U, S', P, M], lengths [U], null deltas [R, S', P, M], null lengths [R].
  """
  pre = "" if masks == "segmenter" else "true."
  vals = lambda d, prefix: selectivity.concept_values(
      {k[len(prefix):]: v for k, v in d.items() if k.startswith(prefix) and "." not in k[len(prefix):]},
      sources)
  units = np.concatenate([b["units"] for b in blocks])
  lengths = np.concatenate([b["length"] for b in blocks])
  first = np.concatenate([vals(b, f"first.{pre}") for b in blocks])  # [U, S', P, M']
  last = np.concatenate([vals(b, f"last.{pre}") for b in blocks])
  deltas = selectivity.sweep_changes(first, last, sources)
  end = vals(null, f"end.{pre}")  # [R, S', P, M']
  start = np.broadcast_to(vals(null, f"start.{pre}")[None], end.shape).copy()
  return units, deltas, lengths, selectivity.sweep_changes(start, end, sources), null["length"]


def measured_truth(G, sweep_blocks, samples: int) -> tuple[np.ndarray, list[str]]:
  """The truth of what quantify measures: each unit's true factor change per MEASURED start
  sample (built-in world only).

  Quantify measures `samples` of the sweep's start samples (`sweeps.pick_starts`, one
  per class first); the sweep's `truth_delta` averages all of them. Checking measured
  changes against the all-samples truth would score the units partly on samples that
  were never measured, so quantify's truth_check and benchmarks/calibration.py both use
  this one.

  Args:
    G: a GroundTruthWorld (`decode_factors`, `factor_ranges`, `circular_factors`).
    sweep_blocks: the sweep's blocks (each with w [U, S, T, w_dim] and cls [S]).
    samples: quantify.samples_per_unit.
  Returns:
    per_start [U_total, S', F]: the change first -> last step of each factor as a fraction
    of its range (hues wrapped), the F factor names (decode_factors' order, as the sweep's
    truth_factors). Its mean over axis 1 is the truth [U, F] truth_check takes.
  """
  out, names = [], None
  for b in sweep_blocks:
    w = np.asarray(b["w"])[:, sweeps.pick_starts(b["cls"], samples)]  # [U, S', T, w_dim]
    u, s_n, _, d = w.shape
    f, _ = G.decode_factors(generators.broadcast_ws(jnp.asarray(w[:, :, [0, -1]].reshape(-1, d)), G.num_ws))
    f = {k: np.asarray(v).reshape(u, s_n, 2) for k, v in f.items()}
    ch = boundary_lib.factor_changes({k: v[..., 0] for k, v in f.items()}, {k: v[..., 1] for k, v in f.items()},
                                     G.factor_ranges, G.circular_factors)
    names = list(ch)
    out.append(np.stack([ch[n] for n in names], -1))
  return np.concatenate(out), names


def truth_check(stats: dict, units: np.ndarray, part_names: list[str], truth: np.ndarray,
                factor_names: list[str], k: int, factor_concepts: Mapping[str, tuple[str, str]],
                score: str = "mean") -> dict | None:
  """Built-in world: does the measured concept find the units that move the true factor?

  Per factor of `factor_concepts` (factor -> (part, metric); the world's) whose part is measured:
  precision@k = |the top-k selective units for its concept (by `stats['rank']`)
  intersected with the top-k units by |true factor change|| / (number found, <= k); and
  the Spearman correlation over all units of |stats[score]| (the ranking score) with
  |true factor change| (robust where many units move a factor about equally).

  Args:
    stats: `selectivity.*_statistics` output ([U, P, M] arrays: selective, rank, score).
    units: [U] unit ids; part_names: the P parts.
    truth: [U, F] mean true change of each factor (fraction of its range).
    factor_names: the F factors.
    k: precision@k.
  Returns:
    {k, chance, per_factor: {factor: {part, metric, found, true_top, precision,
    spearman}}, mean_precision, mean_spearman}.
  """
  k_eff = min(k, units.size)
  out = {}
  for factor, (part, metric) in factor_concepts.items():
    if factor not in factor_names or part not in part_names:
      continue
    p, m = part_names.index(part), selectivity.CONCEPT_METRICS.index(metric)
    true = np.abs(truth[:, factor_names.index(factor)])
    moved = units[np.argsort(-true, kind="stable")[:k_eff]]
    sel = np.flatnonzero(stats["selective"][:, p, m])
    found = units[sel[np.argsort(stats["rank"][sel, p, m], kind="stable")]][:k_eff].tolist()
    hits = len(set(found) & set(moved.tolist()))
    out[factor] = {"part": part, "metric": metric, "found": [int(u) for u in found],
                   "true_top": [int(u) for u in moved],
                   "precision": hits / len(found) if found else None,
                   "spearman": rank_correlation(np.abs(stats[score][:, p, m]), true)}
  vals = [v["precision"] for v in out.values() if v["precision"] is not None]
  rhos = [v["spearman"] for v in out.values() if v["spearman"] is not None]
  return {"k": k_eff, "chance": k_eff / units.size, "per_factor": out,
          "mean_precision": float(np.mean(vals)) if vals else None,
          "mean_spearman": float(np.mean(rhos)) if rhos else None}


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float | None:
  """Spearman's rank correlation of a and b over the entries where both are finite."""
  ok = np.isfinite(a) & np.isfinite(b)
  if ok.sum() < 3:
    return None
  ra = np.argsort(np.argsort(a[ok])).astype(float)
  rb = np.argsort(np.argsort(b[ok])).astype(float)
  if ra.std() == 0 or rb.std() == 0:
    return None
  return float(np.corrcoef(ra, rb)[0, 1])


def statistics_options(c) -> dict:
  """shared_null_statistics' options from quantify section `c` (seed and n_boot aside)."""
  return dict(level=c.level, alpha=c.alpha, rank_by=c.rank_by, average=c.average,
              per_length=c.null_per_length, per_start_scale=c.per_start_scale)
