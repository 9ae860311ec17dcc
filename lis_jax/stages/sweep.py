"""Stage `sweep`: set one classifier unit to a range of values, link to w, synthesize.

The start representations are the reference's own samples (`starts='reference'`: its
seed 136, `samples_per_class` per class, not filtered for correctness) or the first kept
paired-data samples of each class ('paired'). For a unit i and a start representation r,
r_i is set to `n_steps` values spaced over the unit's [min, max] over the start samples
(`range='starts_minmax'`, the reference's choice), over all paired data ('minmax') or over
mean +- k std; each r is linked to w, broadcast over the ws and synthesized; the images
are re-classified (does the swept unit's own activation follow?). One jitted function
does a whole block of units (vmapped over units, batched over images, sharded over
devices); blocks stream to disk (`blocks.BlockStore`) and a killed run resumes at the
first missing block. Each block also records, per unit, how much its sweep changes the
image and, on a `GroundTruthWorld`, which true factors it moves (`unit_analysis`).

Outputs: WORKSPACE.md, section `sweep/`.
"""
from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import functools
import os
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lis_jax import blocks
from lis_jax import distribute
from lis_jax import images
from lis_jax import io
from lis_jax import memory
from lis_jax import page
from lis_jax import errors, generators, spec
from lis_jax.generators.base import GroundTruthWorld
from lis_jax.analysis.readout import decode_factors
from lis_jax import sweeps
from lis_jax.sweeps import pick_starts
from lis_jax import validate as V
from lis_jax.stages.base import Stage

NAME = "sweep"
INDEX_COLUMNS = ("block", "unit", "sample", "cls", "step", "value", "r_prime_unit", "pred",
                 "p_cls", "png")
UNIT_COLUMNS = ("unit", "image_change", "r_follow", "top_factor", "top_delta", "second_factor",
                "second_delta", "class_change")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.units = "all"  # 'all' or a list like '0,1,5:9'
  c.samples_per_class = 10  # start samples per class
  # reference: the reference's own draw (seed starts_seed, per class, not filtered);
  # paired: the first kept paired-data samples of each class
  c.starts = "reference"
  c.starts_seed = 136  # the reference's gen_seed for its start samples
  c.n_steps = 3  # values per unit
  # starts_minmax: [min, max] over the start samples (the reference); minmax: over all
  # paired data; std: mean +- k std over all paired data
  c.range = "starts_minmax"
  c.k_std = 2.0  # for range 'std'
  c.units_per_block = 4  # units per jitted block (U * S * T images)
  c.batch_size = 32  # images per synthesis call inside a block
  c.reclassify = True  # classify the generated images (r', logits)
  c.store_r_prime = False  # store the full r' [U, S, T, D] (large)
  c.store_logits = False  # store logits [U, S, T, C] (large)
  c.save_png = True  # PNG strips per (unit, sample)
  return c


# Values a run accepts (lis_jax/validate.py's rule kinds), checked before anything runs.
RULES = {
    "starts": V.choice("reference", "paired"), "range": V.choice("starts_minmax", "minmax", "std"),
    "starts_seed": ("int", 0, 2 ** 32 - 1),
    "samples_per_class": V.pos_int(), "n_steps": V.int_at_least(2), "k_std": V.pos_float(),
    "units_per_block": V.pos_int(), "batch_size": V.pos_int(),
}


@dataclasses.dataclass(frozen=True)
class SweepResult:
  """The finished sweep.

  rows [S] paired-data rows of the start samples, cls [S], r_start [S, D];
  units: one dict per swept unit (UNIT_COLUMNS; the factor columns only on a
  GroundTruthWorld), sorted by image_change, largest first.
  `blocks()` yields the blocks in order (each a dict: block, units [U], samples [S],
  cls [S], values [U, T], w [U, S, T, w_dim], r_prime_unit, pred, p_cls [U, S, T],
  image_change, r_follow [U], with ground truth truth_delta [U, F], truth_factors [F],
  class_change [U]; WORKSPACE.md).
  """
  directory: str
  rows: np.ndarray
  cls: np.ndarray
  r_start: np.ndarray
  units: list
  n_blocks: int

  def blocks(self) -> Iterator[dict]:
    """Every block, verified; io.CorruptFileError if one is missing or corrupt (the
    runner then runs the sweep again, which recomputes it)."""
    return store(self.directory).blocks(self.n_blocks)


