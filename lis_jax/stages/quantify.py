"""Stage `quantify`: segment the sweep images into parts, measure them, rank the units.

For every sweep block (WORKSPACE.md, `sweep/`), the images at the first and last step of
each unit's sweep are regenerated from the stored w, segmented by the few-shot part
segmenter and measured (`metrics.part_metrics`); so are the end points of sweeps along
random directions with the units' geometry (the null: `null_space` 'r', random r-space
directions with the units' swept ranges through the link; 'w', isotropic in w). The
changes give, per unit and concept (part x metric), a mean with a bootstrap interval, a
null p-value, a Benjamini-Hochberg q-value over the unit x concept table and a rank
(`selectivity`); 'selective' is q <= `q_level`; a second call, 'changes', tests whether the
change exceeds `min_effect` x the null's RMS change (a one-sided t-test across the start
samples, BH over the same table). On a generator that knows its factors (the built-in world), the
top-ranked units whose change of a concept is called ('changes') are compared with the units that truly move the matching
factor (precision@k; the factor -> concept table is the world's `factor_concepts`, the
true factor changes are those over the start samples quantify measured,
`measuring.measured_truth`, as benchmarks/calibration.py scores them).

Random streams: `quantify.labelled` (labelled latents), `quantify.init` (the head's
initialisation), `quantify.null` (the null's random directions and lengths).
The measuring library is `lis_jax.quantify` (segment, metrics, selectivity).

Outputs (`workdir/quantify/`, all written atomically):
  config.json            the stage's fingerprint (recorded by the runner)
  segmenter/             the trained head (io.save_checkpoint; meta: layers, size, parts);
                         written after segmenter_eval.json, verified when reused
  segmenter_eval.json    held-out per-part IoU, mean IoU, training time
  null.npz               the null shared by all units: 'start.<metric>' [S', P', ...],
                         'end.<metric>' [R, S', P', ...], length [R] (WORKSPACE.md)
  block_<b:05d>.npz      per sweep block b: units [U], samples [S'] (paired-data rows),
                         length [U], first / last metrics ('first.<metric>',
                         'last.<metric>' [U, S', P'(, K)]; 'first.true.<metric>' ... from
                         the world's true masks) and, with ground truth, the sweep's
                         truth_delta [U, F] and truth_factors [F]; existence = block done; checksummed
  manifest.json          n_blocks (every block must be there to summarise), parts, null draws
  selectivity.csv        one row per unit x part x metric (selectivity.UNIT_TABLE_COLUMNS: p_null,
                         q_null, selective (beyond random directions); p_change, q_change,
                         changes (the change exceeds min_effect x the null's RMS))
  calls.json             selective count, tests, the same calls on the null directions
                         (leave one out) and their p <= alpha rate, null space and draws;
                         n_changes and min_effect (the second call)
  top_units.csv          the top `quantify.top_k` selective units per concept
  truth_check.json       built-in world only: precision@k (of the top-ranked units whose
                         change is called, 'changes', against the true change over the
                         measured start samples) and Spearman per factor, with the
                         segmenter's and the true masks, chance level, false-positive rate,
                         and the calls' false-discovery rate and power (analysis.truth)
"""
from __future__ import annotations

import csv
import dataclasses
import html
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lis_jax import blocks
from lis_jax import images
from lis_jax import io
from lis_jax import page
from lis_jax import errors, generators
from lis_jax.generators.base import GroundTruthWorld
from lis_jax import sweeps
from lis_jax.analysis import nulls, truth as truth_lib
from lis_jax.quantify import segment, selectivity
from lis_jax.quantify.measuring import (deltas_from_blocks, measure, measured_parts, measured_truth,  # noqa: F401
                                       null_ws, rank_correlation, statistics_options, truth_check, uses_entropy)
from lis_jax import validate as V
from lis_jax.stages.base import Stage

NAME = "quantify"


