"""Stage `sweep`: set one classifier unit to a range of values, link to w, synthesize.

For a unit i and a start representation r, r_i is set to `n_steps` values spaced over
the unit's observed [min, max] over the paired data (the reference's choice) or over
mean +- k std; each r is linked to w, broadcast over the ws and synthesized; the images
are re-classified (does the swept unit's own activation follow?). One jitted function
does a whole block of units (vmapped over units, batched over images, sharded over
devices); blocks stream to disk and a killed run resumes at the first missing block.

Outputs: WORKSPACE.md, section `sweep/`.
"""
from __future__ import annotations

import concurrent.futures
import csv
import functools
import io as _io
import os
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from PIL import Image
from tqdm import tqdm

from lis_jax import distribute
from lis_jax import io
from lis_jax import pipeline

INDEX_COLUMNS = ("block", "unit", "sample", "cls", "step", "value", "r_prime_unit", "pred",
                 "p_cls", "png")


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


def to_uint8(img: jax.Array) -> jax.Array:
  """[-1, 1] float image -> uint8 as the reference saves it ((x + 1) * 255/2, clamp, truncate)."""
  return jnp.clip((img + 1) * (255 / 2.0), 0, 255).astype(jnp.uint8)


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

  def process(wb):
    img = G.synthesis(pipeline.broadcast_ws(wb, G.num_ws))  # [B, H, W, 3]
    out = {"img": to_uint8(img)}
    if reclassify:
      r = clf.features(clf.preprocess(img))                 # [B, D]
      out.update(r_prime=r, logits=clf.head(r))
    return out

  res = jax.lax.map(process, chunks)
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


def sweep_values(r: np.ndarray, units: np.ndarray, n_steps: int, mode: str = "minmax",
                 k_std: float = 2.0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """The values each unit is swept through, from its statistics over r [N, D].

  Returns:
    values [U, n_steps] (linspace over [min, max], or mean +- k_std * std), and the
    per-unit statistics {'min', 'max', 'mean', 'std'} [U].
  """
  x = np.asarray(r, np.float64)[:, units]
  stats = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0)}
  if mode == "minmax":
    lo, hi = stats["min"], stats["max"]
  elif mode == "std":
    lo, hi = stats["mean"] - k_std * stats["std"], stats["mean"] + k_std * stats["std"]
  else:
    raise pipeline.PipelineError(f"sweep.range={mode!r}: expected 'minmax' or 'std'")
  values = np.linspace(lo, hi, n_steps, axis=1).astype(np.float32)
  return values, stats


def start_rows(cls: np.ndarray, classes: np.ndarray, per_class: int) -> np.ndarray:
  """The first `per_class` paired-data rows of each class, in class order."""
  rows = []
  for c in classes:
    found = np.flatnonzero(cls == c)
    if found.size < per_class:
      raise pipeline.PipelineError(f"sweep.samples_per_class={per_class} but the paired data "
                                   f"has only {found.size} samples of class {c}")
    rows.append(found[:per_class])
  return np.concatenate(rows).astype(np.int32)