# Block arrays that must be finite when read (analysis columns may be NaN by design).
FINITE = ("w", "values")


def store(directory: str) -> blocks.BlockStore:
  """The sweep's block store (`block_<b:05d>.npz`)."""
  return blocks.BlockStore(directory, finite=FINITE)


def unit_trajectories(r_start: jax.Array, units: jax.Array, values: jax.Array) -> jax.Array:
  """Start representations with one unit overwritten by each sweep value.

  Args:
    r_start: [S, D] start representations.
    units: [U] int unit ids.
    values: [U, T] the values each unit is set to.
  Returns:
    [U, S, T, D]: r_start[s] with unit units[u] set to values[u, t].
  """
  S, D = r_start.shape
  T = values.shape[1]

  def one(u, vals):
    r = jnp.broadcast_to(r_start[:, None, :], (S, T, D))
    return jnp.where(jnp.arange(D) == u, vals[None, :, None], r)   # [S, T, D]
  return jax.vmap(one)(units, values)


def sweep_block(G: Any, clf: Any, link: Any, r_start: jax.Array, units: jax.Array,
                values: jax.Array, classes: jax.Array, *, batch_size: int,
                reclassify: bool, mesh: Mesh | None):
  """Sweeps a block of units over every start sample and step (jit with kw-only args static).

  Args:
    G, clf, link: generator, classifier, link (pytrees).
    r_start: [S, D] start representations. units: [U] unit ids. values: [U, T].
    classes: [S] class of each start sample (for p_cls).
    batch_size: images per synthesis call (lax.map over chunks); a multiple of the
      device count when `mesh` is given.
    reclassify: also classify the generated images.
    mesh: shard each image batch over this mesh's data axis; None: no constraint.
  Returns:
    dict: w [U, S, T, w_dim], img uint8 [U, S, T, H, W, 3] and, with `reclassify`,
    r_prime [U, S, T, D], r_prime_unit [U, S, T], logits [U, S, T, C], pred, p_cls [U, S, T].
  """
  U, T = values.shape
  S = r_start.shape[0]
  w = link(unit_trajectories(r_start, units, values))      # [U, S, T, w_dim]
  flat = w.reshape(-1, w.shape[-1])                         # [M, w_dim]
  m = flat.shape[0]
  n_chunks = -(-m // batch_size)
  flat = jnp.pad(flat, ((0, n_chunks * batch_size - m), (0, 0)), mode="edge")
  chunks = flat.reshape(n_chunks, batch_size, -1)           # [K, B, w_dim]
  if mesh is not None:
    chunks = jax.lax.with_sharding_constraint(
        chunks, NamedSharding(mesh, PartitionSpec(None, distribute.DATA_AXIS, None)))

  res = jax.lax.map(lambda wb: sweep_chunk(G, clf, wb, reclassify=reclassify), chunks)
  res = jax.tree_util.tree_map(lambda x: x.reshape(-1, *x.shape[2:])[:m].reshape(U, S, T, *x.shape[2:]), res)
  out = {"w": w, "img": res["img"]}
  if reclassify:
    r_prime, logits = res["r_prime"], res["logits"]
    out["r_prime"] = r_prime
    out["r_prime_unit"] = jnp.take_along_axis(r_prime, units[:, None, None, None], axis=-1)[..., 0]
    out["logits"] = logits
    out["pred"] = logits.argmax(-1).astype(jnp.int32)
    probs = jax.nn.softmax(logits, axis=-1)
    out["p_cls"] = jnp.take_along_axis(probs, classes[None, :, None, None], axis=-1)[..., 0]
  return out


_sweep_block = jax.jit(sweep_block, static_argnames=("batch_size", "reclassify", "mesh"))


def sweep_chunk(G: Any, clf: Any, wb: jax.Array, *, reclassify: bool) -> dict:
  """One synthesis call of a block: w [B, w_dim] -> img uint8 [B, H, W, 3] (+ r_prime, logits)."""
  img = G.synthesis(generators.broadcast_ws(wb, G.num_ws))  # [B, H, W, 3]
  out = {"img": images.to_uint8(img)}
  if reclassify:
    r = clf.features(clf.preprocess(img))                 # [B, D]
    out.update(r_prime=r, logits=clf.head(r))
  return out


def sweep_values(r: np.ndarray, units: np.ndarray, n_steps: int, mode: str = "minmax",
                 k_std: float = 2.0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """The values each unit is swept through, from its statistics over r [N, D].

  Returns:
    values [U, n_steps] (linspace over [min, max], or mean +- k_std * std), and the
    per-unit statistics {'min', 'max', 'mean', 'std'} [U].
  """
  x = np.asarray(r, np.float64)[:, units]
  stats = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0)}
  if mode in ("minmax", "starts_minmax"):   # the caller passes the starts' r for the latter
    lo, hi = stats["min"], stats["max"]
  elif mode == "std":
    lo, hi = stats["mean"] - k_std * stats["std"], stats["mean"] + k_std * stats["std"]
  else:
    raise errors.PipelineError(f"sweep.range={mode!r}: expected 'starts_minmax', 'minmax' or 'std'")
  values = np.linspace(lo, hi, n_steps, axis=1).astype(np.float32)
  return values, stats