def default_config() -> ml_collections.ConfigDict:
  """The quantify stage's settings: the reference's (the paper's) segmenter and measures."""
  c = ml_collections.ConfigDict()
  c.labels = "seg_labels/dogs"  # labelled-mask dir in the workdir (made by python -m lis_jax.label
  #   export / import; segment.py docstring) or 'ground_truth' (the built-in world's own masks)
  c.n_labelled = 20  # labelled images the head is trained on (the reference: 10-30)
  c.n_heldout = 0  # held-out images for the IoU: ground-truth worlds only (a label dir holds out what is left)
  c.resolution = 128  # side of the segmented, measured images; 0: G's own
  c.layers = "every_other"  # synthesis-feature layers: 'all', 'every_other' (the reference) or names
  c.head = "S"  # head size: XXS, XS, S (the reference's FewShotCNN), M, L
  c.epochs = 100  # passes over the labelled images (reference training: Adam, one image per step)
  c.train_batch = 1  # images per step (1: the reference)
  c.lr = 1e-3  # Adam learning rate
  c.weight_decay = 1e-3  # L2 added to the gradient (torch Adam's weight_decay)
  c.lr_step_epochs = 50  # lr x lr_gamma every this many epochs (torch StepLR)
  c.lr_gamma = 0.1
  c.samples_per_unit = 10  # start samples per unit measured (of the sweep's), spread over classes
  c.null_draws = 200  # random directions of the null, each applied to every start sample, shared by all units
  c.null_space = "r"  # 'r': directions in r-space with the units' swept ranges, through the link (analysis.nulls); 'w': isotropic in w (the earlier null)
  c.q_level = 0.1  # 'selective': Benjamini-Hochberg q <= q_level over the unit x concept table (FDR control)
  c.min_effect = 0.5  # 'changes': mean change > min_effect x the null's RMS change (one-sided t over start samples, BH at q_level)
  c.concepts = "reference"  # metrics per concept: 'reference' (the paper's) or 'calibrated' (README)
  c.rank_by = "mean"  # units ranked by |average change| ('mean', the reference's) or 'effect' (vs the null)
  c.average = "mean"  # average of a unit's changes over its start samples: 'mean' (the reference), 'median' or 'hl' (Hodges-Lehmann)
  c.null_per_length = False  # True: compare changes per unit of sweep length with the null's
  c.per_start_scale = False  # True: each start sample's change over the null's RMS change there (selectivity.start_scaled)
  c.max_components = 3  # ellipse slots per part (largest components)
  c.batch_size = 32  # images per segment-and-measure call
  c.n_boot = 1000  # bootstrap resamples
  c.level = 0.95  # bootstrap interval coverage
  c.alpha = 0.05  # null p-value threshold for 'selective'
  c.top_k = 10  # units listed per concept; also k of precision@k
  c.cards = 8  # unit cards in the report
  return c


# Values a run accepts (lis_jax/validate.py's rule kinds), checked before anything runs.
RULES = {
    "n_labelled": V.pos_int(), "n_heldout": V.nonneg_int(), "resolution": V.nonneg_int(),
    "epochs": V.pos_int(), "train_batch": V.pos_int(), "lr": V.pos_float(),
    "weight_decay": V.nonneg_float(), "lr_step_epochs": V.pos_int(), "lr_gamma": V.pos_float(),
    "samples_per_unit": V.int_at_least(2), "null_draws": V.int_at_least(2),
    "max_components": V.pos_int(), "batch_size": V.pos_int(), "n_boot": V.pos_int(),
    "level": V.unit_open(), "alpha": V.unit_open(), "q_level": V.unit_open(), "min_effect": V.nonneg_float(),
    "null_space": V.choice("r", "w"), "top_k": V.pos_int(), "cards": V.nonneg_int(),
    "rank_by": V.choice("mean", "effect"), "average": V.choice(*selectivity.AVERAGES),
    "concepts": V.choice(*selectivity.CONCEPT_SETS),
    "head": V.choice(*segment.HEAD_DILATIONS),
}


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
  from lis_jax.label import layout  # Local: the labelling tools are only needed here.
  d = layout.label_dir(c.labels, workdir)
  if not d.labelled_names():
    raise segment.SegmentationError(layout.missing_labels_message(d, c.labels, workdir))
  w, labels, names = segment.load_label_dir(d.root)
  world = tuple(getattr(G, "part_names", ()) or ())
  if isinstance(G, GroundTruthWorld) and tuple(names) != world:
    raise segment.SegmentationError(
        f"{d.part_names_file}: parts {list(names)} differ from the world's {list(world)}; the "
        f"checks against the world's truth (quantify, boundary) need its parts: label them, or "
        f"use quantify.labels='ground_truth'")
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
  labels_sha = _labels_sha256(ctx, c)
  if _segmenter_done(out_dir, ckpt):
    trained_on = io.read_json(os.path.join(out_dir, "segmenter_eval.json")).get("labels_sha256")
    if trained_on == labels_sha or (trained_on is None and labels_sha is None):
      return segment.load(ckpt)
    print(f"[{NAME}] the labels in {c.labels} changed since the segmenter was trained (content "
          f"sha256 {str(trained_on)[:12]} -> {str(labels_sha)[:12]}); training it again and "
          f"measuring every block again", flush=True)
    _forget_measurements(out_dir)
  early = ctx.early_result(NAME)   # trained while the earlier stages ran (`early`), or None
  if early is not None and early[1]["labels_sha256"] == labels_sha:
    seg, ev = early
  else:
    seg, ev = _train_segmenter(ctx, c, labels_sha)
  io.write_json(os.path.join(out_dir, "segmenter_eval.json"), ev)
  seg.save(ckpt)   # last: the checkpoint existing means its evaluation is recorded too
  miou = ev["mean_iou"]
  ahead = " (trained while the earlier stages ran)" if early is not None else ""
  print(f"[quantify] segmenter: {ev['n_labelled']} labelled images, {ev['train_seconds']:.0f} s"
        f"{ahead}, held-out mean IoU {'n/a' if miou is None else f'{miou:.3f}'}", flush=True)
  return seg


