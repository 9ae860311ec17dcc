"""Stage `motion`: how each unit's sweep moves the parts (dense flow, per-part affine fit).

For every sweep block (WORKSPACE.md, `sweep/`), the sweeps of `samples_per_unit` start
samples per unit (`sweeps.pick_starts`, the samples quantify and the report look at) are
rendered again from the stored w; between consecutive images a dense flow is computed
from the generator's output (`lis_jax.analysis.motion`: coarse-to-fine Lucas-Kanade) and,
per part (the quantify stage's segmenter, or the world's own masks), an affine map is fitted
to it: mean displacement, rotation and scale, as the reference fits an affine map to
PUMP's correspondences (src/motion_estimation.py). One jitted call per batch of sweeps.
Per unit and part the motion from the first to the last image is the sum of the
consecutive displacements and rotations and the product of the scales, averaged over
the start samples. On a world that knows its pose (the built-in 'shapes'), the object's
motion is compared with its true pose change, beside the centroid shift.

Outputs (`workdir/motion/`, atomic): block_<b:05d>.npz per sweep block (units [U],
samples [S'], displacement [U, S', T-1, P, 2], rotation, scale, weight [U, S', T-1, P],
centroid [U, S', T-1, P, 2] in pixels of the image, P = the parts and 'object'; with the
truth: true_displacement [U, S', 2], true_rotation, true_scale [U, S']); units.csv (one row
per unit x part: UNIT_COLUMNS); summary.json.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import os
import time

import jax
import ml_collections
import numpy as np

from lis_jax import blocks, errors, images, io, memory, page
from lis_jax import validate as V
from lis_jax.analysis import motion
from lis_jax.generators.base import GroundTruthWorld
from lis_jax.quantify import segment
from lis_jax.sweeps import pick_starts
from lis_jax.stages.base import Stage

NAME = "motion"
UNIT_COLUMNS = ("unit", "part", "n_samples", "dx", "dy", "displacement", "rotation_deg", "scale")
ARRAYS = ("displacement", "rotation", "scale", "weight", "centroid")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.samples_per_unit = 2  # start samples per unit (of the sweep's, spread over classes)
  c.masks = "segmenter"  # part masks: the quantify stage's segmenter, or 'ground_truth' (the world's)
  # what the flow matches: 'masks' (the part masks: a sweep changes colours and the
  # background, which breaks the image's brightness constancy; README), 'image', a
  # synthesis layer, or several joined by '+'
  c.features = "masks"
  c.batch_size = 32  # sweeps per jitted call
  return c


RULES = {"samples_per_unit": V.pos_int(), "masks": V.choice("segmenter", "ground_truth"),
         "batch_size": V.pos_int()}


def requires_when(c) -> tuple[str, ...]:
  return ("quantify",) if c.masks == "segmenter" else ()


@dataclasses.dataclass(frozen=True)
class MotionResult:
  """rows: units.csv typed (UNIT_COLUMNS); summary: summary.json; `blocks()`: per block."""
  directory: str
  rows: list
  summary: dict

  def blocks(self) -> list[dict]:
    return list(_store(self.directory).blocks(int(self.summary["n_blocks"])))


def _store(directory: str) -> blocks.BlockStore:
  return blocks.BlockStore(directory, finite=("units", "samples"))


def _masks_fn(ctx, c):
  """(masks_fn(params, ws) -> [N, r, r, P] background-first weights, params, part names)."""
  G = ctx.G
  if c.masks == "ground_truth":
    if not isinstance(G, GroundTruthWorld):
      raise errors.PipelineError("motion.masks='ground_truth' needs a world that knows its parts "
                                 "(the built-in 'shapes'); use 'segmenter'")
    return (lambda params, ws: G.ground_truth(ws)["masks"]), None, tuple(G.part_names)
  seg = ctx.result("quantify").segmenter()
  fn = lambda params, ws: jax.nn.softmax(segment.head_logits(
      params, segment.layer_features(G, ws, seg.layers), seg.layers, seg.resolution,
      seg.num_parts, seg.size), -1)
  return fn, seg.params, seg.part_names


def run(ctx) -> None:
  """Measures the motion of every sweep block into `workdir/motion/`."""
  c = ctx.cfg(NAME)
  out_dir = ctx.out_dir(NAME)
  sw = ctx.result("sweep")
  G = ctx.G
  masks_fn, params, names = _masks_fn(ctx, c)
  parts = list(names[1:]) + [motion.OBJECT]
  pick = pick_starts(sw.cls, c.samples_per_unit)
  fn = jax.jit(lambda G, params, w: motion.sweep_motion(G, w, functools.partial(masks_fn, params),
                                                         c.features))
  try:   # a wrong layer name in motion.features: one line, before any work
    jax.eval_shape(fn, G, params, jax.ShapeDtypeStruct((1, 2, G.w_dim), np.float32))
  except ValueError as e:
    raise errors.PipelineError(f"motion.features={c.features!r}: {e}") from None
  store = _store(out_dir)
  t0 = time.time()
  todo = set(store.todo(sw.n_blocks))
  for b, blk in enumerate(sw.blocks() if todo else ()):
    if b not in todo:
      continue
    w = blk["w"][:, pick]                                                 # [U, S', T, w_dim]
    u_n, s_n = w.shape[:2]
    flat = w.reshape((u_n * s_n,) + w.shape[2:])
    # sweeps per call from the memory budget (<= motion.batch_size); OOM is one line
    out = memory.map_batches(fn, flat, min(c.batch_size, flat.shape[0]), G, params, budget=ctx.budget,
                             call="motion", setting="motion.batch_size", stage=NAME)
    errors.check_finite(f"motion block {b} weight", out["weight"])
    arrays = {k: out[k].reshape((u_n, s_n) + out[k].shape[1:]) for k in ARRAYS}
    arrays["centroid_last"] = out["centroid_last"].reshape((u_n, s_n) + out["centroid_last"].shape[1:])
    true = motion.true_pose_change(G, flat)
    if true is not None:
      arrays.update({f"true_{k}": v.reshape((u_n, s_n) + v.shape[1:]) for k, v in true.items()})
    errors.maybe_interrupt(NAME, b + 1)
    store.write(b, units=blk["units"], samples=blk["samples"][pick], **arrays)
  seconds = time.time() - t0
  blks = list(store.blocks(sw.n_blocks))
  rows = unit_rows(blks, parts)
  with io.atomic_file(os.path.join(out_dir, "units.csv"), "w") as f:
    wr = csv.DictWriter(f, fieldnames=UNIT_COLUMNS)
    wr.writeheader()
    wr.writerows(rows)
  summ = {"n_blocks": sw.n_blocks, "parts": parts, "samples_per_unit": int(pick.size),
          "masks": c.masks, "features": c.features, "seconds": seconds,
          "units": len({r["unit"] for r in rows}), "top": top_units(rows, 5),
          "truth": truth_check(blks, parts)}
  io.write_json(os.path.join(out_dir, "summary.json"), summ)
  print(f"[{NAME}] {summ['units']} units x {pick.size} samples in {seconds:.1f} s", flush=True)


def _totals(blk: dict) -> dict[str, np.ndarray]:
  """motion.sweep_totals of a stored block, [U, S', P(, 2)]."""
  u_n, s_n = blk["rotation"].shape[:2]
  flat = {k: blk[k].reshape((u_n * s_n,) + blk[k].shape[2:]) for k in ARRAYS + ("centroid_last",)}
  return {k: v.reshape((u_n, s_n) + v.shape[1:]) for k, v in motion.sweep_totals(flat).items()}


def unit_rows(blks: list[dict], parts: list[str]) -> list[dict]:
  """One row per unit x part (UNIT_COLUMNS): the motion first -> last image, mean over the
  start samples where the part is present throughout (dx, dy, |mean displacement| in
  pixels, rotation in degrees, geometric mean of the scale)."""
  rows = []
  for blk in blks:
    tot = _totals(blk)
    for i, u in enumerate(blk["units"]):
      for p, part in enumerate(parts):
        ok = np.isfinite(tot["rotation"][i, :, p])
        d = tot["displacement"][i, ok, p].mean(0) if ok.any() else np.full(2, np.nan)
        rows.append({"unit": int(u), "part": part, "n_samples": int(ok.sum()),
                     "dx": float(d[0]), "dy": float(d[1]), "displacement": float(np.hypot(*d)),
                     "rotation_deg": float(np.degrees(tot["rotation"][i, ok, p].mean())) if ok.any() else float("nan"),
                     "scale": float(np.exp(np.log(tot["scale"][i, ok, p]).mean())) if ok.any() else float("nan")})
  return rows


def top_units(rows: list[dict], k: int) -> list[dict]:
  """The k units whose object moves most (|mean displacement|), with their object row."""
  obj = [r for r in rows if r["part"] == motion.OBJECT and np.isfinite(r["displacement"])]
  return sorted(obj, key=lambda r: -r["displacement"])[:k]


RIGID_TV = 0.1   # sweeps whose class weights move less (total variation) keep the object's shape


def truth_check(blks: list[dict], parts: list[str]) -> dict | None:
  """On a world that knows its pose: the object's motion first -> last image against its
  true pose change, over the (unit, sample) sweeps that keep the object's class (shape;
  class change <= RIGID_TV: where the shape morphs, an affine fit measures the deformation
  too): mean |error| of the displacement (pixels; the dense motion's and the centroid
  shift's), of the rotation (degrees; the centroid shift has none: its error is |true
  rotation|) and of the scale (ratio; the centroid shift's: |true - 1|)."""
  if not blks or "true_rotation" not in blks[0]:
    return None
  p = parts.index(motion.OBJECT)
  tot = [_totals(b) for b in blks]
  cat = lambda key: np.concatenate([s[key][:, :, p].reshape((-1,) + s[key].shape[3:]) for s in tot])
  true = {k: np.concatenate([b[f"true_{k}"].reshape((-1,) + b[f"true_{k}"].shape[2:]) for b in blks])
          for k in ("displacement", "rotation", "scale", "class_change")}
  est = {k: cat(k) for k in ("displacement", "rotation", "scale", "centroid_shift")}
  ok = np.isfinite(est["rotation"]) & (true["class_change"] <= RIGID_TV)
  if not ok.any():
    return {"sweeps": 0, "all_sweeps": int(ok.size), "rigid_tv": RIGID_TV}
  norm = lambda d: float(np.linalg.norm(d[ok], axis=-1).mean())
  mean_abs = lambda x: float(np.abs(x[ok]).mean())
  return {"sweeps": int(ok.sum()), "all_sweeps": int(ok.size), "rigid_tv": RIGID_TV,
          "true_displacement_px": norm(true["displacement"]),
          "true_rotation_deg": float(np.degrees(mean_abs(true["rotation"]))),
          "true_scale_change": mean_abs(true["scale"] - 1),
          "displacement_err_px": norm(est["displacement"] - true["displacement"]),
          "centroid_displacement_err_px": norm(est["centroid_shift"] - true["displacement"]),
          "rotation_err_deg": float(np.degrees(mean_abs(est["rotation"] - true["rotation"]))),
          "centroid_rotation_err_deg": float(np.degrees(mean_abs(true["rotation"]))),
          "scale_err": mean_abs(est["scale"] - true["scale"]),
          "centroid_scale_err": mean_abs(true["scale"] - 1)}


def load(workdir: str) -> MotionResult:
  out_dir = os.path.join(workdir, NAME)
  path = errors.require(os.path.join(out_dir, "units.csv"), NAME)
  with open(path) as f:
    rows = [{k: (v if k == "part" else int(v) if k in ("unit", "n_samples") else float(v))
             for k, v in r.items()} for r in csv.DictReader(f)]
  return MotionResult(directory=out_dir, rows=rows, summary=io.read_json(os.path.join(out_dir, "summary.json")))


# ----------------------------------------------------------------------------- report


def section(ctx) -> str | None:
  """The sweeps of the units that move the object most, with one arrow per part and step
  (from the part's centroid along its mean displacement to the next image), and a table."""
  if not os.path.exists(os.path.join(ctx.out_dir(NAME), "units.csv")):
    return None
  res = ctx.result(NAME)
  rc = ctx.cfg("report")
  parts = res.summary["parts"]
  top = top_units(res.rows, rc.n_top)
  wanted = {r["unit"] for r in top}
  sw = ctx.result("sweep")
  strips = {}
  for mblk, sblk in zip(res.blocks(), sw.blocks()):
    for i, u in enumerate(mblk["units"]):
      if int(u) not in wanted:
        continue
      s = int(np.flatnonzero(sblk["samples"] == mblk["samples"][0])[0])    # the first picked sample
      img = images.render(ctx.G, sblk["w"][i, s], rc.batch_size).astype(np.float32) / 255   # [T, H, W, 3]
      strips[int(u)] = (img, mblk["centroid"][i, 0], mblk["displacement"][i, 0])
  rows = [(f"unit {u}", *strips[u]) for u in [r["unit"] for r in top] if u in strips]
  from lis_jax import plots  # noqa: PLC0415  (local: matplotlib takes ~0.5 s to import, which every command would pay)
  fig = plots.motion_strips(rows, parts)
  png = plots.save(fig, ctx.out_dir("report"), "motion")
  order = {u: k for k, u in enumerate(r["unit"] for r in top)}
  shown = sorted((r for r in res.rows if r["unit"] in order), key=lambda r: (order[r["unit"]], parts.index(r["part"])))
  fmt = lambda x, f: "n/a" if not np.isfinite(x) else format(x, f)
  table = page.table(["unit", "part", "dx px", "dy px", "rotation deg", "scale", "samples"],
                     [(r["unit"], r["part"], fmt(r["dx"], "+.2f"), fmt(r["dy"], "+.2f"),
                       fmt(r["rotation_deg"], "+.1f"), fmt(r["scale"], ".3f"), r["n_samples"]) for r in shown])
  t = res.summary.get("truth")
  truth = "" if not t or not t["sweeps"] else (
      f"<p>Against the world's true pose change, over the {t['sweeps']} of {t['all_sweeps']} sweeps that keep "
      f"the object's class (class change <= {t['rigid_tv']}; mean true motion "
      f"{t['true_displacement_px']:.1f} px, {t['true_rotation_deg']:.1f} deg, scale x{1 + t['true_scale_change']:.3f}): "
      f"the object's displacement is off by {t['displacement_err_px']:.2f} px (centroid shift "
      f"{t['centroid_displacement_err_px']:.2f}), its rotation by {t['rotation_err_deg']:.2f} deg (centroid "
      f"shift: no rotation, {t['centroid_rotation_err_deg']:.2f}), its scale by {t['scale_err']:.3f} "
      f"(centroid shift {t['centroid_scale_err']:.3f}).</p>")
  return ("<h2>Motion of parts</h2><p>Dense flow between consecutive images of each sweep "
          f"(Lucas-Kanade on the {page.escape(res.summary['features'])}), an affine fit per part "
          f"({page.escape(res.summary['masks'])} masks): mean displacement, rotation and scale, "
          f"first to last image, mean over {res.summary['samples_per_unit']} start samples per unit "
          f"(units.csv). Shown: the {len(top)} units that move the object most; arrows from each part's "
          f"centroid along its displacement to the next image (x3).</p>"
          + plots.img_tag(png, "sweeps with part motion", "motion") + table + truth)


def summary(ctx) -> dict | None:
  if not os.path.exists(os.path.join(ctx.out_dir(NAME), "units.csv")):
    return None
  s = ctx.result(NAME).summary
  return {k: s[k] for k in ("parts", "samples_per_unit", "masks", "units", "top", "truth", "seconds")}


STAGE = Stage(name=NAME, requires=("sweep",), default_config=default_config, run=run, load=load,
              section=section, summary=summary, ignores=("batch_size",),
              requires_when=requires_when, rules=RULES)
