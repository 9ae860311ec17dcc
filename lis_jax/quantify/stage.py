"""Stage `quantify`: segment the sweep images into parts, measure them, rank the units.

For every sweep block (WORKSPACE.md, `sweep/`), the images at the first and last step of
each unit's sweep are regenerated from the stored w, segmented by the few-shot part
segmenter and measured (`metrics.part_metrics`); so are the end points of sweeps along
random directions of the same length (the null). The changes give, per unit and concept
(part x metric), a mean with a bootstrap interval, a null p-value and a rank
(`selectivity`). On a generator that knows its factors (the built-in world), the units
found selective for a concept are compared with the units that truly move the matching
factor (precision@k).

Outputs (`workdir/quantify/`, all written atomically):
  config.json            the config values the outputs depend on (pipeline.check_stage_config)
  segmenter/             the trained head (io.save_checkpoint; meta: layers, size, parts)
  segmenter_eval.json    held-out per-part IoU, mean IoU, training time
  block_<b:05d>.npz      per sweep block b: units [U], samples [S'] (paired-data rows),
                         first / last / null metrics (keys 'first.<metric>',
                         'last.<metric>' [U, S', P(, K)], 'null.<metric>' [U, S', R, P(, K)])
                         and, with ground truth, truth_delta [U, F]; existence = block done
  manifest.json          blocks done, parts, null draws (informational; files are the truth)
  selectivity.csv        one row per unit x part x metric (selectivity.TABLE_COLUMNS)
  top_units.csv          the top `quantify.top_k` selective units per concept
  truth_check.json       built-in world only: precision@k per factor and its chance level
"""
from __future__ import annotations

import functools
import html
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from lis_jax import io, pipeline
from lis_jax.quantify import metrics, segment, selectivity

STAGE = "quantify"
# Tag folded into config.seed for this stage's keys (labelled samples, init, null directions).
_KEY_TAG = 6
# On the built-in world: factor -> the (part, metric) concept that shows it in the image.
# Pose and size are the whole object's (the `object` pseudo-part): the body's centre also
# moves with rotation, its area with the body's own width and height
# (benchmarks/selectivity_results.md); REFERENCE_FACTOR_CONCEPTS is the earlier, body-only map.
FACTOR_CONCEPTS = {
    "pos_x": ("object", "centre_x"),
    "pos_y": ("object", "centre_y"),
    "scale": ("object", "area"),
    "rotation": ("object", "angle"),
    "body_lum": ("body", "luminance"),
    "top_lum": ("top", "luminance"),
    "extra_lum": ("extra", "luminance"),
    "stripe_contrast": ("body", "texture"),
}
REFERENCE_FACTOR_CONCEPTS = {**FACTOR_CONCEPTS, "pos_x": ("body", "centre_x"),
                             "pos_y": ("body", "centre_y"), "scale": ("body", "area"),
                             "rotation": ("body", "angle")}


def default_config() -> ml_collections.ConfigDict:
  """The quantify stage's settings (configs set `config.quantify` from this)."""
  c = ml_collections.ConfigDict()
  c.labels = "ground_truth"  # labelled-mask dir (segment.py docstring) or 'ground_truth' (built-in world)
  c.n_labelled = 16  # labelled images the head is trained on (the reference: 10-30)
  c.n_heldout = 64  # held-out images for the IoU (ground truth; a label dir uses what is left)
  c.resolution = 0  # side of the segmented, measured images (the reference: 128); 0: G's own
  c.layers = "all"  # synthesis-feature layers: 'all', 'every_other' (the reference) or names
  c.head = "XS"  # head size: XS, S (the reference), M, L
  c.epochs = 40  # passes over the labelled images
  c.train_batch = 1  # images per step (1: the reference)
  c.lr = 3e-3  # Adam learning rate (the reference: 1e-3 for 100 epochs)
  c.weight_decay = 1e-3  # L2 added to the gradient (torch Adam's weight_decay)
  c.lr_step_epochs = 30  # lr x lr_gamma every this many epochs
  c.lr_gamma = 0.1
  c.samples_per_unit = 8  # start samples per unit measured (of the sweep's), spread over classes
  c.null_draws = 48  # random directions of the null, each applied to every start sample, shared by all units
  c.concepts = "calibrated"  # metrics per concept: 'calibrated' or 'reference' (selectivity.CONCEPT_SETS)
  c.rank_by = "mean"  # units ranked by |average change| ('mean', the reference's) or 'effect' (vs the null)
  c.average = "median"  # average of a unit's changes over its start samples: 'median' or 'mean' (the reference)
  c.null_per_length = False  # True: compare changes per unit of sweep length with the null's
  c.max_components = 3  # ellipse slots per part (largest components)
  c.batch_size = 64  # images per segment-and-measure call
  c.n_boot = 1000  # bootstrap resamples
  c.level = 0.95  # bootstrap interval coverage
  c.alpha = 0.05  # null p-value threshold for 'selective'
  c.top_k = 5  # units listed per concept; also k of precision@k
  c.cards = 6  # unit cards in the report
  return c