def _train_segmenter(ctx, c, labels_sha: str | None, stop=None) -> tuple[segment.Segmenter, dict]:
  """The segmenter trained on the labelled images and its held-out evaluation; writes
  nothing (`segmenter` saves them). stop: as `segment.train`'s."""
  G = ctx.G
  ws_tr, y_tr, ws_te, y_te, names = _labelled(ctx, c, ctx.key("quantify.labelled"))
  t0 = time.time()
  seg = segment.fit(G, ws_tr, y_tr, names, layers=c.layers, size=c.head, key=ctx.key("quantify.init"),
                    epochs=c.epochs, batch_size=c.train_batch, lr=c.lr, weight_decay=c.weight_decay,
                    lr_step_epochs=c.lr_step_epochs, lr_gamma=c.lr_gamma, stop=stop)
  train_s = time.time() - t0
  ev = segment.evaluate(seg, G, ws_te, y_te) if y_te.shape[0] else {"iou": {}, "mean_iou": None,
                                                                     "n_images": 0}
  ev.update(train_seconds=train_s, n_labelled=int(y_tr.shape[0]), labels=c.labels,
            labels_sha256=labels_sha)
  return seg, ev


# Early training only where its memory is a small share of the budget: the other stages'
# calls are sized to memory.SAFETY (80%) of it without knowing of this thread.
EARLY_SHARE = 0.05


def early_bytes(G, c) -> int:
  """What training the segmenter holds (bytes, float32): the labelled images' feature layers
  (each at its own resolution) and, per step, the upsampled stack of `train_batch` images
  at the segmented resolution, 4x over (the stack, the head's activations, their gradients)."""
  shapes = segment.feature_shapes(G, c.layers)
  per_image = sum(int(np.prod(s)) for s in shapes.values())
  channels = sum(s[-1] for s in shapes.values())
  res = c.resolution or G.resolution
  return 4 * (c.n_labelled * per_image + 4 * c.train_batch * res * res * channels)


def early(ctx) -> tuple[segment.Segmenter, dict] | None:
  """The stage's early work (`Stage.early`): the segmenter, trained from the models and the
  labelled images alone while the sweep and the stages before it run; None when a trained
  one is on disk already (`segmenter` checks and loads it) or when training needs more
  than EARLY_SHARE of the memory budget (`early_bytes`: the stage trains it then)."""
  c = ctx.cfg(NAME)
  if os.path.exists(os.path.join(ctx.out_dir(NAME), "segmenter", io.META_FILE)):
    return None
  if early_bytes(ctx.G, c) > EARLY_SHARE * ctx.budget.bytes:
    return None
  return _train_segmenter(ctx, c, _labels_sha256(ctx, c), stop=ctx.stopping)


def _labels_sha256(ctx, c) -> str | None:
  """The content of a labelling directory (`LabelDir.content_sha256`); None for the world's
  own masks (their content follows from the fingerprinted config)."""
  if c.labels == "ground_truth":
    return None
  from lis_jax.label import layout  # Local: the labelling tools are only needed here.
  return layout.label_dir(c.labels, ctx.workdir).content_sha256()


