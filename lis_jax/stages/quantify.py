"""Stage `quantify`: segment the sweep images into parts, measure them, rank the units.

For every sweep block (WORKSPACE.md, `sweep/`), the images at the first and last step of
each unit's sweep are regenerated from the stored w, segmented by the few-shot part
segmenter and measured (`metrics.part_metrics`); so are the end points of sweeps along
random directions of the same length (the null). The changes give, per unit and concept
(part x metric), a mean with a bootstrap interval, a null p-value and a rank
(`selectivity`). On a generator that knows its factors (the built-in world), the units
found selective for a concept are compared with the units that truly move the matching
factor (precision@k; the factor -> concept table is the world's `factor_concepts`, the
true factor changes are the sweep's `truth_delta`).

Random streams: `quantify.labelled` (labelled latents), `quantify.init` (the head's
initialisation), `quantify.null` (random directions, folded with unit and sample).
The measuring library is `lis_jax.quantify` (segment, metrics, selectivity).

Outputs (`workdir/quantify/`, all written atomically):
  config.json            the stage's fingerprint (recorded by the runner)
  segmenter/             the trained head (io.save_checkpoint; meta: layers, size, parts)
  segmenter_eval.json    held-out per-part IoU, mean IoU, training time
  block_<b:05d>.npz      per sweep block b: units [U], samples [S'] (paired-data rows),
                         first / last / null metrics (keys 'first.<metric>',
                         'last.<metric>' [U, S', P(, K)], 'null.<metric>' [U, S', R, P(, K)])
                         and, with ground truth, the sweep's truth_delta [U, F] and
                         truth_factors [F]; existence = block done
  manifest.json          blocks done, parts, null draws (informational; files are the truth)
  selectivity.csv        one row per unit x part x metric (selectivity.TABLE_COLUMNS)
  top_units.csv          the top `quantify.top_k` selective units per concept
  truth_check.json       built-in world only: precision@k per factor and its chance level
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import os
import time
from typing import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from lis_jax import batching
from lis_jax import blocks
from lis_jax import images
from lis_jax import io
from lis_jax import page
from lis_jax import pipeline
from lis_jax.generators.base import GroundTruthWorld
from lis_jax.quantify import metrics, segment, selectivity
from lis_jax.stages import sweep
from lis_jax.stages.base import Stage

NAME = "quantify"


def default_config() -> ml_collections.ConfigDict:
  """The quantify stage's settings, sized for the built-in world on a CPU (configs/linear.py
  sets the reference's)."""
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
  c.null_draws = 1  # random directions per (unit, start sample)
  c.max_components = 3  # ellipse slots per part (largest components)
  c.batch_size = 64  # images per segment-and-measure call
  c.n_boot = 1000  # bootstrap resamples
  c.level = 0.95  # bootstrap interval coverage
  c.alpha = 0.05  # null p-value threshold for 'selective'
  c.top_k = 5  # units listed per concept; also k of precision@k
  c.cards = 6  # unit cards in the report
  return c


# ----------------------------------------------------------------------------- segmenter


def _labelled(ctx, c, key):
  """(ws_train, labels_train, ws_test, labels_test, part_names) from the configured source."""
  G, workdir = ctx.G, ctx.workdir
  res = c.resolution or G.resolution
  if c.labels == "ground_truth":
    ws = segment.sample_ws(G, ctx.classes, c.n_labelled + c.n_heldout, ctx.config.psi, key)
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


def segmenter(ctx) -> segment.Segmenter:
  """The stage's segmenter: loaded if trained already, else trained, evaluated and saved."""
  c = ctx.cfg(NAME)
  out_dir = ctx.out_dir(NAME)
  ckpt = os.path.join(out_dir, "segmenter")
  if os.path.exists(os.path.join(ckpt, io.META_FILE)):
    return segment.load(ckpt)
  G = ctx.G
  ws_tr, y_tr, ws_te, y_te, names = _labelled(ctx, c, ctx.key("quantify.labelled"))
  t0 = time.time()
  seg = segment.fit(G, ws_tr, y_tr, names, layers=c.layers, size=c.head, key=ctx.key("quantify.init"),
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
                                             "max_components"))
