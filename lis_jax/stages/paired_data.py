"""Stage `paired_data`: (w, r) pairs from generated images the classifier gets right.

Per class c, latent i of the class's stream is `z = normal(ctx.key("paired_data", c, i))`
(independent of batch size and device count, so a resumed or sharded run draws the same
samples); `ws = G.mapping(z, c, psi)` (truncation toward the class's w_avg), the image
`G.synthesis(ws)` is classified, and samples classified as c are kept (with
`keep_only_correct`) until `n_per_class` are stored; latents are tried in chunks of
`shard_size`, one shard file each, split over the processes of a multi-process run. The reference keeps `ws[:, 0]`.

Outputs: WORKSPACE.md, section `paired_data/`.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from lis_jax import distribute
from lis_jax import io
from lis_jax import memory
from lis_jax import errors
from lis_jax import validate as V
from lis_jax.stages.base import Stage

NAME = "paired_data"
MANIFEST = "manifest.json"
# How often a process waiting for other processes' chunks looks for them.
POLL_SECONDS = 0.5


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.n_per_class = 5000  # kept samples per class (the reference's N)
  c.keep_only_correct = True  # keep only images classified as their class
  c.store_all_ws = False  # also store all ws [num_ws, w_dim] (they are equal)
  c.batch_size = 32  # images per jitted call (rounded up to the device count)
  c.shard_size = 512  # tried latents per shard file (resume granularity)
  c.max_tries_factor = 20.0  # give up on a class after this many x n tries
  return c


# Values a run accepts (lis_jax/validate.py's rule kinds), checked before anything runs.
RULES = {
    "n_per_class": V.pos_int(), "batch_size": V.pos_int(), "shard_size": V.pos_int(),
    "max_tries_factor": ("float", 1.0, None),
}


@dataclasses.dataclass(frozen=True)
class PairedData:
  """All kept pairs, rows in class order then shard order.

  cls [N] int32, seed_index [N] int32 (position in the class's latent stream),
  w [N, w_dim], r [N, D], logits [N, C]; ws [N, num_ws, w_dim] or None (store_all_ws).
  """
  cls: np.ndarray
  seed_index: np.ndarray
  w: np.ndarray
  r: np.ndarray
  logits: np.ndarray
  ws: np.ndarray | None = None


def latents(key: jax.Array, cls: jax.Array, index: jax.Array, z_dim: int) -> jax.Array:
  """z for (class, index-in-class-stream) pairs.

  Args:
    key: the stage's stream key, `ctx.key("paired_data")`.
    cls: [N] int class ids.
    index: [N] int positions in each class's latent stream.
    z_dim: latent size.
  Returns:
    [N, z_dim] float32 standard normal, a pure function of (key, cls, index).
  """
  def one(c, i):
    return jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, c), i), (z_dim,))
  return jax.vmap(one)(cls, index)


def generate(G: Any, clf: Any, key: jax.Array, cls: jax.Array, index: jax.Array, psi: float):
  """Generates and classifies one batch (jit with `psi` static).

  Args:
    G: generator (pytree). clf: classifier (pytree).
    key: the stage's stream key. cls: [N] int class ids. index: [N] int positions in
      the class streams. psi: truncation toward the class's w_avg (1 = none).
  Returns:
    ws [N, num_ws, w_dim], r [N, D], logits [N, C].
  """
  z = latents(key, cls, index, G.z_dim)                    # [N, z_dim]
  ws = G.mapping(z, cls, psi=psi)                          # [N, num_ws, w_dim]
  img = G.synthesis(ws)                                    # [N, H, W, 3]
  r = clf.features(clf.preprocess(img))                    # [N, D]
  return ws, r, clf.head(r)


_generate = jax.jit(generate, static_argnames=("psi",))


def _generate_rows(G, clf, key, rows, psi):
  """`_generate` with (cls, index) as one batch of rows (memory.choose_batch's form)."""
  return _generate(G, clf, key, rows[0], rows[1], psi=psi)


def fitting_batch(ctx, G, clf, key, max_batch: int) -> int:
  """The largest batch <= max_batch (a multiple of the device count) that fits the memory."""
  rows = (jax.ShapeDtypeStruct((max_batch,), np.int32),) * 2
  return memory.choose_batch(functools.partial(_generate_rows, psi=ctx.config.psi), rows, max_batch,
                             G, clf, key, budget=ctx.budget, call="generate",
                             setting="paired_data.batch_size", stage=NAME,
                             multiple=distribute.round_up(1, ctx.mesh)).batch


def _shard_name(c: int, k: int) -> str:
  return f"shard_c{c:04d}_{k:05d}.npz"


def _kept(out_dir: str, name: str, cache: dict) -> int | None:
  """Rows of a shard file (None if not written yet); finished files never change."""
  if name not in cache:
    path = os.path.join(out_dir, name)
    if not os.path.exists(path):
      return None
    try:
      cache[name] = int(io.load_npz(path, finite=FINITE)["cls"].shape[0])
    except io.CorruptFileError as e:   # damaged after it was written: generate it again
      print(f"[{NAME}] {e}; recomputing it", flush=True)
      _remove(path)
      return None
  return cache[name]


def max_chunks(p: ml_collections.ConfigDict) -> int:
  """Chunks a class may try before the stage gives up on it (max_tries_factor x n_per_class latents)."""
  return -(-int(np.ceil(p.n_per_class * p.max_tries_factor)) // p.shard_size)


def needed_shards(out_dir: str, c: int, n_per_class: int, cache: dict) -> list[str] | None:
  """The shards 0, 1, ... of class c that hold its first n_per_class kept samples, or None
  while a shard among them is missing or they hold fewer."""
  names, kept, k = [], 0, 0
  while kept < n_per_class:
    name = _shard_name(c, k)
    n = _kept(out_dir, name, cache)
    if n is None:
      return None
    names.append(name)
    kept += n
    k += 1
  return names


def run(ctx) -> None:
  """This process's shards of `workdir/paired_data/` (a shard file that exists is done).

  Work items are chunks (class c, k) of `shard_size` tried latents; a multi-process
  run gives chunk k of the i-th class to process (k + i) % process_count. A class needs
  chunks 0, 1, ... until n_per_class samples are kept. A process computes its next chunk
  k of a class only if the chunks before it cannot hold enough samples even if every
  missing one (another process's) kept all its latents; otherwise it turns to other
  classes and comes back when those chunks exist. So no chunk past the needed ones is
  computed, and one process computes exactly the chunks of a single-process run.
  `merge` (process 0) writes the manifest.
  """
  p = ctx.cfg(NAME)
  out_dir = ctx.out_dir(NAME)
  if p.n_per_class < 1 or p.shard_size < 1 or p.batch_size < 1:
    raise errors.PipelineError("paired_data.n_per_class, shard_size and batch_size must be >= 1")
  G, clf, classes = ctx.G, ctx.clf, ctx.classes
  mpath = os.path.join(out_dir, MANIFEST)
  if os.path.exists(mpath):
    manifest = _read_manifest(mpath)
    if manifest["complete"] and not _drop_corrupt_shards(out_dir, manifest, mpath):
      ctx.log(f"[paired_data] {out_dir} is complete; nothing to do")
      return

  mesh = ctx.mesh
  # A shard (shard_size latents, the same for every chunk) smaller than a batch is one batch.
  batch = distribute.round_up(min(p.batch_size, p.shard_size), mesh)
  key = ctx.key(NAME)
  batch = fitting_batch(ctx, G, clf, key, batch)
  G_r, clf_r = distribute.replicate((G, clf), mesh)
  me, count = ctx.process_index, ctx.process_count
  cache: dict[str, int] = {}
  # Chunk k of the i-th class belongs to process (k + i) % count: balanced over the classes.
  next_k = {c: (me - i) % count for i, c in enumerate(classes.tolist())}   # this process's next chunk
  written = 0
  t0, n_img = time.time(), 0

  def advance(c: int) -> bool:
    """Computes this process's chunks of class c while they are surely needed; True: class done."""
    nonlocal written, n_img
    while True:
      k = next_k[c]
      if k >= max_chunks(p) or needed_shards(out_dir, c, p.n_per_class, cache) is not None:
        return True
      name = _shard_name(c, k)
      if _kept(out_dir, name, cache) is None:
        before = [_kept(out_dir, _shard_name(c, j), cache) for j in range(k)]
        if sum(p.shard_size if n is None else n for n in before) >= p.n_per_class:
          return False   # chunks of other processes may suffice: decide once they exist
        with memory.guard(NAME, "generate", batch, "paired_data.batch_size"):
          arrays = generate_chunk(G_r, clf_r, key, c, k * p.shard_size, p.shard_size, batch,
                                  ctx.config.psi, mesh)
        n_img += p.shard_size
        pred = arrays["logits"].argmax(-1)
        keep = (pred == c) if p.keep_only_correct else np.ones_like(pred, bool)
        shard = {k_: v[keep] for k_, v in arrays.items() if k_ != "ws" or p.store_all_ws}
        for k_ in FINITE:
          errors.check_finite(f"paired_data class {c} {k_}", shard[k_])
        io.save_npz(os.path.join(out_dir, name), **shard)
        written += 1
        errors.maybe_interrupt(NAME, written)
        bar.set_postfix(img_s=f"{n_img / max(time.time() - t0, 1e-9):.3g}")   # 3 digits: 0.0179 at full size on a CPU, 55.2 on the world
      next_k[c] = k + count

  pending = classes.tolist()
  waiting_since = None
  with ctx.progress(total=len(pending), unit="class", desc="paired_data") as bar:
    while pending:
      n_before, n_pending = written, len(pending)
      for c in list(pending):
        if advance(c):
          pending.remove(c)
          bar.update(1)
      if pending and written == n_before and len(pending) == n_pending:
        waiting_since = waiting_since or time.monotonic()
        distribute.check_wait(waiting_since, f"other processes' chunks of class(es) {pending}")
        time.sleep(POLL_SECONDS)   # waiting for other processes' chunks
      else:
        waiting_since = None
  distribute.add_assigned(written)


def merge(ctx) -> None:
  """Process 0, after every process ran: the manifest over the needed shards of each class.

  Raises:
    PipelineError: a class kept too few samples within max_tries_factor x n_per_class tries.
  """
  p = ctx.cfg(NAME)
  out_dir = ctx.out_dir(NAME)
  mpath = os.path.join(out_dir, MANIFEST)
  if os.path.exists(mpath) and _read_manifest(mpath)["complete"]:
    return
  cache: dict[str, int] = {}
  per_class = {}
  for c in ctx.classes.tolist():
    names = needed_shards(out_dir, c, p.n_per_class, cache)
    if names is None:
      present = [n for n in (_shard_name(c, k) for k in range(max_chunks(p)))
                 if _kept(out_dir, n, cache) is not None]
      kept = sum(_kept(out_dir, n, cache) for n in present)
      raise errors.PipelineError(
          f"class {c}: only {kept} of {len(present) * p.shard_size} generated images were "
          f"classified as {c} (need {p.n_per_class}); raise paired_data.max_tries_factor or set "
          f"paired_data.keep_only_correct=False")
    per_class[str(c)] = {"tried": len(names) * p.shard_size, "kept": p.n_per_class, "shards": names}
  io.write_json(mpath, {"classes": ctx.classes.tolist(), "complete": True, "per_class": per_class,
                        "w_dim": ctx.G.w_dim, "num_ws": ctx.G.num_ws,
                        "feature_dim": ctx.clf.feature_dim, "num_classes": ctx.clf.num_classes})


# Shard arrays that must be finite when read.
FINITE = ("w", "r", "logits")


def _read_manifest(mpath: str) -> dict:
  try:
    return io.read_json_checked(mpath)
  except io.CorruptFileError as e:
    raise errors.PipelineError(f"{e}: the record of which shards are done is lost; delete "
                                 f"{os.path.dirname(mpath)} and run again") from None


def _drop_corrupt_shards(out_dir: str, manifest: dict, mpath: str) -> bool:
  """Verifies the shards a complete manifest lists; a corrupt or missing one is deleted
  together with the manifest, so the run generates it again (identically: latents are a
  function of their index) and `merge` records the manifest anew. Says so in the log;
  returns whether it dropped anything."""
  changed = False
  for c, state in manifest["per_class"].items():
    for name in state["shards"]:
      path = os.path.join(out_dir, name)
      try:
        io.load_npz(path, finite=FINITE)
      except io.CorruptFileError as e:
        print(f"[{NAME}] {e}; recomputing it", flush=True)
        _remove(path)
        changed = True
  if changed:
    _remove(mpath)
  return changed


def _remove(path: str) -> None:
  try:
    os.remove(path)
  except FileNotFoundError:   # another process removed it first
    pass


def generate_chunk(G, clf, key, c: int, start: int, size: int, batch: int, psi: float, mesh) -> dict:
  """Generates tried latents [start, start + size) of class c, in sharded batches."""
  outs = []
  # Dispatched asynchronously, but over several CPU devices each batch is finished before the
  # next is sent (distribute.one_call_at_a_time: the call's all-gathers).
  done_first = distribute.finish_each(mesh)
  for b0 in range(start, start + size, batch):
    n = min(batch, start + size - b0)
    index = distribute.pad_batch(np.arange(b0, b0 + n, dtype=np.int32), batch)
    cls = np.full((batch,), c, np.int32)
    cls, index = distribute.shard_batch((cls, index), mesh)
    outs.append((n, done_first(_generate(G, clf, key, cls, index, psi=psi))))
  ws, r, logits = (np.concatenate([np.asarray(res[j])[:n] for n, res in outs]) for j in range(3))
  return {"cls": np.full((size,), c, np.int32),
          "seed_index": np.arange(start, start + size, dtype=np.int32),
          "w": ws[:, 0], "ws": ws, "r": r, "logits": logits}


def load(workdir: str) -> PairedData:
  """All paired data of a finished stage (ws too when it was stored).

  Raises:
    PipelineError: the stage has not run or not finished.
    io.CorruptFileError: a shard is missing, corrupt or holds NaN/inf (the runner then
      runs this stage again, which regenerates it).
  """
  out_dir = os.path.join(workdir, NAME)
  manifest = _read_manifest(errors.require(os.path.join(out_dir, MANIFEST), NAME))
  if not manifest["complete"]:
    raise errors.PipelineError(f"{out_dir} is incomplete: run the 'paired_data' stage again "
                                 f"to finish it")
  parts: dict[str, list] = {}
  for c in manifest["classes"]:
    left = int(manifest["per_class"][str(c)]["kept"])   # the last shard may hold more than that
    for name in manifest["per_class"][str(c)]["shards"]:
      f = io.load_npz(os.path.join(out_dir, name), finite=FINITE, keys=("cls", "seed_index") + FINITE)
      n = min(left, f["cls"].shape[0])
      for k, v in f.items():
        parts.setdefault(k, []).append(v[:n])
      left -= n
  return PairedData(**{k: np.concatenate(v) for k, v in parts.items()})


STAGE = Stage(name=NAME, requires=(), default_config=default_config, run=run, load=load,
              uses=("generator", "classifier", "feature_layer", "quantize", "classes", "psi", "seed"),
              ignores=("batch_size", "max_tries_factor"), merge=merge,
              rules=RULES)