def _forget_measurements(out_dir: str) -> None:
  """Removes what the previous segmenter measured (blocks, null, tables), keeping config.json."""
  import shutil
  for name in os.listdir(out_dir):
    if name == "config.json":
      continue
    path = os.path.join(out_dir, name)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def _segmenter_done(out_dir: str, ckpt: str) -> bool:
  """The segmenter checkpoint passes its checksum and its evaluation is recorded."""
  if not os.path.exists(os.path.join(ckpt, io.META_FILE)):
    return False
  try:
    io.read_json_checked(os.path.join(out_dir, "segmenter_eval.json"))
    io.load_checkpoint(ckpt, verify=True)
    return True
  except (io.CorruptFileError, io.CheckpointError) as e:
    print(f"[{NAME}] {' '.join(str(e).split())[:300]}; training the segmenter again", flush=True)
    return False


# ----------------------------------------------------------------------------- measuring


def _quantify_block(c, G, seg, blk) -> dict:
  w = blk["w"]  # [U, S, T, w_dim]
  pick = sweeps.pick_starts(blk["cls"], c.samples_per_unit)
  w = w[:, pick]  # [U, S', T, w_dim]
  u_n, s_n, _, d = w.shape
  ends = w[:, :, [0, -1]].reshape(-1, d)  # [U * S' * 2, w_dim]
  m = measure(G, seg, ends, c.batch_size, c.max_components, uses_entropy(c), _has_truth(G))
  out = {"units": blk["units"], "samples": blk["samples"][pick],
         "length": np.linalg.norm(w[:, 0, -1] - w[:, 0, 0], axis=-1)}  # [U]
  for k, v in m.items():
    v = v.reshape(u_n, s_n, 2, *v.shape[1:])
    out[f"first.{k}"], out[f"last.{k}"] = v[:, :, 0], v[:, :, 1]
  if "truth_delta" in blk:  # the sweep's [U, F] mean change / factor range
    out["truth_delta"] = blk["truth_delta"]
    out["truth_factors"] = blk["truth_factors"]
  return out


def _has_truth(G) -> bool:
  return isinstance(G, GroundTruthWorld)


def _quantify_null(c, G, seg, sweep_blocks: list[dict], key: jax.Array, r_start: np.ndarray,
                   link) -> dict:
  """The null shared by all units: R random-direction end points from each start sample.

  null_space 'r' (analysis.nulls.rspace_ends): from each start sample's own r [S, D]
  (`r_start`, the sweep's), R random r-space directions with lengths drawn from the
  units' swept ranges, through `link`: a null sweep differs from a unit's only in its
  direction. 'w' (the earlier null): a start sample's null sweeps start at the centre of
  its unit sweeps (the mean of its sweep w over all units and steps) and go along random
  directions in w with lengths drawn from the units' w-space sweep lengths.
  """
  pick = sweeps.pick_starts(sweep_blocks[0]["cls"], c.samples_per_unit)
  if c.null_space == "r":
    ranges = np.concatenate([np.abs(b["values"][:, -1] - b["values"][:, 0]) for b in sweep_blocks])
    w_start, ends, null_len = nulls.rspace_ends(link, r_start[pick], ranges, c.null_draws, key)
  else:
    w_start = np.mean([b["w"][:, pick].mean((0, 2)) for b in sweep_blocks], axis=0)  # [S', w_dim]
    w_start = w_start.astype(np.float32)
    lengths = np.concatenate([np.linalg.norm(b["w"][:, 0, -1] - b["w"][:, 0, 0], axis=-1)
                              for b in sweep_blocks])
    ends, null_len = nulls.isotropic_w_ends(w_start, lengths, c.null_draws, key)
  s_n, d = w_start.shape
  m = measure(G, seg, np.concatenate([w_start, ends.reshape(-1, d)]), c.batch_size, c.max_components,
              uses_entropy(c), _has_truth(G))
  out = {"samples": sweep_blocks[0]["samples"][pick], "length": null_len}
  for k, v in m.items():
    out[f"start.{k}"] = v[:s_n]
    out[f"end.{k}"] = v[s_n:].reshape(c.null_draws, s_n, *v.shape[1:])
  return out


# ----------------------------------------------------------------------------- stage


def _null_path(out_dir: str) -> str:
  return os.path.join(out_dir, "null.npz")


def load_null(out_dir: str) -> dict:
  """The null's outputs (null.npz) as a dict of arrays."""
  return io.load_npz(_null_path(out_dir), finite=False)


