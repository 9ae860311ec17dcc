"""Stage `paired_data`: (w, r) pairs from generated images the classifier gets right.

Per class c, latent i of the class's stream is `z = normal(ctx.key("paired_data", c, i))`
(independent of batch size and device count, so a resumed or sharded run draws the same
samples); `ws = G.mapping(z, c, psi)` (truncation toward the class's w_avg), the image
`G.synthesis(ws)` is classified, and samples classified as c are kept (with
`keep_only_correct`) until `n_per_class` are stored. The reference keeps `ws[:, 0]`.

Outputs: WORKSPACE.md, section `paired_data/`.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from lis_jax import distribute
from lis_jax import io
from lis_jax import pipeline
from lis_jax.stages.base import Stage

NAME = "paired_data"
MANIFEST = "manifest.json"


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.n_per_class = 5000  # kept samples per class (the reference's N)
  c.keep_only_correct = True  # keep only images classified as their class
  c.store_all_ws = False  # also store all ws [num_ws, w_dim] (they are equal)
  c.batch_size = 32  # images per jitted call (rounded up to the device count)
  c.shard_size = 512  # tried latents per shard file (resume granularity)
  c.max_tries_factor = 20.0  # give up on a class after this many x n tries
  return c


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


def run(ctx) -> None:
  """Fills `workdir/paired_data/`, resuming from its manifest."""
  p = ctx.cfg(NAME)
  out_dir = ctx.out_dir(NAME)
  if p.n_per_class < 1 or p.shard_size < 1 or p.batch_size < 1:
    raise pipeline.PipelineError("paired_data.n_per_class, shard_size and batch_size must be >= 1")
  G, clf, classes = ctx.G, ctx.clf, ctx.classes
  mpath = os.path.join(out_dir, MANIFEST)
  manifest = io.read_json(mpath) if os.path.exists(mpath) else {
      "classes": classes.tolist(), "complete": False,
      "per_class": {str(c): {"tried": 0, "kept": 0, "shards": []} for c in classes.tolist()},
      "w_dim": G.w_dim, "num_ws": G.num_ws, "feature_dim": clf.feature_dim,
      "num_classes": clf.num_classes}
  if manifest["complete"]:
    print(f"[paired_data] {out_dir} is complete; nothing to do")
    return

  mesh = ctx.mesh
  batch = distribute.round_up(p.batch_size, mesh)
  G_r, clf_r = distribute.replicate((G, clf), mesh)
  key = ctx.key(NAME)
  max_tries = int(np.ceil(p.n_per_class * p.max_tries_factor))
  total = p.n_per_class * len(classes)
  done0 = sum(v["kept"] for v in manifest["per_class"].values())
  written = 0
  t0, n_img = time.time(), 0
  with tqdm(total=total, initial=done0, unit="sample", desc="paired_data") as bar:
    for c in classes.tolist():
      state = manifest["per_class"][str(c)]
      while state["kept"] < p.n_per_class:
        if state["tried"] >= max_tries:
          raise pipeline.PipelineError(
              f"class {c}: only {state['kept']} of {state['tried']} generated images were "
              f"classified as {c} (need {p.n_per_class}); raise paired_data.max_tries_factor "
              f"or set paired_data.keep_only_correct=False")
        start = state["tried"]
        arrays = generate_chunk(G_r, clf_r, key, c, start, p.shard_size, batch, ctx.config.psi, mesh)
        n_img += p.shard_size
        pred = arrays["logits"].argmax(-1)
        keep = (pred == c) if p.keep_only_correct else np.ones_like(pred, bool)
        keep &= np.cumsum(keep) <= p.n_per_class - state["kept"]
        shard = {k: v[keep] for k, v in arrays.items() if k != "ws" or p.store_all_ws}
        for k in ("w", "r", "logits"):
          pipeline.check_finite(f"paired_data class {c} {k}", shard[k])
        name = f"shard_c{c:04d}_{start // p.shard_size:05d}.npz"
        io.savez(os.path.join(out_dir, name), **shard)
        written += 1
        pipeline.maybe_interrupt(NAME, written)
        state["tried"] += p.shard_size
        state["kept"] += int(keep.sum())
        state["shards"].append(name)
        io.write_json(mpath, manifest)
        bar.update(int(keep.sum()))
        bar.set_postfix(img_s=f"{n_img / max(time.time() - t0, 1e-9):.1f}")
  manifest["complete"] = True
  io.write_json(mpath, manifest)


def generate_chunk(G, clf, key, c: int, start: int, size: int, batch: int, psi: float, mesh) -> dict:
  """Generates tried latents [start, start + size) of class c, in sharded batches."""
  outs = []
  for b0 in range(start, start + size, batch):
    n = min(batch, start + size - b0)
    index = distribute.pad_batch(np.arange(b0, b0 + n, dtype=np.int32), batch)
    cls = np.full((batch,), c, np.int32)
    cls, index = distribute.shard_batch((cls, index), mesh)
    outs.append((n, _generate(G, clf, key, cls, index, psi=psi)))   # Dispatched asynchronously.
  ws, r, logits = (np.concatenate([np.asarray(res[j])[:n] for n, res in outs]) for j in range(3))
  return {"cls": np.full((size,), c, np.int32),
          "seed_index": np.arange(start, start + size, dtype=np.int32),
          "w": ws[:, 0], "ws": ws, "r": r, "logits": logits}


def load(workdir: str) -> PairedData:
  """All paired data of a finished stage (ws too when it was stored).

  Raises:
    PipelineError: the stage has not run or not finished.
  """
  out_dir = os.path.join(workdir, NAME)
  manifest = io.read_json(pipeline.require(os.path.join(out_dir, MANIFEST), NAME))
  if not manifest["complete"]:
    raise pipeline.PipelineError(f"{out_dir} is incomplete: run the 'paired_data' stage again "
                                 f"to finish it")
  parts: dict[str, list] = {}
  for c in manifest["classes"]:
    for name in manifest["per_class"][str(c)]["shards"]:
      with np.load(os.path.join(out_dir, name)) as f:
        for k in f.files:
          parts.setdefault(k, []).append(f[k])
  return PairedData(**{k: np.concatenate(v) for k, v in parts.items()})


STAGE = Stage(name=NAME, requires=(), default_config=default_config, run=run, load=load,
              uses=("generator", "classifier", "classes", "psi", "seed"),
              ignores=("batch_size", "max_tries_factor"))