def _measure(G, seg_params, w, *, layers, resolution, num_parts, head_size, max_components):
  """w [B, w_dim] -> part metrics of G's image (parts: the segmenter's, background dropped)."""
  ws = pipeline.broadcast_ws(w, G.num_ws)
  img = segment.resize_images(G.synthesis(ws), resolution)  # [B, R, R, 3]
  logits = segment.apply_head(seg_params, segment.feature_stack(G, ws, layers, resolution),
                              num_parts, head_size)
  masks = jax.nn.one_hot(jnp.argmax(logits, -1), num_parts)[..., 1:]  # [B, H, W, P - 1]
  return metrics.part_metrics(img, masks, max_components=max_components)


def measure(G, seg: segment.Segmenter, w: np.ndarray, batch_size: int, max_components: int) -> dict:
  """Part metrics of the images of w [N, w_dim], in fixed-size batches (one compile)."""
  fn = functools.partial(_measure, layers=seg.layers, resolution=seg.resolution,
                         num_parts=seg.num_parts, head_size=seg.size, max_components=max_components)
  return batching.map_batches(fn, np.asarray(w, np.float32), batch_size, G, seg.params)


def null_ends(w_first: np.ndarray, w_last: np.ndarray, units: np.ndarray, rows: np.ndarray,
              draws: int, key: jax.Array) -> np.ndarray:
  """End points of random-direction sweeps of the same length from the same starts.

  Args:
    w_first, w_last: [U, S, w_dim] the sweep's first and last w.
    units: [U] unit ids; rows: [S] paired-data rows (with `key`, they seed each direction,
      so a resumed run draws the same ones).
    draws: R directions per (unit, sample).
    key: the stream key `ctx.key("quantify.null")`.
  Returns:
    [U, S, R, w_dim]: w_first + |w_last - w_first| * d / |d|, d ~ N(0, I).
  """
  def one(u, r):
    k = jax.random.fold_in(jax.random.fold_in(key, u), r)
    d = jax.random.normal(k, (draws, w_first.shape[-1]))
    return d / jnp.linalg.norm(d, axis=-1, keepdims=True)

  d = jax.vmap(lambda u: jax.vmap(lambda r: one(u, r))(jnp.asarray(rows)))(jnp.asarray(units))
  length = np.linalg.norm(w_last - w_first, axis=-1)[..., None, None]  # [U, S, 1, 1]
  return w_first[:, :, None] + length * np.asarray(d)


def _quantify_block(c, G, seg, blk, key) -> dict:
  w = blk["w"]  # [U, S, T, w_dim]
  units = blk["units"]
  pick = sweep.pick_starts(blk["cls"], c.samples_per_unit)
  rows = blk["samples"][pick]
  w = w[:, pick]  # [U, S', T, w_dim]
  u_n, s_n, _, d = w.shape
  ends = w[:, :, [0, -1]]  # [U, S', 2, w_dim]
  nul = null_ends(ends[:, :, 0], ends[:, :, 1], units, rows, c.null_draws, key)  # [U, S', R, w_dim]
  allw = np.concatenate([ends.reshape(-1, d), nul.reshape(-1, d)])
  m = measure(G, seg, allw, c.batch_size, c.max_components)
  n_ends = u_n * s_n * 2
  out = {"units": units, "samples": rows}
  for k, v in m.items():
    out[f"first.{k}"] = v[:n_ends].reshape(u_n, s_n, 2, *v.shape[1:])[:, :, 0]
    out[f"last.{k}"] = v[:n_ends].reshape(u_n, s_n, 2, *v.shape[1:])[:, :, 1]
    out[f"null.{k}"] = v[n_ends:].reshape(u_n, s_n, c.null_draws, *v.shape[1:])
  if "truth_delta" in blk:  # the sweep's [U, F] mean change / factor range
    out["truth_delta"] = blk["truth_delta"]
    out["truth_factors"] = blk["truth_factors"]
  return out


def _metric_dict(blocks, prefix):
  keys = [k[len(prefix) + 1:] for k in blocks[0] if k.startswith(prefix + ".")]
  return {k: np.concatenate([b[f"{prefix}.{k}"] for b in blocks]) for k in keys}