def run(ctx) -> None:
  """Quantifies every sweep block into `workdir/quantify/` (resumable)."""
  c = ctx.cfg(NAME)
  out_dir = ctx.out_dir(NAME)
  sweep_blocks = list(ctx.result("sweep").blocks())
  G = ctx.G
  try:
    if ctx.is_main:   # trained once, by process 0; the others load it after the barrier
      seg = segmenter(ctx)
    ctx.barrier("quantify:segmenter")
    if not ctx.is_main:
      seg = segmenter(ctx)
  except segment.SegmentationError as e:
    raise errors.PipelineError(str(e)) from None
  if not io.npz_ok(_null_path(out_dir), finite=False):   # absent, or damaged: (re)computed
    r_space = c.null_space == "r"   # the link and the start samples' r are only needed there
    io.save_npz(_null_path(out_dir), **_quantify_null(
        c, G, seg, sweep_blocks, ctx.key("quantify.null"), ctx.result("sweep").r_start if r_space else None,
        ctx.result("link").link if r_space else None))
  store = _store(out_dir)
  mine = ctx.my_items(len(sweep_blocks))   # this process's sweep blocks
  todo = store.todo(len(sweep_blocks), items=mine)
  with ctx.progress(total=mine.size, initial=mine.size - len(todo), unit="block",
                    desc="quantify") as bar:
    for b in todo:
      out = _quantify_block(c, G, seg, sweep_blocks[b])
      errors.check_finite(f"quantify block {b} areas", out["first.area"])
      errors.maybe_interrupt(NAME, b + 1)
      store.write(b, **out)
      bar.update(1)


def merge(ctx) -> None:
  """Process 0, after every process measured its blocks: manifest.json and the tables."""
  c = ctx.cfg(NAME)
  seg = segmenter(ctx)
  n_blocks = ctx.result("sweep").n_blocks
  manifest = {"blocks_done": list(range(n_blocks)), "n_blocks": n_blocks,
              "parts": measured_parts(seg), "null_draws": c.null_draws,
              "samples_per_unit": c.samples_per_unit}
  path = os.path.join(ctx.out_dir(NAME), "manifest.json")
  io.write_json(path, manifest)
  summarise(ctx, seg)
  # The table's checksum: a reader downstream (boundary, population) refuses a cut or
  # edited selectivity.csv and the runner recomputes it.
  manifest["selectivity_sha256"] = io.sha256_file(os.path.join(ctx.out_dir(NAME), "selectivity.csv"))
  io.write_json(path, manifest)


def _statistics(c, deltas, lengths, null_d, null_len, seed: int, intervals: bool = True) -> dict:
  return selectivity.shared_null_statistics(deltas, lengths, null_d, null_len, seed=seed, n_boot=c.n_boot,
                                            q_level=c.q_level, min_effect=c.min_effect, intervals=intervals,
                                            **statistics_options(c))


def _store(directory: str) -> blocks.BlockStore:
  """Quantify's blocks: metrics may be NaN (a part absent from an image), so only the
  checksums are verified on read."""
  return blocks.BlockStore(directory, finite=False)