def starts(ctx, c: ml_collections.ConfigDict, data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(rows [S], r_start [S, D], cls [S]) of `sweep.starts`.

  'paired': paired-data rows. 'reference': the reference's own draw (sweeps.reference_starts);
  rows are then positions in that draw (class-major), not paired-data rows.
  """
  if c.starts == "reference":
    r, cls = sweeps.reference_starts(ctx.G, ctx.clf, ctx.classes, c.samples_per_class,
                                     ctx.config.psi, c.starts_seed, c.batch_size)
    errors.check_finite("sweep reference start r", r)
    return np.arange(cls.size, dtype=np.int32), r, cls
  rows = start_rows(data.cls, ctx.classes, c.samples_per_class)
  return rows, data.r[rows], data.cls[rows]


def start_rows(cls: np.ndarray, classes: np.ndarray, per_class: int) -> np.ndarray:
  """The first `per_class` paired-data rows of each class, in class order."""
  rows = []
  for c in classes:
    found = np.flatnonzero(cls == c)
    if found.size < per_class:
      raise errors.PipelineError(f"sweep.samples_per_class={per_class} but the paired data "
                                   f"has only {found.size} samples of class {c}")
    rows.append(found[:per_class])
  return np.concatenate(rows).astype(np.int32)


# ----------------------------------------------------------------------------- unit analysis


def factor_deltas(G: GroundTruthWorld, w: np.ndarray) -> tuple[np.ndarray, list[str], np.ndarray]:
  """How each unit's sweep moves the world's true factors.

  Args:
    G: a generator that knows its factors. w: [U, S, T, w_dim] a block's sweep.
  Returns:
    deltas [U, F]: mean over start samples of each factor's change first -> last step,
    as a fraction of its range (circular factors wrapped to the shorter way); the factor
    names [F]; class_change [U]: mean total variation between the class weights of the
    first and last step (0..1).
  """
  u_n, s_n, _, d = w.shape
  ends = jnp.asarray(w[:, :, [0, -1]].reshape(-1, d))
  factors, cw = decode_factors(G, ends)
  names = list(factors)
  out = []
  for n in names:
    f = np.asarray(factors[n]).reshape(u_n, s_n, 2)
    delta = f[..., 1] - f[..., 0]
    lo, hi = G.factor_ranges[n]
    if n in G.circular_factors:
      delta = (delta - lo + (hi - lo) / 2) % (hi - lo) - (hi - lo) / 2
    out.append((delta / (hi - lo)).mean(1))
  cw = np.asarray(cw).reshape(u_n, s_n, 2, -1)
  class_tv = 0.5 * np.abs(cw[:, :, 1] - cw[:, :, 0]).sum(-1).mean(1)
  return np.stack(out, -1), names, class_tv


def unit_analysis(G: Any, host: dict, values: np.ndarray, units: np.ndarray) -> dict[str, np.ndarray]:
  """Per unit of a block: image_change [U] (mean |last - first step| of the uint8 images
  / 255 over pixels and start samples), r_follow [U] (change of the unit's own
  re-classified activation per unit of set value; NaN without reclassify) and, on a
  GroundTruthWorld, truth_delta [U, F], truth_factors [F], class_change [U]
  (`factor_deltas`)."""
  img = host["img"].astype(np.float32) / 255                 # [U, S, T, H, W, 3]
  out = {"image_change": np.abs(img[:, :, -1] - img[:, :, 0]).mean((1, 2, 3, 4))}
  dv = values[:, -1] - values[:, 0]
  if "r_prime_unit" in host:
    rpu = host["r_prime_unit"]
    out["r_follow"] = (rpu[:, :, -1] - rpu[:, :, 0]).mean(1) / np.where(dv == 0, 1, dv)
  else:
    out["r_follow"] = np.full(units.size, np.nan)
  out.update(factor_analysis(G, host["w"]))
  return out


def factor_analysis(G: Any, w: np.ndarray) -> dict[str, np.ndarray]:
  """On a GroundTruthWorld: truth_delta [U, F], truth_factors [F], class_change [U] of a
  block's sweep w [U, S, T, w_dim] (`factor_deltas`); else nothing."""
  if not isinstance(G, GroundTruthWorld):
    return {}
  delta, names, class_tv = factor_deltas(G, w)
  return {"truth_delta": delta, "truth_factors": np.asarray(names), "class_change": class_tv}


def unit_rows(blks: list[dict]) -> list[dict]:
  """One row per swept unit (UNIT_COLUMNS), sorted by image_change, largest first."""
  rows = []
  for blk in blks:
    names = [str(n) for n in blk["truth_factors"]] if "truth_factors" in blk else None
    for i, unit in enumerate(blk["units"]):
      row = {"unit": int(unit), "image_change": float(blk["image_change"][i]) if "image_change" in blk
             else float("nan"), "r_follow": float(blk["r_follow"][i]) if "r_follow" in blk else float("nan")}
      if names:
        d = blk["truth_delta"][i]
        order = np.argsort(-np.abs(d))
        row.update(top_factor=names[order[0]], top_delta=float(d[order[0]]),
                   second_factor=names[order[1]], second_delta=float(d[order[1]]),
                   class_change=float(blk["class_change"][i]))
      rows.append(row)
  rows.sort(key=lambda r: -np.nan_to_num(r["image_change"], nan=-np.inf))
  return rows


# ----------------------------------------------------------------------------- stage


def run(ctx) -> None:
  """Sweeps `sweep.units` block by block into `workdir/sweep/`."""
  c = ctx.cfg(NAME)
  out_dir = ctx.out_dir(NAME)
  data = ctx.result("paired_data")
  link = ctx.result("link").link
  G, clf = ctx.G, ctx.clf
  units = spec.parse_units(c.units, clf.feature_dim)
  if c.n_steps < 2 or c.units_per_block < 1 or c.batch_size < 1:
    raise errors.PipelineError("sweep.n_steps must be >= 2, units_per_block and batch_size >= 1")
  rows, r_start, cls_start = starts(ctx, c, data)
  values, stats = sweep_values(r_start if c.range == "starts_minmax" else data.r, units,
                               c.n_steps, c.range, c.k_std)
  U = min(c.units_per_block, units.size)   # fewer units than a block: no padded units to synthesise
  n_blocks = -(-units.size // U)
  if ctx.is_main:   # the same in every process: process 0 writes them
    io.save_npz(os.path.join(out_dir, "samples.npz"), rows=rows, cls=cls_start, r=r_start,
                n_blocks=np.int32(n_blocks))
    with io.atomic_file(os.path.join(out_dir, "activation_ranges.csv"), "w") as f:
      wr = csv.writer(f)
      wr.writerow(["unit", "min", "max", "mean", "std"])
      for i, u in enumerate(units):
        wr.writerow([int(u)] + [repr(float(stats[k][i])) for k in ("min", "max", "mean", "std")])

  mesh = ctx.mesh
  # A block's images (constant over blocks) fewer than a batch: the batch is the block.
  batch = distribute.round_up(min(c.batch_size, U * rows.size * c.n_steps), mesh)
  choice = memory.choose_batch(functools.partial(sweep_chunk, reclassify=c.reclassify),
                               jax.ShapeDtypeStruct((batch, G.w_dim), np.float32), batch, G, clf,
                               budget=ctx.budget, call="synthesis", setting="sweep.batch_size",
                               stage=NAME, multiple=distribute.round_up(1, mesh))
  batch = choice.batch
  G_r, clf_r, link_r, r_start_d, cls_d = distribute.replicate((G, clf, link, r_start, cls_start), mesh)
  blocks_ = store(out_dir)
  mine = ctx.my_items(n_blocks)   # this process's blocks (all of them with one process)
  todo = blocks_.todo(n_blocks, items=mine)
  n_img = U * rows.size * c.n_steps
  call = functools.partial(_sweep_block, batch_size=batch, reclassify=c.reclassify, mesh=mesh)
  # The next block is computed while the last is written; over several CPU devices a block
  # is finished before the next is sent (its all-gathers would wait on the next's). On a
  # CPU, two blocks are computed at once from two threads where that is safe and fits
  # (`memory.calls_at_once`; the first alone: it compiles the call).
  done_first = distribute.finish_each(mesh)
  at_once = memory.calls_at_once(choice, mesh)

  def dispatch(b):
    bu = distribute.pad_batch(units[b * U:(b + 1) * U], U)
    bv = distribute.pad_batch(values[b * U:(b + 1) * U], U)
    n_valid = min(U, units.size - b * U)
    out = done_first(call(G_r, clf_r, link_r, r_start_d, bu, bv, cls_d))
    return b, n_valid, (jax.block_until_ready(out) if at_once > 1 else out)

  t0, done = time.time(), 0
  with ctx.progress(total=mine.size, initial=mine.size - len(todo), unit="block", desc="sweep") as bar, \
      concurrent.futures.ThreadPoolExecutor(1) as pool, \
      concurrent.futures.ThreadPoolExecutor(at_once, thread_name_prefix="lis_jax-sweep") as compute, \
      memory.guard(NAME, "synthesis", batch, "sweep.batch_size"):
    pending = None
    writing = None
    for i, b in enumerate(todo + [None]):
      if b is None:
        nxt = None
      elif at_once > 1 and i > 0:
        nxt = compute.submit(dispatch, b)                    # runs beside the last
      else:
        nxt = concurrent.futures.Future()
        nxt.set_result(dispatch(b))                          # runs while we write the last
      if pending is not None:
        pb, n_valid, out = pending.result()
        host = {k: np.asarray(v)[:n_valid] for k, v in out.items()}
        errors.check_finite(f"sweep block {pb} w", host["w"])
        meta = dict(units=units[pb * U:pb * U + n_valid], samples=rows, cls=cls_start,
                    values=values[pb * U:pb * U + n_valid])
        meta.update(unit_analysis(G, host, meta["values"], meta["units"]))
        if writing is not None:
          writing.result()
        writing = pool.submit(_write_block, blocks_, pb, host, meta, c)
        done += 1
        bar.update(1)
        bar.set_postfix(img_s=f"{done * n_img / max(time.time() - t0, 1e-9):.3g}")
      pending = nxt
    if writing is not None:
      writing.result()


def merge(ctx) -> None:
  """Process 0, after every process wrote its blocks: missing strips, index.csv and
  unit_factors.csv."""
  c = ctx.cfg(NAME)
  units = spec.parse_units(c.units, ctx.clf.feature_dim)
  n_blocks = -(-units.size // c.units_per_block)
  blocks_ = store(ctx.out_dir(NAME))
  if c.save_png:
    repair_strips(ctx.G, blocks_, n_blocks)
  finish(blocks_, n_blocks)


def finish(store: blocks.BlockStore, n_blocks: int) -> None:
  """index.csv and unit_factors.csv from the blocks (also for hand-made sweeps in tests)."""
  _write_index(store, n_blocks)
  _write_units(store.directory, unit_rows(list(store.blocks(n_blocks))))


def repair_strips(G: Any, store: blocks.BlockStore, n_blocks: int) -> int:
  """Regenerates missing PNG strips of finished blocks from their stored w; returns how many.

  Synthesized again from `w` (up to 1 level of uint8 rounding from the originals,
  which came from a different batch shape).
  """
  n = 0
  for blk in store.blocks(n_blocks):
    for i, u in enumerate(blk["units"]):
      for j, row in enumerate(blk["samples"]):
        path = os.path.join(store.directory, _strip_path(blk["block"], int(u), int(row)))
        if not os.path.exists(path):
          img = np.asarray(images.render(G, blk["w"][i, j]))   # [T, H, W, 3] uint8
          images.save_png(path, images.row(img), compress_level=1)
          n += 1
  if n:
    print(f"[{NAME}] {n} missing PNG strip(s) regenerated", flush=True)
  return n


def _strip_path(b: int, unit: int, row: int) -> str:
  return os.path.join("strips", f"block_{b:05d}", f"u{unit:05d}_s{row:06d}.png")


def _write_block(store: blocks.BlockStore, b: int, host: dict, meta: dict,
                 c: ml_collections.ConfigDict) -> None:
  """PNG strips first, the block's npz last: the npz existing means the block is complete."""
  if c.save_png:
    img = host["img"]                                        # [U, S, T, H, W, 3]
    for i, u in enumerate(meta["units"]):
      for j, row in enumerate(meta["samples"]):
        images.save_png(os.path.join(store.directory, _strip_path(b, int(u), int(row))),
                        images.row(img[i, j]), compress_level=1)
  arrays = dict(meta, w=host["w"])
  if c.reclassify:
    arrays.update(r_prime_unit=host["r_prime_unit"], pred=host["pred"], p_cls=host["p_cls"])
    if c.store_r_prime:
      arrays["r_prime"] = host["r_prime"]
    if c.store_logits:
      arrays["logits"] = host["logits"]
  errors.maybe_interrupt(NAME, b + 1)
  store.write(b, **arrays)


def _write_index(store: blocks.BlockStore, n_blocks: int) -> None:
  with io.atomic_file(os.path.join(store.directory, "index.csv"), "w") as f:
    wr = csv.writer(f)
    wr.writerow(INDEX_COLUMNS)
    for b in range(n_blocks):
      blk = store.read(b)
      units, samples, cls, values = blk["units"], blk["samples"], blk["cls"], blk["values"]
      has_rc = "pred" in blk
      rpu, pred, pcls = (blk[k] if has_rc else None for k in ("r_prime_unit", "pred", "p_cls"))
      has_png = os.path.isdir(os.path.join(store.directory, "strips", f"block_{b:05d}"))
      for i, u in enumerate(units):
        for j, row in enumerate(samples):
          png = _strip_path(b, int(u), int(row)) if has_png else ""
          for t in range(values.shape[1]):
            wr.writerow([b, int(u), int(row), int(cls[j]), t, repr(float(values[i, t])),
                         repr(float(rpu[i, j, t])) if has_rc else "",
                         int(pred[i, j, t]) if has_rc else "",
                         repr(float(pcls[i, j, t])) if has_rc else "", png])


def _write_units(out_dir: str, rows: list[dict]) -> None:
  with io.atomic_file(os.path.join(out_dir, "unit_factors.csv"), "w") as f:
    wr = csv.DictWriter(f, fieldnames=[k for k in UNIT_COLUMNS if k in rows[0]])
    wr.writeheader()
    wr.writerows(rows)


def load(workdir: str) -> SweepResult:
  out_dir = os.path.join(workdir, NAME)
  errors.require(os.path.join(out_dir, "unit_factors.csv"), NAME)
  with open(os.path.join(out_dir, "unit_factors.csv")) as f:
    units = [{k: _parse(v) for k, v in r.items()} for r in csv.DictReader(f)]
  f = io.load_npz(os.path.join(out_dir, "samples.npz"), keys=("rows", "cls", "r", "n_blocks"))
  return SweepResult(directory=out_dir, rows=f["rows"], cls=f["cls"], r_start=f["r"], units=units,
                     n_blocks=int(f["n_blocks"]))


def _parse(v: str) -> Any:
  for t in (int, float):
    try:
      return t(v)
    except ValueError:
      pass
  return v


# ----------------------------------------------------------------------------- report


def section(ctx) -> str | None:
  """Strips of the units whose sweeps change the image most and least, and the unit ->
  ground-truth factor table on a GroundTruthWorld."""
  if not os.path.exists(os.path.join(ctx.out_dir(NAME), "unit_factors.csv")):
    return None
  res = ctx.result(NAME)
  return _strips_html(ctx, res) + (_factor_html(ctx, res.units) if "top_factor" in res.units[0] else "")


def _strips_html(ctx, res: SweepResult) -> str:
  c = ctx.cfg("report")
  G = ctx.G
  table = res.units
  top = table[:c.n_top]
  bottom = table[-c.n_bottom:] if len(table) > c.n_top else []
  wanted = {r["unit"] for r in top + bottom}
  strips: dict[int, np.ndarray] = {}
  values: dict[int, np.ndarray] = {}
  for blk in res.blocks():
    pick = pick_starts(blk["cls"], c.strip_samples)
    for i, u in enumerate(blk["units"]):
      if int(u) in wanted:
        w = blk["w"][i, pick]                                  # [S', T, w_dim]
        img = images.render(G, w.reshape(-1, w.shape[-1]), c.batch_size)
        strips[int(u)] = images.grid(img.reshape(*w.shape[:2], *img.shape[1:]))  # [S'H, TW, 3]
        values[int(u)] = blk["values"][i]

  def block(rows, title):
    if not rows:
      return ""
    items = []
    for r in rows:
      u = r["unit"]
      label = f"unit {u}: image change {r['image_change']:.3f}"
      if "top_factor" in r:
        label += f"; moves {r['top_factor']} ({r['top_delta']:+.2f} of range)"
      v = values[u]
      items.append(f"<figure>{page.img(strips[u], c.image_scale)}<figcaption>"
                   f"{page.escape(label)}; r_{u} from {v[0]:.2f} to {v[-1]:.2f} "
                   f"(left to right), rows: start samples</figcaption></figure>")
    return f"<h3>{title}</h3>" + "\n".join(items)

  fig = images.labelled_grid([(f"unit {r['unit']}", strips[r["unit"]]) for r in top + bottom])
  images.save_png(os.path.join(ctx.out_dir("report"), "sweeps.png"), fig)
  return (f"<h2>Unit sweeps</h2><p>{len(table)} units swept: each unit's activation is set to "
          f"{len(next(iter(values.values())))} values over its observed range, mapped to w by the "
          f"link and rendered. Units are ranked by how much their sweep changes the image.</p>"
          + block(top, f"Most effective {len(top)} units") + block(bottom, f"Least effective {len(bottom)} units"))


def _factor_html(ctx, table: list[dict]) -> str:
  c = ctx.cfg("report")
  cols = ["unit", "image change", "moves most", "change (of range)", "next", "change",
          "class change", "r' follows"]

  def cells(r):
    return (r["unit"], f"{r['image_change']:.3f}", r["top_factor"], f"{r['top_delta']:+.3f}",
            r["second_factor"], f"{r['second_delta']:+.3f}", f"{r['class_change']:.3f}",
            f"{r['r_follow']:.2f}")
  shown = page.table(cols, [cells(r) for r in table[:c.table_rows]])
  rest = table[c.table_rows:]
  fold = (f"<details><summary>all {len(table)} units</summary>"
          + page.table(cols, [cells(r) for r in rest]) + "</details>") if rest else ""
  best: dict[str, tuple[int, float]] = {}
  counts: dict[str, int] = {}
  for r in table:
    f, d = r["top_factor"], r["top_delta"]
    if f not in best or abs(d) > abs(best[f][1]):
      best[f] = (r["unit"], d)
    counts[f] = counts.get(f, 0) + 1
  per_factor = page.table(["factor", "units moving it most", "strongest unit", "its change"],
                          [(f, counts[f], best[f][0], f"{best[f][1]:+.3f}")
                           for f in sorted(best, key=lambda f: -abs(best[f][1]))])
  return ("<h2>Units and the ground truth</h2><p>For each swept unit, the known factor of the "
          "world that its sweep moves most (first vs last step, decoded from the sweep's w by "
          "the generator's own truth; change as a fraction of the factor's range, mean over "
          "start samples). <i>image change</i>: mean |last - first step| of the images (0..1). "
          "<i>class change</i>: how far the object's class (its shape "
          "template) moves (total variation, 0..1). <i>r' follows</i>: change of the unit's own "
          "activation when the generated images are re-classified, per unit of set value.</p>"
          + shown + fold + "<h3>Per factor</h3>" + per_factor)


def summary(ctx) -> dict | None:
  """{'units': the unit table} for report/summary.json."""
  if not os.path.exists(os.path.join(ctx.out_dir(NAME), "unit_factors.csv")):
    return None
  return {"units": ctx.result(NAME).units}


STAGE = Stage(name=NAME, requires=("link",), default_config=default_config, run=run, load=load,
              uses=("classes", "psi"), section=section, summary=summary, ignores=("batch_size",),
              merge=merge,
              rules=RULES)