def _cfg(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  return pipeline.section_config(config, "quantify", default_config())


def fingerprint(config: ml_collections.ConfigDict) -> dict:
  from lis_jax import sweeps
  q = {k: v for k, v in _cfg(config).to_dict().items() if k not in ("batch_size", "cards")}
  return {**sweeps.fingerprint(config), "quantify": q}


def _key(config) -> jax.Array:
  return jax.random.fold_in(jax.random.PRNGKey(config.seed), _KEY_TAG)


# ----------------------------------------------------------------------------- segmenter


def _labelled(config, c, G, workdir, key):
  """(ws_train, labels_train, ws_test, labels_test, part_names) from the configured source."""
  res = c.resolution or G.resolution
  if c.labels == "ground_truth":
    classes = pipeline.parse_classes(config.classes, G.num_classes)
    ws = segment.sample_ws(G, classes, c.n_labelled + c.n_heldout, config.psi, key)
    labels, names = segment.ground_truth_labels(G, ws, res)
    n = c.n_labelled
    return ws[:n], labels[:n], ws[n:], labels[n:], names
  path = pipeline.resolve_path(workdir, c.labels)
  if not os.path.isdir(path):
    inside = os.path.join(workdir, c.labels)
    raise segment.SegmentationError(
        f"quantify.labels={c.labels!r}: no labelled-mask directory at {path}"
        f"{'' if os.path.isabs(c.labels) else f' or {inside}'} (layout: WORKSPACE.md, quantify/); "
        f"on the built-in world use quantify.labels='ground_truth'")
  w, labels, names = segment.load_label_dir(path)
  ws = segment.as_ws(w, G.num_ws)
  if labels.shape[1:] != (res, res):
    raise segment.SegmentationError(f"labelled masks are {labels.shape[1:]} but images are "
                                    f"segmented at {res} x {res} (quantify.resolution, 0: the "
                                    f"generator's {G.resolution})")
  n = min(c.n_labelled, labels.shape[0])
  return ws[:n], labels[:n], ws[n:], labels[n:], names


def segmenter(config, workdir: str, G=None) -> segment.Segmenter:
  """The stage's segmenter: loaded if trained already, else trained, evaluated and saved."""
  c = _cfg(config)
  out_dir = pipeline.stage_dir(workdir, STAGE)
  ckpt = os.path.join(out_dir, "segmenter")
  if os.path.exists(os.path.join(ckpt, io.META_FILE)):
    return segment.load(ckpt)
  if G is None:
    G, _ = pipeline.load_models(config, workdir)
  key = _key(config)
  ws_tr, y_tr, ws_te, y_te, names = _labelled(config, c, G, workdir, jax.random.fold_in(key, 0))
  t0 = time.time()
  seg = segment.fit(G, ws_tr, y_tr, names, layers=c.layers, size=c.head, key=jax.random.fold_in(key, 1),
                    epochs=c.epochs, batch_size=c.train_batch, lr=c.lr, weight_decay=c.weight_decay,
                    lr_step_epochs=c.lr_step_epochs, lr_gamma=c.lr_gamma)
  train_s = time.time() - t0
  ev = segment.evaluate(seg, G, ws_te, y_te) if y_te.shape[0] else {"iou": {}, "mean_iou": None,
                                                                     "n_images": 0}
  ev.update(train_seconds=train_s, n_labelled=int(y_tr.shape[0]), labels=c.labels)
  seg.save(ckpt)
  io.write_json(os.path.join(out_dir, "segmenter_eval.json"), ev)
  miou = ev["mean_iou"]
  print(f"[quantify] segmenter: {y_tr.shape[0]} labelled images, {train_s:.0f} s, held-out mean IoU "
        f"{'n/a' if miou is None else f'{miou:.3f}'}", flush=True)
  return seg


# ----------------------------------------------------------------------------- measuring


@functools.partial(jax.jit, static_argnames=("layers", "resolution", "num_parts", "head_size",
                                             "max_components", "entropy", "truth"))
def _measure(G, seg_params, w, *, layers, resolution, num_parts, head_size, max_components,
             entropy, truth):
  """w [B, w_dim] -> part metrics of G's image over the segmenter's parts + the object.

  Parts: the segmenter's without the background, then `metrics.OBJECT_PART`; with `truth`
  (a GroundTruthWorld), the same again from the world's true masks (2 (P + 1) parts in
  all; the costly per-image work, e.g. the entropy image, is shared).
  """
  ws = pipeline.broadcast_ws(w, G.num_ws)
  img = segment.resize_images(G.synthesis(ws), resolution)  # [B, R, R, 3]
  logits = segment.apply_head(seg_params, segment.feature_stack(G, ws, layers, resolution),
                              num_parts, head_size)
  masks = metrics.with_object(jax.nn.one_hot(jnp.argmax(logits, -1), num_parts)[..., 1:])
  if truth:
    true = segment.resize_images(G.ground_truth(ws)["masks"], resolution)  # [B, R, R, num_parts]
    true = jax.nn.one_hot(jnp.argmax(true, -1), true.shape[-1])[..., 1:]
    masks = jnp.concatenate([masks, metrics.with_object(true)], -1)
  return metrics.part_metrics(img, masks, max_components=max_components, entropy=entropy)


def measure(G, seg: segment.Segmenter, w: np.ndarray, batch_size: int, max_components: int,
            entropy: bool = True, truth: bool = False) -> dict:
  """Part metrics of the images of w [N, w_dim], in fixed-size batches (one compile).

  Returns metrics.part_metrics' dict over the segmenter's parts and the object ([N, P + 1]
  or [N, P + 1, K]); with `truth`, also 'true.<metric>' from the world's true masks.
  """
  out = []
  n = w.shape[0]
  for s in range(0, n, batch_size):
    chunk = w[s:s + batch_size]
    pad = batch_size - chunk.shape[0]
    res = _measure(G, seg.params, jnp.asarray(np.pad(chunk, ((0, pad), (0, 0)), mode="edge")),
                   layers=seg.layers, resolution=seg.resolution, num_parts=seg.num_parts,
                   head_size=seg.size, max_components=max_components, entropy=entropy, truth=truth)
    out.append({k: np.asarray(v)[:chunk.shape[0]] for k, v in res.items()})
  m = {k: np.concatenate([o[k] for o in out]) for k in out[0]}
  if not truth:
    return m
  p = seg.num_parts  # P + 1 measured parts per mask source
  return {**{k: v[:, :p] for k, v in m.items()}, **{f"true.{k}": v[:, p:] for k, v in m.items()}}


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


def pick_samples(cls: np.ndarray, n: int) -> np.ndarray:
  """Indices of n start samples spread over the classes (round robin, first ones first)."""
  rank = np.zeros(cls.size, int)
  for c in np.unique(cls):
    idx = np.flatnonzero(cls == c)
    rank[idx] = np.arange(idx.size)
  order = np.lexsort((np.arange(cls.size), rank))
  return np.sort(order[:min(n, cls.size)])


def _block_path(out_dir: str, b: int) -> str:
  return os.path.join(out_dir, f"block_{b:05d}.npz")


def _uses_entropy(c) -> bool:
  return "entropy_mean" in selectivity.concept_sources(c.concepts).values()


def _quantify_block(c, G, seg, blk) -> dict:
  w = blk["w"]  # [U, S, T, w_dim]
  pick = pick_samples(blk["cls"], c.samples_per_unit)
  w = w[:, pick]  # [U, S', T, w_dim]
  u_n, s_n, _, d = w.shape
  ends = w[:, :, [0, -1]].reshape(-1, d)  # [U * S' * 2, w_dim]
  m = measure(G, seg, ends, c.batch_size, c.max_components, _uses_entropy(c), _has_truth(G))
  out = {"units": blk["units"], "samples": blk["samples"][pick],
         "length": np.linalg.norm(w[:, 0, -1] - w[:, 0, 0], axis=-1)}  # [U]
  for k, v in m.items():
    v = v.reshape(u_n, s_n, 2, *v.shape[1:])
    out[f"first.{k}"], out[f"last.{k}"] = v[:, :, 0], v[:, :, 1]
  if _has_truth(G):
    from lis_jax import report
    delta, names, _ = report.factor_deltas(G, w)  # [U, F] mean change / factor range
    out["truth_delta"] = delta
    out["truth_factors"] = np.asarray(names)
  return out


def _has_truth(G) -> bool:
  return hasattr(G, "decode_factors") and hasattr(G, "ground_truth")


def _quantify_null(config, c, G, seg, sweep_blocks: list[dict]) -> dict:
  """The null shared by all units: R random-direction end points from each start sample.

  A start sample's null sweeps start at the centre of its unit sweeps (the mean of its
  sweep w over all units and steps: its own w up to the units' offsets from their mean),
  so the null needs nothing but the sweep's blocks.
  """
  pick = pick_samples(sweep_blocks[0]["cls"], c.samples_per_unit)
  w_start = np.mean([b["w"][:, pick].mean((0, 2)) for b in sweep_blocks], axis=0)  # [S', w_dim]
  w_start = w_start.astype(np.float32)
  lengths = np.concatenate([np.linalg.norm(b["w"][:, 0, -1] - b["w"][:, 0, 0], axis=-1)
                            for b in sweep_blocks])
  ends, null_len = null_ws(w_start, lengths, c.null_draws,
                           pipeline.stream_key(int(config.seed), "quantify.null"))
  s_n, d = w_start.shape
  m = measure(G, seg, np.concatenate([w_start, ends.reshape(-1, d)]), c.batch_size, c.max_components,
              _uses_entropy(c), _has_truth(G))
  out = {"samples": sweep_blocks[0]["samples"][pick], "length": null_len}
  for k, v in m.items():
    out[f"start.{k}"] = v[:s_n]
    out[f"end.{k}"] = v[s_n:].reshape(c.null_draws, s_n, *v.shape[1:])
  return out


def load_blocks(workdir: str) -> list[dict]:
  """The quantify blocks written so far, in order."""
  out_dir = pipeline.stage_dir(workdir, STAGE)
  blocks, b = [], 0
  while os.path.exists(_block_path(out_dir, b)):
    with np.load(_block_path(out_dir, b)) as f:
      blocks.append({k: f[k] for k in f.files})
    b += 1
  return blocks


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


def truth_check(stats: dict, units: np.ndarray, part_names: list[str], truth: np.ndarray,
                factor_names: list[str], k: int, factor_concepts: dict = None,
                score: str = "mean") -> dict | None:
  """Built-in world: does the measured concept find the units that move the true factor?

  Per factor of `factor_concepts` (default FACTOR_CONCEPTS) whose part is measured:
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
  factor_concepts = FACTOR_CONCEPTS if factor_concepts is None else factor_concepts
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


# ----------------------------------------------------------------------------- stage


def _null_path(out_dir: str) -> str:
  return os.path.join(out_dir, "null.npz")


def load_null(workdir: str) -> dict:
  """The null's outputs (null.npz) as a dict of arrays."""
  with np.load(_null_path(pipeline.stage_dir(workdir, STAGE))) as f:
    return {k: f[k] for k in f.files}


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Stage entry: quantifies every sweep block into `workdir/quantify/` (resumable)."""
  from lis_jax import sweeps
  c = _cfg(config)
  if (c.samples_per_unit < 2 or c.null_draws < 2 or c.batch_size < 1 or c.n_labelled < 1
      or c.rank_by not in ("mean", "effect") or c.average not in ("mean", "median")
      or c.concepts not in selectivity.CONCEPT_SETS):
    raise pipeline.PipelineError("quantify: samples_per_unit and null_draws must be >= 2, batch_size "
                                 "and n_labelled >= 1, rank_by 'mean' or 'effect', average 'mean' or "
                                 "'median', concepts "
                                 f"one of {', '.join(selectivity.CONCEPT_SETS)}")
  out_dir = pipeline.stage_dir(workdir, STAGE)
  sweep_dir = pipeline.stage_dir(workdir, "sweep")
  pipeline.require(os.path.join(sweep_dir, "index.csv"), "sweep")
  G, _ = pipeline.load_models(config, workdir)
  try:
    seg = segmenter(config, workdir, G)
  except segment.SegmentationError as e:
    raise pipeline.PipelineError(str(e)) from None
  blocks = list(sweeps.iter_blocks(workdir))
  if not os.path.exists(_null_path(out_dir)):
    io.savez(_null_path(out_dir), **_quantify_null(config, c, G, seg, blocks))
  done = [b for b in range(len(blocks)) if os.path.exists(_block_path(out_dir, b))]
  with tqdm(total=len(blocks), initial=len(done), unit="block", desc="quantify") as bar:
    for blk in blocks:
      b = blk["block"]
      if b in done:
        continue
      out = _quantify_block(c, G, seg, blk)
      pipeline.check_finite(f"quantify block {b} areas", out["first.area"])
      pipeline.maybe_interrupt(STAGE, b + 1)
      io.savez(_block_path(out_dir, b), **out)
      done.append(b)
      io.write_json(os.path.join(out_dir, "manifest.json"),
                    {"blocks_done": sorted(done), "n_blocks": len(blocks),
                     "parts": list(seg.part_names[1:]) + [metrics.OBJECT_PART],
                     "null_draws": c.null_draws, "samples_per_unit": c.samples_per_unit})
      bar.update(1)
  summarise(config, workdir, seg)


def _statistics(c, units, deltas, lengths, null_d, null_len, seed: int) -> dict:
  return selectivity.shared_null_statistics(deltas, lengths, null_d, null_len, seed=seed, n_boot=c.n_boot,
                                            level=c.level, alpha=c.alpha, rank_by=c.rank_by,
                                            average=c.average, per_length=c.null_per_length)


def summarise(config, workdir: str, seg: segment.Segmenter) -> None:
  """selectivity.csv, top_units.csv and truth_check.json from all quantify blocks and the null."""
  c = _cfg(config)
  out_dir = pipeline.stage_dir(workdir, STAGE)
  blocks, null = load_blocks(workdir), load_null(workdir)
  sources = selectivity.concept_sources(c.concepts)
  parts = list(seg.part_names[1:]) + [metrics.OBJECT_PART]
  units, deltas, lengths, null_d, null_len = deltas_from_blocks(blocks, null, sources)
  stats = _statistics(c, units, deltas, lengths, null_d, null_len, int(config.seed))
  rows = selectivity.table_rows(stats, units, parts)
  selectivity.write_csv(os.path.join(out_dir, "selectivity.csv"), rows, selectivity.TABLE_COLUMNS)
  top = selectivity.top_units(rows, c.top_k)
  selectivity.write_csv(os.path.join(out_dir, "top_units.csv"),
                        [r for concept in sorted(top) for r in top[concept]], selectivity.TABLE_COLUMNS)
  fpr = selectivity.null_false_positive_rate(null_d, null_len, seed=int(config.seed), n_boot=c.n_boot,
                                             level=c.level, alpha=c.alpha, average=c.average,
                                             per_length=c.null_per_length)
  if "truth_delta" not in blocks[0]:
    return
  truth = np.concatenate([b["truth_delta"] for b in blocks])  # [U, F]
  names = [str(n) for n in blocks[0]["truth_factors"]]
  check = truth_check(stats, units, parts, truth, names, c.top_k, score=c.rank_by)
  t_units, t_deltas, t_len, t_null, t_null_len = deltas_from_blocks(blocks, null, sources, "true")
  t_stats = _statistics(c, t_units, t_deltas, t_len, t_null, t_null_len, int(config.seed))
  check["true_masks"] = truth_check(t_stats, units, parts, truth, names, c.top_k, score=c.rank_by)
  check.update(false_positive_rate=fpr, alpha=c.alpha, concepts=c.concepts, rank_by=c.rank_by,
               average=c.average, null_per_length=c.null_per_length,
               samples_per_unit=c.samples_per_unit, null_draws=c.null_draws)
  io.write_json(os.path.join(out_dir, "truth_check.json"), check)
  f = lambda x: "n/a" if x is None else f"{x:.2f}"
  tm = check["true_masks"]
  print(f"[quantify] vs ground truth: precision@{check['k']} {f(check['mean_precision'])} "
        f"(true masks {f(tm['mean_precision'])}; chance {check['chance']:.2f}), Spearman "
        f"{f(check['mean_spearman'])} (true masks {f(tm['mean_spearman'])}); false-positive rate "
        f"on random directions {fpr:.3f} (alpha {c.alpha})", flush=True)


# ----------------------------------------------------------------------------- report section

# Overlay colours of parts 1.. (background stays unpainted): saturated, unlike the objects.
_PART_COLOURS = np.array([[0.95, 0.10, 0.10], [0.10, 0.30, 0.95], [1.00, 0.90, 0.00],
                          [0.00, 0.80, 0.30], [0.80, 0.00, 0.80], [0.00, 0.85, 0.85],
                          [1.00, 0.50, 0.00], [0.50, 0.50, 0.50]])


def overlay(img: np.ndarray, labels: np.ndarray, alpha: float = 0.6) -> np.ndarray:
  """Images [N, H, W, 3] in [0, 1] with parts (labels > 0) tinted in their colour."""
  colours = _PART_COLOURS[(np.maximum(labels, 1) - 1) % len(_PART_COLOURS)]
  tint = np.where((labels > 0)[..., None], alpha, 0.0)
  return img * (1 - tint) + colours * tint


def _fmt(x: float, digits: int = 3) -> str:
  return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}g}"


def _card_units(rows: list[dict], n: int) -> list[int]:
  """Units with the most selective concepts (ties: the largest |effect|)."""
  score: dict[int, list] = {}
  for r in rows:
    s = score.setdefault(r["unit"], [0, 0.0])
    if r["selective"]:
      s[0] += 1
      s[1] = max(s[1], abs(r["effect"]) if np.isfinite(r["effect"]) else 0.0)
  return [u for u, _ in sorted(score.items(), key=lambda kv: (-kv[1][0], -kv[1][1]))[:n]]


def report_section(config, workdir: str) -> str | None:
  """HTML: segmenter IoU, precision@k on the built-in world, top units, one card per unit."""
  import csv as _csv

  from lis_jax import report, sweeps
  out_dir = pipeline.stage_dir(workdir, STAGE)
  table = os.path.join(out_dir, "selectivity.csv")
  if not os.path.exists(table):
    return None
  c = _cfg(config)
  rc = report.report_config(config)
  with open(table) as f:
    rows = [{**r, "unit": int(r["unit"]), "effect": float(r["effect"]), "mean": float(r["mean"]),
             "ci_low": float(r["ci_low"]), "ci_high": float(r["ci_high"]), "p_null": float(r["p_null"]),
             "rank": int(r["rank"]), "selective": r["selective"] == "True"} for r in _csv.DictReader(f)]
  parts = ["<h2>What the units encode: parts and their measures</h2>"]
  ev_path = os.path.join(out_dir, "segmenter_eval.json")
  if os.path.exists(ev_path):
    ev = io.read_json(ev_path)
    parts.append(f"<p>Few-shot part segmenter on the generator's synthesis features, trained on "
                 f"{ev['n_labelled']} labelled images ({html.escape(str(ev['labels']))}) in "
                 f"{ev['train_seconds']:.0f} s. Held-out IoU on {ev['n_images']} images: "
                 f"<b>mean IoU {_fmt(ev['mean_iou'])}</b></p>")
    parts.append(report._table(["part", "IoU"], [[p, _fmt(v)] for p, v in ev["iou"].items()]))
  check_path = os.path.join(out_dir, "truth_check.json")
  if os.path.exists(check_path):
    ch = io.read_json(check_path)
    tm = ch.get("true_masks") or {"per_factor": {}}
    fpr = ch.get("false_positive_rate")
    parts.append(f"<h3>Check against the ground truth: precision@{ch['k']}</h3><p>For each factor of "
                 f"the built-in world, the top-{ch['k']} units found selective for the concept that "
                 f"shows it, against the {ch['k']} units whose sweeps truly move that factor most, "
                 f"measured with the segmenter's masks and with the world's true masks (which "
                 f"separates segmentation error from the measurement design). "
                 f"<b>Mean precision@{ch['k']}: {_fmt(ch['mean_precision'])}</b> (true masks "
                 f"{_fmt(tm.get('mean_precision'))}; chance {ch['chance']:.2f}); mean Spearman "
                 f"correlation over all units of measured and true change: "
                 f"{_fmt(ch.get('mean_spearman'))} (true masks {_fmt(tm.get('mean_spearman'))}). "
                 + (f"False-positive rate of 'selective' on sweeps along random directions: "
                    f"<b>{fpr:.3f}</b> (alpha {ch['alpha']}). " if fpr is not None else "")
                 + f"Concepts: {html.escape(str(ch.get('concepts', 'reference')))}.</p>")
    parts.append(report._table(
        ["factor", "concept", "units found", "units that move it", f"precision@{ch['k']}",
         "precision (true masks)", "Spearman", "Spearman (true masks)"],
        [[f, f"{v['part']} {v['metric']}", ", ".join(map(str, v["found"])) or "none",
          ", ".join(map(str, v["true_top"])), _fmt(v["precision"]),
          _fmt(tm["per_factor"].get(f, {}).get("precision")), _fmt(v.get("spearman"), 2),
          _fmt(tm["per_factor"].get(f, {}).get("spearman"), 2)]
         for f, v in ch["per_factor"].items()]))
  n_sel = sum(r["selective"] for r in rows)
  parts.append(f"<p>{n_sel} of {len(rows)} unit x concept pairs are selective (null p &lt; {c.alpha} "
               f"and the {int(c.level * 100)}% bootstrap interval excludes 0). Full table: "
               f"<code>quantify/selectivity.csv</code>.</p>")
  top = selectivity.top_units(rows, 3)
  parts.append(report._table(["part", "metric", "top selective units (mean change)"],
                             [[p, m, ", ".join(f"{r['unit']} ({r['mean']:+.3g})" for r in lst)]
                              for (p, m), lst in sorted(top.items())]))

  card_units = _card_units(rows, c.cards)
  if not card_units:
    return "\n".join(parts)
  G, _ = pipeline.load_models(config, workdir)
  seg = segment.load(os.path.join(out_dir, "segmenter"))
  where = {}
  for blk in sweeps.iter_blocks(workdir):
    for i, u in enumerate(blk["units"]):
      if int(u) in card_units:
        where[int(u)] = (blk["w"][i, 0], blk["values"][i])  # first start sample: [T, w_dim], [T]
  parts.append("<h3>Unit cards</h3>")
  for u in card_units:
    if u not in where:
      continue
    w, values = where[u]
    img = np.asarray(segment.resize_images(jnp.asarray(report.render(G, w, rc.batch_size)),
                                           seg.resolution))  # [T, R, R, 3] in [0, 1]
    lab = segment.predict_labels(seg, G, pipeline.broadcast_ws(jnp.asarray(w), G.num_ws))
    strip = np.concatenate([np.concatenate(list(img), 1), np.concatenate(list(overlay(img, lab)), 1)], 0)
    mine = sorted((r for r in rows if r["unit"] == u), key=lambda r: -abs(r["effect"])
                  if np.isfinite(r["effect"]) else 0.0)
    sel = [f"{r['part']} {r['metric']}" for r in mine if r["selective"]]
    cells = [[r["part"], r["metric"], f"{r['mean']:+.3g}", f"[{r['ci_low']:+.3g}, {r['ci_high']:+.3g}]",
              f"{r['effect']:+.2f}", _fmt(r["p_null"], 2), "yes" if r["selective"] else ""]
             for r in mine[:6]]
    parts.append(
        f'<div class="card"><h4>Unit {u}</h4><figure><img src="{report._png_uri(strip, rc.image_scale)}">'
        f"<figcaption>Sweep of unit {u} from {values[0]:.3g} to {values[-1]:.3g} (top) and its part "
        f"segmentation (bottom).</figcaption></figure>"
        f"<p>Selective for: {html.escape(', '.join(sel)) or 'nothing'}</p>"
        + report._table(["part", "metric", "mean change", f"{int(c.level * 100)}% interval", "effect",
                         "null p", "selective"], cells) + "</div>")
  return "\n".join(parts)