def summarise(ctx, seg: segment.Segmenter) -> None:
  """selectivity.csv, top_units.csv and truth_check.json from all quantify blocks and the null."""
  c = ctx.cfg(NAME)
  out_dir = ctx.out_dir(NAME)
  seed = ctx.seed(f"{NAME}.statistics")   # bootstrap and permutations (segmenter and true masks alike)
  blks, null = list(_store(out_dir).blocks(ctx.result("sweep").n_blocks)), load_null(out_dir)
  sources = selectivity.concept_sources(c.concepts)
  parts = measured_parts(seg)
  units, deltas, lengths, null_d, null_len = deltas_from_blocks(blks, null, sources)
  stats = _statistics(c, deltas, lengths, null_d, null_len, seed)
  rows = selectivity.table_rows(stats, units, parts)
  selectivity.write_csv(os.path.join(out_dir, "selectivity.csv"), rows, selectivity.UNIT_TABLE_COLUMNS)
  top = selectivity.top_units(rows, c.top_k)
  selectivity.write_csv(os.path.join(out_dir, "top_units.csv"),
                        [r for concept in sorted(top) for r in top[concept]], selectivity.UNIT_TABLE_COLUMNS)
  nc = selectivity.null_calls(null_d, null_len, seed=seed, alpha=c.alpha, q_level=c.q_level,
                              average=c.average, per_length=c.null_per_length, per_start_scale=c.per_start_scale)
  fpr = nc["fpr"]
  calls_summary = {"n_selective": int(np.sum(stats["selective"])), "n_changes": int(np.sum(stats["changes"])),
                   "min_effect": c.min_effect,
                   "n_tests": int(np.sum(np.isfinite(stats["p_null"]))),
                   "n_selective_null": int(np.sum(nc["selective"])), "null_draws": int(null_d.shape[0]),
                   "null_space": c.null_space, "q_level": c.q_level, "alpha": c.alpha,
                   "false_positive_rate": fpr}
  io.write_json(os.path.join(out_dir, "calls.json"), calls_summary)
  print(f"[quantify] selective (BH q <= {c.q_level} over {calls_summary['n_tests']} unit x concept "
        f"tests): {calls_summary['n_selective']} units x concepts; on the {null_d.shape[0]} null "
        f"directions ({c.null_space}-space): {calls_summary['n_selective_null']}; p <= {c.alpha} on "
        f"the null: {fpr:.3f}; changes by more than {c.min_effect} x the null's RMS (BH q <= {c.q_level}): "
        f"{calls_summary['n_changes']}", flush=True)
  if not isinstance(ctx.G, GroundTruthWorld) or "truth_delta" not in blks[0]:
    return
  # The truth of what was measured: the units' true changes over the start samples quantify
  # measured (the sweep's truth_delta averages all of them), as benchmarks/calibration.py scores.
  per_start, names = measured_truth(ctx.G, ctx.result("sweep").blocks(), c.samples_per_unit)
  truth = per_start.mean(1)  # [U, F]
  concepts = ctx.G.factor_concepts
  # precision@k lists the top-ranked units whose change is called ('changes'): on the built-in
  # world no unit stands out from random directions ('selective' calls nothing; README).
  found_by = lambda st: {**st, "selective": st["changes"]}
  check = truth_check(found_by(stats), units, parts, truth, names, c.top_k, concepts, score=c.rank_by)
  _, t_deltas, t_len, t_null, t_null_len = deltas_from_blocks(blks, null, sources, "true")
  t_stats = _statistics(c, t_deltas, t_len, t_null, t_null_len, seed, intervals=False)  # calls and ranks only
  check["true_masks"] = truth_check(found_by(t_stats), units, parts, truth, names, c.top_k, concepts,
                                    score=c.rank_by)
  status = truth_lib.labels(truth, names, concepts, parts, list(selectivity.CONCEPT_METRICS))
  check["calls_vs_truth"] = {**truth_lib.rates(stats["selective"], status),
                             "null_below": truth_lib.NULL_BELOW, "selective_above": truth_lib.SELECTIVE_ABOVE,
                             "uncorrected": truth_lib.rates(stats["p_null"] <= c.alpha, status),
                             "changes": truth_lib.rates(stats["changes"], status), "min_effect": c.min_effect}
  check.update(false_positive_rate=fpr, alpha=c.alpha, concepts=c.concepts, rank_by=c.rank_by,
               average=c.average, null_per_length=c.null_per_length, per_start_scale=c.per_start_scale,
               q_level=c.q_level,
               null_space=c.null_space, samples_per_unit=c.samples_per_unit, null_draws=c.null_draws,
               truth="true factor change over the measured start samples (measuring.measured_truth)")
  io.write_json(os.path.join(out_dir, "truth_check.json"), check)
  f = lambda x: "n/a" if x is None else f"{x:.2f}"
  tm = check["true_masks"]
  print(f"[quantify] vs ground truth: precision@{check['k']} {f(check['mean_precision'])} "
        f"(true masks {f(tm['mean_precision'])}; chance {check['chance']:.2f}), Spearman "
        f"{f(check['mean_spearman'])} (true masks {f(tm['mean_spearman'])}); false-positive rate "
        f"on random directions {fpr:.3f} (alpha {c.alpha})", flush=True)


@dataclasses.dataclass(frozen=True)
class QuantifyResult:
  """rows: selectivity.csv, typed (selectivity.TABLE_COLUMNS); segmenter_eval: held-out
  IoU (segmenter_eval.json); truth_check: precision@k against the truth (None off a
  GroundTruthWorld); `blocks()`: the per-block measurements; `segmenter()`: the head."""
  directory: str
  rows: list
  segmenter_eval: dict | None
  truth_check: dict | None
  n_blocks: int

  def blocks(self) -> list[dict]:
    """Every block, verified (io.CorruptFileError if one is missing or corrupt)."""
    return list(_store(self.directory).blocks(self.n_blocks))

  def segmenter(self) -> segment.Segmenter:
    """The trained part segmenter (other stages measure with it)."""
    return segment.load(os.path.join(self.directory, "segmenter"))

  def null(self) -> dict:
    """The random-direction null shared by all units (null.npz; `load_null`)."""
    return load_null(self.directory)