def deltas_from_blocks(blocks: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(units [U], deltas [U, S', P, M], null deltas [U, S' * R, P, M]) over all blocks."""
  units = np.concatenate([b["units"] for b in blocks])
  first = selectivity.concept_values(_metric_dict(blocks, "first"))  # [U, S', P, M']
  last = selectivity.concept_values(_metric_dict(blocks, "last"))
  null = selectivity.concept_values(_metric_dict(blocks, "null"))  # [U, S', R, P, M']
  deltas = selectivity.sweep_changes(first, last)
  null_d = selectivity.sweep_changes(np.broadcast_to(first[:, :, None], null.shape).copy(), null)
  return units, deltas, null_d.reshape(null_d.shape[0], -1, *null_d.shape[3:])


def precision_at_k(stats_rows: list[dict], blocks: list[dict], k: int,
                   concepts: Mapping[str, tuple[str, str]]) -> dict | None:
  """Built-in world: does the measured concept find the units that move the true factor?

  Per factor of `concepts` (factor -> (part, metric); the world's `factor_concepts`): precision@k = |top-k selective units for its concept
  (by |mean change|) intersected with the top-k units by |true factor change|| / (number
  found, <= k); and the Spearman correlation over all units of |mean concept change| with
  |true factor change| (robust where many units move a factor about equally).
  """
  if "truth_delta" not in blocks[0]:
    return None
  units = np.concatenate([b["units"] for b in blocks])
  truth = np.concatenate([b["truth_delta"] for b in blocks])  # [U, F]
  names = [str(n) for n in blocks[0]["truth_factors"]]
  top = selectivity.top_units(stats_rows, k)
  k_eff = min(k, units.size)
  out = {}
  for factor, concept in concepts.items():
    if factor not in names:
      continue
    moved = units[np.argsort(-np.abs(truth[:, names.index(factor)]), kind="stable")[:k_eff]]
    found = [r["unit"] for r in top.get(concept, [])]
    hits = len(set(found) & set(moved.tolist()))
    change = {r["unit"]: abs(r["mean"]) for r in stats_rows
              if (r["part"], r["metric"]) == concept and "mean" in r}
    measured = np.array([change.get(int(u), np.nan) for u in units])
    out[factor] = {"part": concept[0], "metric": concept[1], "found": found,
                   "true_top": moved.tolist(),
                   "precision": hits / len(found) if found else None,
                   "spearman": rank_correlation(measured, np.abs(truth[:, names.index(factor)]))}
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


def run(ctx) -> None:
  """Quantifies every sweep block into `workdir/quantify/` (resumable)."""
  c = ctx.cfg(NAME)
  if c.samples_per_unit < 2 or c.null_draws < 1 or c.batch_size < 1 or c.n_labelled < 1:
    raise pipeline.PipelineError("quantify: samples_per_unit must be >= 2, null_draws, batch_size "
                                 "and n_labelled >= 1")
  out_dir = ctx.out_dir(NAME)
  sweep_blocks = list(ctx.result("sweep").blocks())
  G = ctx.G
  try:
    seg = segmenter(ctx)
  except segment.SegmentationError as e:
    raise pipeline.PipelineError(str(e)) from None
  key = ctx.key("quantify.null")
  store = blocks.BlockStore(out_dir)
  todo = store.todo(len(sweep_blocks))
  with tqdm(total=len(sweep_blocks), initial=len(sweep_blocks) - len(todo), unit="block",
            desc="quantify") as bar:
    for b in todo:
      out = _quantify_block(c, G, seg, sweep_blocks[b], key)
      pipeline.check_finite(f"quantify block {b} areas", out["first.area"])
      pipeline.maybe_interrupt(NAME, b + 1)
      store.write(b, **out)
      io.write_json(os.path.join(out_dir, "manifest.json"),
                    {"blocks_done": [d for d in range(len(sweep_blocks)) if store.done(d)],
                     "n_blocks": len(sweep_blocks), "parts": list(seg.part_names[1:]),
                     "null_draws": c.null_draws, "samples_per_unit": c.samples_per_unit})
      bar.update(1)
  summarise(ctx, seg)


def summarise(ctx, seg: segment.Segmenter) -> None:
  """selectivity.csv, top_units.csv and truth_check.json from all quantify blocks."""
  c = ctx.cfg(NAME)
  out_dir = ctx.out_dir(NAME)
  blks = [b for b in blocks.BlockStore(out_dir)]
  units, deltas, null_d = deltas_from_blocks(blks)
  stats = selectivity.unit_statistics(deltas, null_d, seed=int(ctx.config.seed), n_boot=c.n_boot,
                                      level=c.level, alpha=c.alpha)
  parts = seg.part_names[1:]
  rows = selectivity.table_rows(stats, units, parts)
  selectivity.write_csv(os.path.join(out_dir, "selectivity.csv"), rows, selectivity.TABLE_COLUMNS)
  top = selectivity.top_units(rows, c.top_k)
  selectivity.write_csv(os.path.join(out_dir, "top_units.csv"),
                        [r for concept in sorted(top) for r in top[concept]], selectivity.TABLE_COLUMNS)
  if isinstance(ctx.G, GroundTruthWorld):
    check = precision_at_k(rows, blks, c.top_k, ctx.G.factor_concepts)
    if check is not None:
      io.write_json(os.path.join(out_dir, "truth_check.json"), check)
      mp, rho = check["mean_precision"], check["mean_spearman"]
      print(f"[quantify] vs ground truth: precision@{check['k']} {'n/a' if mp is None else f'{mp:.2f}'} "
            f"(chance {check['chance']:.2f}), Spearman {'n/a' if rho is None else f'{rho:.2f}'}", flush=True)


@dataclasses.dataclass(frozen=True)
class QuantifyResult:
  """rows: selectivity.csv, typed (selectivity.TABLE_COLUMNS); segmenter_eval: held-out
  IoU (segmenter_eval.json); truth_check: precision@k against the truth (None off a
  GroundTruthWorld); `blocks()`: the per-block measurements; `segmenter()`: the head."""
  directory: str
  rows: list
  segmenter_eval: dict | None
  truth_check: dict | None

  def blocks(self) -> list[dict]:
    return [b for b in blocks.BlockStore(self.directory)]

  def segmenter(self) -> segment.Segmenter:
    return segment.load(os.path.join(self.directory, "segmenter"))


def _typed(r: dict) -> dict:
  return {**r, "unit": int(r["unit"]), "effect": float(r["effect"]), "mean": float(r["mean"]),
          "ci_low": float(r["ci_low"]), "ci_high": float(r["ci_high"]),
          "p_null": float(r["p_null"]), "rank": int(r["rank"]), "selective": r["selective"] == "True"}


def load(workdir: str) -> QuantifyResult:
  out_dir = os.path.join(workdir, NAME)
  with open(pipeline.require(os.path.join(out_dir, "selectivity.csv"), NAME)) as f:
    rows = [_typed(r) for r in csv.DictReader(f)]
  opt = lambda name: (io.read_json(os.path.join(out_dir, name))
                      if os.path.exists(os.path.join(out_dir, name)) else None)
  return QuantifyResult(directory=out_dir, rows=rows, segmenter_eval=opt("segmenter_eval.json"),
                        truth_check=opt("truth_check.json"))


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


def _card_units(rows: list[dict], n: int) -> list[int]:
  """Units with the most selective concepts (ties: the largest |effect|)."""
  score: dict[int, list] = {}
  for r in rows:
    s = score.setdefault(r["unit"], [0, 0.0])
    if r["selective"]:
      s[0] += 1
      s[1] = max(s[1], abs(r["effect"]) if np.isfinite(r["effect"]) else 0.0)
  return [u for u, _ in sorted(score.items(), key=lambda kv: (-kv[1][0], -kv[1][1]))[:n]]


def section(ctx) -> str | None:
  """HTML: segmenter IoU, precision@k on the built-in world, top units, one card per unit."""
  if not os.path.exists(os.path.join(ctx.out_dir(NAME), "selectivity.csv")):
    return None
  res = ctx.result(NAME)
  c = ctx.cfg(NAME)
  rows = res.rows
  fmt = page.fmt
  parts = ["<h2>What the units encode: parts and their measures</h2>"]
  ev = res.segmenter_eval
  if ev:
    parts.append(f"<p>Few-shot part segmenter on the generator's synthesis features, trained on "
                 f"{ev['n_labelled']} labelled images ({page.escape(str(ev['labels']))}) in "
                 f"{ev['train_seconds']:.0f} s. Held-out IoU on {ev['n_images']} images: "
                 f"<b>mean IoU {fmt(ev['mean_iou'])}</b></p>")
    parts.append(page.table(["part", "IoU"], [[p, fmt(v)] for p, v in ev["iou"].items()]))
  ch = res.truth_check
  if ch:
    parts.append(f"<h3>Check against the ground truth: precision@{ch['k']}</h3><p>For each factor of "
                 f"the built-in world, the top-{ch['k']} units found selective for the concept that "
                 f"shows it, against the {ch['k']} units whose sweeps truly move that factor most. "
                 f"<b>Mean precision@{ch['k']}: {fmt(ch['mean_precision'])}</b> (chance "
                 f"{ch['chance']:.2f}); mean Spearman correlation over all units of measured and "
                 f"true change: {fmt(ch.get('mean_spearman'))}.</p>")
    parts.append(page.table(
        ["factor", "concept", "units found", "units that move it", f"precision@{ch['k']}", "Spearman"],
        [[f, f"{v['part']} {v['metric']}", ", ".join(map(str, v["found"])) or "none",
          ", ".join(map(str, v["true_top"])), fmt(v["precision"]), fmt(v.get("spearman"), 2)]
         for f, v in ch["per_factor"].items()]))
  n_sel = sum(r["selective"] for r in rows)
  parts.append(f"<p>{n_sel} of {len(rows)} unit x concept pairs are selective (null p &lt; {c.alpha} "
               f"and the {int(c.level * 100)}% bootstrap interval excludes 0). Full table: "
               f"<code>quantify/selectivity.csv</code>.</p>")
  top = selectivity.top_units(rows, 3)
  parts.append(page.table(["part", "metric", "top selective units (mean change)"],
                          [[p, m, ", ".join(f"{r['unit']} ({r['mean']:+.3g})" for r in lst)]
                           for (p, m), lst in sorted(top.items())]))
  card_units = _card_units(rows, c.cards)
  if card_units:
    parts.append("<h3>Unit cards</h3>")
    parts += _cards(ctx, res, card_units)
  return "\n".join(parts)


def _cards(ctx, res: QuantifyResult, card_units: list[int]) -> list[str]:
  """One card per unit: its sweep from the first start sample with the part overlay."""
  c = ctx.cfg(NAME)
  scale, batch = ctx.cfg("report").image_scale, ctx.cfg("report").batch_size
  G = ctx.G
  seg = res.segmenter()
  where = {}
  for blk in ctx.result("sweep").blocks():
    for i, u in enumerate(blk["units"]):
      if int(u) in card_units:
        where[int(u)] = (blk["w"][i, 0], blk["values"][i])  # first start sample: [T, w_dim], [T]
  out = []
  for u in card_units:
    if u not in where:
      continue
    w, values = where[u]
    img = images.render(G, w, batch).astype(np.float32) / 255   # [T, H, W, 3] in [0, 1]
    img = np.asarray(segment.resize_images(jnp.asarray(img), seg.resolution))
    lab = segment.predict_labels(seg, G, pipeline.broadcast_ws(jnp.asarray(w), G.num_ws))
    strip = images.unit_to_uint8(np.concatenate([images.row(img), images.row(overlay(img, lab))], 0))
    mine = sorted((r for r in res.rows if r["unit"] == u), key=lambda r: -abs(r["effect"])
                  if np.isfinite(r["effect"]) else 0.0)
    sel = [f"{r['part']} {r['metric']}" for r in mine if r["selective"]]
    cells = [[r["part"], r["metric"], f"{r['mean']:+.3g}", f"[{r['ci_low']:+.3g}, {r['ci_high']:+.3g}]",
              f"{r['effect']:+.2f}", page.fmt(r["p_null"], 2), "yes" if r["selective"] else ""]
             for r in mine[:6]]
    out.append(
        f'<div class="card"><h4>Unit {u}</h4><figure>{page.img(strip, scale)}'
        f"<figcaption>Sweep of unit {u} from {values[0]:.3g} to {values[-1]:.3g} (top) and its part "
        f"segmentation (bottom).</figcaption></figure>"
        f"<p>Selective for: {page.escape(', '.join(sel)) or 'nothing'}</p>"
        + page.table(["part", "metric", "mean change", f"{int(c.level * 100)}% interval", "effect",
                      "null p", "selective"], cells) + "</div>")
  return out


def summary(ctx) -> dict | None:
  """Segmenter mean IoU and the ground-truth check's headline numbers."""
  if not os.path.exists(os.path.join(ctx.out_dir(NAME), "selectivity.csv")):
    return None
  res = ctx.result(NAME)
  out = {"n_selective": int(sum(r["selective"] for r in res.rows)), "n_rows": len(res.rows)}
  if res.segmenter_eval:
    out["mean_iou"] = res.segmenter_eval["mean_iou"]
  if res.truth_check:
    out.update(precision_at_k=res.truth_check["mean_precision"], k=res.truth_check["k"],
               chance=res.truth_check["chance"], spearman=res.truth_check["mean_spearman"])
  return out


STAGE = Stage(name=NAME, requires=("sweep",), default_config=default_config, run=run, load=load,
              uses=("classes", "psi", "seed"), section=section, summary=summary,
              ignores=("batch_size", "cards"))