def fingerprint(config: ml_collections.ConfigDict) -> dict:
  from lis_jax import linking
  sweep = {k: v for k, v in config.sweep.to_dict().items() if k != "batch_size"}
  return {**linking.fingerprint(config), "sweep": sweep}


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Stage entry: sweeps `config.sweep.units` block by block into `workdir/sweep/`."""
  from lis_jax import linking, paired_data
  c = config.sweep
  out_dir = pipeline.stage_dir(workdir, "sweep")
  data = paired_data.load(workdir)
  link = linking.load_fitted(workdir)
  G, clf = pipeline.load_models(config, workdir)
  units = pipeline.parse_units(c.units, clf.feature_dim)
  if c.n_steps < 2 or c.units_per_block < 1 or c.batch_size < 1:
    raise pipeline.PipelineError("sweep.n_steps must be >= 2, units_per_block and batch_size >= 1")
  classes = pipeline.parse_classes(config.classes, clf.num_classes)

  rows = start_rows(data["cls"], classes, c.samples_per_class)
  r_start, cls_start = data["r"][rows], data["cls"][rows]
  values, stats = sweep_values(data["r"], units, c.n_steps, c.range, c.k_std)
  io.savez(os.path.join(out_dir, "samples.npz"), rows=rows, cls=cls_start, r=r_start)
  with io.atomic_file(os.path.join(out_dir, "activation_ranges.csv"), "w") as f:
    wr = csv.writer(f)
    wr.writerow(["unit", "min", "max", "mean", "std"])
    for i, u in enumerate(units):
      wr.writerow([int(u)] + [repr(float(stats[k][i])) for k in ("min", "max", "mean", "std")])

  mesh = distribute.data_mesh()
  batch = distribute.round_up(c.batch_size, mesh)
  G_r, clf_r, link_r, r_start_d, cls_d = distribute.replicate((G, clf, link, r_start, cls_start), mesh)
  U = c.units_per_block
  n_blocks = -(-units.size // U)
  todo = [b for b in range(n_blocks) if not os.path.exists(_block_path(out_dir, b))]
  n_img = U * rows.size * c.n_steps
  call = functools.partial(_sweep_block, batch_size=batch, reclassify=c.reclassify, mesh=mesh)

  def dispatch(b):
    bu = distribute.pad_batch(units[b * U:(b + 1) * U], U)
    bv = distribute.pad_batch(values[b * U:(b + 1) * U], U)
    n_valid = min(U, units.size - b * U)
    return b, n_valid, call(G_r, clf_r, link_r, r_start_d, bu, bv, cls_d)

  t0, done = time.time(), 0
  with tqdm(total=n_blocks, initial=n_blocks - len(todo), unit="block", desc="sweep") as bar, \
      concurrent.futures.ThreadPoolExecutor(1) as pool:
    pending = None
    writing = None
    for b in todo + [None]:
      nxt = dispatch(b) if b is not None else None           # runs while we write the last
      if pending is not None:
        pb, n_valid, out = pending
        host = {k: np.asarray(v)[:n_valid] for k, v in out.items()}
        pipeline.check_finite(f"sweep block {pb} w", host["w"])
        if writing is not None:
          writing.result()
        meta = dict(units=units[pb * U:pb * U + n_valid], samples=rows, cls=cls_start,
                    values=values[pb * U:pb * U + n_valid])
        writing = pool.submit(_write_block, out_dir, pb, host, meta, c)
        done += 1
        bar.update(1)
        bar.set_postfix(img_s=f"{done * n_img / max(time.time() - t0, 1e-9):.1f}")
      pending = nxt
    if writing is not None:
      writing.result()
  _write_index(out_dir, n_blocks)


def _block_path(out_dir: str, b: int) -> str:
  return os.path.join(out_dir, f"block_{b:05d}.npz")


def _strip_path(b: int, unit: int, row: int) -> str:
  return os.path.join("strips", f"block_{b:05d}", f"u{unit:05d}_s{row:06d}.png")


def _write_block(out_dir: str, b: int, host: dict, meta: dict, c: ml_collections.ConfigDict) -> None:
  """PNG strips first, the block's npz last: the npz existing means the block is complete."""
  if c.save_png:
    img = host["img"]                                        # [U, S, T, H, W, 3]
    for i, u in enumerate(meta["units"]):
      for j, row in enumerate(meta["samples"]):
        strip = np.concatenate(list(img[i, j]), axis=1)      # [H, T * W, 3]
        buf = _io.BytesIO()
        Image.fromarray(strip).save(buf, "PNG", compress_level=1)
        with io.atomic_file(os.path.join(out_dir, _strip_path(b, int(u), int(row))), "wb") as f:
          f.write(buf.getvalue())
  arrays = dict(meta, w=host["w"])
  if c.reclassify:
    arrays.update(r_prime_unit=host["r_prime_unit"], pred=host["pred"], p_cls=host["p_cls"])
    if c.store_r_prime:
      arrays["r_prime"] = host["r_prime"]
    if c.store_logits:
      arrays["logits"] = host["logits"]
  pipeline.maybe_interrupt("sweep", b + 1)
  io.savez(_block_path(out_dir, b), **arrays)


def iter_blocks(workdir: str) -> Iterator[dict[str, np.ndarray]]:
  """Yields the sweep blocks of `workdir` in order (each a dict, keys in WORKSPACE.md)."""
  out_dir = pipeline.stage_dir(workdir, "sweep")
  b = 0
  while os.path.exists(_block_path(out_dir, b)):
    with np.load(_block_path(out_dir, b)) as f:
      yield {"block": b, **{k: f[k] for k in f.files}}
    b += 1


def _write_index(out_dir: str, n_blocks: int) -> None:
  with io.atomic_file(os.path.join(out_dir, "index.csv"), "w") as f:
    wr = csv.writer(f)
    wr.writerow(INDEX_COLUMNS)
    for b in range(n_blocks):
      with np.load(_block_path(out_dir, b)) as blk:
        units, samples, cls, values = blk["units"], blk["samples"], blk["cls"], blk["values"]
        has_rc = "pred" in blk.files
        rpu, pred, pcls = (blk[k] if has_rc else None for k in ("r_prime_unit", "pred", "p_cls"))
        has_png = os.path.isdir(os.path.join(out_dir, "strips", f"block_{b:05d}"))
        for i, u in enumerate(units):
          for j, row in enumerate(samples):
            png = _strip_path(b, int(u), int(row)) if has_png else ""
            for t in range(values.shape[1]):
              wr.writerow([b, int(u), int(row), int(cls[j]), t, repr(float(values[i, t])),
                           repr(float(rpu[i, j, t])) if has_rc else "",
                           int(pred[i, j, t]) if has_rc else "",
                           repr(float(pcls[i, j, t])) if has_rc else "", png])