def _typed(r: dict) -> dict:
  return {**r, "unit": int(r["unit"]), "effect": float(r["effect"]), "mean": float(r["mean"]),
          "ci_low": float(r["ci_low"]), "ci_high": float(r["ci_high"]),
          "p_null": float(r["p_null"]), "q_null": float(r.get("q_null") or "nan"), "rank": int(r["rank"]),
          "selective": r["selective"] == "True", "p_change": float(r.get("p_change") or "nan"),
          "q_change": float(r.get("q_change") or "nan"), "changes": r.get("changes") == "True"}


def load(workdir: str) -> QuantifyResult:
  out_dir = os.path.join(workdir, NAME)
  table = errors.require(os.path.join(out_dir, "selectivity.csv"), NAME)
  manifest = io.read_json_checked(os.path.join(out_dir, "manifest.json"))
  want = manifest.get("selectivity_sha256") if isinstance(manifest, dict) else None
  if want and io.sha256_file(table) != want:
    raise io.CorruptFileError(table, "does not match the checksum in manifest.json (cut or edited)")
  try:
    with open(table) as f:
      rows = [_typed(r) for r in csv.DictReader(f)]
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise io.CorruptFileError(table, f"unreadable row ({type(e).__name__}: {e})") from None
  opt = lambda name: (io.read_json(os.path.join(out_dir, name))
                      if os.path.exists(os.path.join(out_dir, name)) else None)
  return QuantifyResult(directory=out_dir, rows=rows, segmenter_eval=opt("segmenter_eval.json"),
                        truth_check=opt("truth_check.json"), n_blocks=int(manifest["n_blocks"]))


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


def _calls(ctx) -> dict | None:
  """calls.json (the call counts beside their null), or None for a workdir from before it."""
  path = os.path.join(ctx.out_dir(NAME), "calls.json")
  return io.read_json(path) if os.path.exists(path) else None


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
    tm = ch.get("true_masks") or {"per_factor": {}}
    fpr = ch.get("false_positive_rate")
    parts.append(f"<h3>Check against the ground truth: precision@{ch['k']}</h3><p>For each factor of "
                 f"the built-in world, the top-{ch['k']} units whose change of the concept that shows it "
                 f"is called ('changes') "
                 f"shows it, against the {ch['k']} units whose sweeps truly move that factor most "
                 f"(over the start samples measured), "
                 f"measured with the segmenter's masks and with the world's true masks (which "
                 f"separates segmentation error from the measurement design). "
                 f"<b>Mean precision@{ch['k']}: {fmt(ch['mean_precision'])}</b> (true masks "
                 f"{fmt(tm.get('mean_precision'))}; chance {ch['chance']:.2f}); mean Spearman "
                 f"correlation over all units of measured and true change: "
                 f"{fmt(ch.get('mean_spearman'))} (true masks {fmt(tm.get('mean_spearman'))}). "
                 + (f"False-positive rate of 'selective' on sweeps along random directions: "
                    f"<b>{fpr:.3f}</b> (alpha {ch['alpha']}). " if fpr is not None else "")
                 + f"Concepts: {html.escape(str(ch.get('concepts', 'reference')))}.</p>")
    parts.append(page.table(
        ["factor", "concept", "units found", "units that move it", f"precision@{ch['k']}",
         "precision (true masks)", "Spearman", "Spearman (true masks)"],
        [[f, f"{v['part']} {v['metric']}", ", ".join(map(str, v["found"])) or "none",
          ", ".join(map(str, v["true_top"])), fmt(v["precision"]),
          fmt(tm["per_factor"].get(f, {}).get("precision")), fmt(v.get("spearman"), 2),
          fmt(tm["per_factor"].get(f, {}).get("spearman"), 2)]
         for f, v in ch["per_factor"].items()]))
  n_sel = sum(r["selective"] for r in rows)
  cl = _calls(ctx)
  beside = (f" Beside it, the same calls on the {cl['null_draws']} null directions themselves (each "
            f"tested against the others): <b>{cl['n_selective_null']}</b> (direction, concept) pairs "
            f"selective; p &lt;= {cl['alpha']} on {cl['false_positive_rate']:.3f} of them (calibrated: "
            f"near {cl['alpha']})." if cl else "")
  parts.append(f"<p><b>{n_sel} of {len(rows)}</b> unit x concept pairs are selective: Benjamini-Hochberg "
               f"q &lt;= {c.q_level} over the whole table (false-discovery rate controlled at "
               f"{c.q_level}), the p-values permutation tests against sweeps along {c.null_draws} random "
               f"directions {'in r-space with the units&#x27; swept ranges, through the link' if c.null_space == 'r' else 'in w'}"
               f" (a generalized Pareto tail where few null directions reach the unit).{beside} "
               f"Full table with p and q: <code>quantify/selectivity.csv</code>.</p>")
  n_ch = sum(r.get("changes", False) for r in rows)
  parts.append(f"<p><b>{n_ch} of {len(rows)}</b> unit x concept pairs <i>change</i> the concept: the mean "
               f"change over the start samples exceeds {c.min_effect} x the null directions' RMS change "
               f"(one-sided t-test across start samples, Benjamini-Hochberg q &lt;= {c.q_level} over the "
               f"table; columns p_change, q_change). 'Selective' asks more: that the unit moves the "
               f"concept more than random directions with its geometry do.</p>")
  if ch and ch.get("calls_vs_truth"):
    tv = ch["calls_vs_truth"]
    parts.append(f"<p>Against the world's truth (a unit x concept pair is truly null when its factor "
                 f"moves less than {tv['null_below']:.0%} of its range, truly selective above "
                 f"{tv['selective_above']:.0%}): false-discovery rate of the calls <b>{fmt(tv['fdr'])}</b> "
                 f"({tv['n_called']} calls on decided pairs), power <b>{fmt(tv['power'])}</b> of "
                 f"{tv['n_true_selective']} truly selective pairs; uncorrected p &lt;= {c.alpha}: FDR "
                 f"{fmt(tv['uncorrected']['fdr'])}, power {fmt(tv['uncorrected']['power'])}"
                 + (f"; 'changes': FDR <b>{fmt(tv['changes']['fdr'])}</b>, power <b>{fmt(tv['changes']['power'])}</b>"
                    if "changes" in tv else "") + ".</p>")
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
    lab = segment.predict_labels(seg, G, generators.broadcast_ws(jnp.asarray(w), G.num_ws))
    strip = images.unit_to_uint8(np.concatenate([images.row(img), images.row(overlay(img, lab))], 0))
    mine = sorted((r for r in res.rows if r["unit"] == u), key=lambda r: -abs(r["effect"])
                  if np.isfinite(r["effect"]) else 0.0)
    sel = [f"{r['part']} {r['metric']}" for r in mine if r["selective"]]
    cells = [[r["part"], r["metric"], f"{r['mean']:+.3g}", f"[{r['ci_low']:+.3g}, {r['ci_high']:+.3g}]",
              f"{r['effect']:+.2f}", page.fmt(r["p_null"], 2), page.fmt(r.get("q_null"), 2),
              "yes" if r["selective"] else ""]
             for r in mine[:6]]
    out.append(
        f'<div class="card"><h4>Unit {u}</h4><figure>{page.img(strip, scale)}'
        f"<figcaption>Sweep of unit {u} from {values[0]:.3g} to {values[-1]:.3g} (top) and its part "
        f"segmentation (bottom).</figcaption></figure>"
        f"<p>Selective for: {page.escape(', '.join(sel)) or 'nothing'}</p>"
        + page.table(["part", "metric", "mean change", f"{int(c.level * 100)}% interval", "effect",
                      "null p", "q (BH)", "selective"], cells) + "</div>")
  return out


def summary(ctx) -> dict | None:
  """Segmenter mean IoU and the ground-truth check's headline numbers."""
  if not os.path.exists(os.path.join(ctx.out_dir(NAME), "selectivity.csv")):
    return None
  res = ctx.result(NAME)
  out = {"n_selective": int(sum(r["selective"] for r in res.rows)), "n_rows": len(res.rows)}
  cl = _calls(ctx)
  if cl:
    out.update(n_selective_null=cl["n_selective_null"], q_level=cl["q_level"])
  if res.segmenter_eval:
    out["mean_iou"] = res.segmenter_eval["mean_iou"]
  if res.truth_check:
    out.update(precision_at_k=res.truth_check["mean_precision"], k=res.truth_check["k"],
               chance=res.truth_check["chance"], spearman=res.truth_check["mean_spearman"])
  return out


STAGE = Stage(name=NAME, requires=("sweep",), default_config=default_config, run=run, load=load,
              early=early, uses=("classes", "psi", "seed"), section=section, summary=summary,
              ignores=("batch_size", "cards"), merge=merge,
              rules=RULES)
