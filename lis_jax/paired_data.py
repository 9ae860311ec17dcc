"""Stage `paired_data`: (w, r) pairs from generated images the classifier gets right.

Per class c, latent i of the class's stream is `z = normal(fold_in(fold_in(key, c), i))`
(independent of batch size and device count, so a resumed or sharded run draws the same
samples); `ws = G.mapping(z, c, psi)` (truncation toward the class's w_avg), the image
`G.synthesis(ws)` is classified, and samples classified as c are kept (with
`keep_only_correct`) until `n_per_class` are stored. The reference keeps `ws[:, 0]`.

Outputs: WORKSPACE.md, section `paired_data/`.
"""
from __future__ import annotations

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from lis_jax import distribute
from lis_jax import io
from lis_jax import pipeline

MANIFEST = "manifest.json"


def latents(key: jax.Array, cls: jax.Array, index: jax.Array, z_dim: int) -> jax.Array:
  """z for (class, index-in-class-stream) pairs.

  Args:
    key: the run's root PRNG key.
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
    key: the run's root PRNG key.
    cls: [N] int class ids. index: [N] int positions in the class streams.
    psi: truncation toward the class's w_avg (1 = none).
  Returns:
    ws [N, num_ws, w_dim], r [N, D], logits [N, C].
  """
  z = latents(key, cls, index, G.z_dim)                    # [N, z_dim]
  ws = G.mapping(z, cls, psi=psi)                          # [N, num_ws, w_dim]
  img = G.synthesis(ws)                                    # [N, H, W, 3]
  r = clf.features(clf.preprocess(img))                    # [N, D]
  return ws, r, clf.head(r)


_generate = jax.jit(generate, static_argnames=("psi",))


def _fingerprint(config: ml_collections.ConfigDict) -> dict:
  p = config.paired_data
  return dict(generator=config.generator, classifier=config.classifier, classes=config.classes,
              psi=config.psi, seed=config.seed, n_per_class=p.n_per_class,
              shard_size=p.shard_size, keep_only_correct=p.keep_only_correct,
              store_all_ws=p.store_all_ws)


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Stage entry: fills `workdir/paired_data/`, resuming from its manifest."""
  p = config.paired_data
  out_dir = pipeline.stage_dir(workdir, "paired_data")
  G, clf = pipeline.load_models(config, workdir)
  classes = pipeline.parse_classes(config.classes, clf.num_classes)
  if p.n_per_class < 1 or p.shard_size < 1 or p.batch_size < 1:
    raise pipeline.PipelineError("paired_data.n_per_class, shard_size and batch_size must be >= 1")

  mpath = os.path.join(out_dir, MANIFEST)
  manifest = io.read_json(mpath) if os.path.exists(mpath) else {
      "classes": classes.tolist(), "complete": False,
      "per_class": {str(c): {"tried": 0, "kept": 0, "shards": []} for c in classes.tolist()},
      "w_dim": G.w_dim, "num_ws": G.num_ws, "feature_dim": clf.feature_dim,
      "num_classes": clf.num_classes}
  if manifest["complete"]:
    print(f"[paired_data] {out_dir} is complete; nothing to do")
    return

  mesh = distribute.data_mesh()
  batch = distribute.round_up(p.batch_size, mesh)
  G_r, clf_r = distribute.replicate((G, clf), mesh)
  key = jax.random.PRNGKey(config.seed)
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
        arrays = _chunk(G_r, clf_r, key, c, start, p.shard_size, batch, config.psi, mesh)
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
        pipeline.maybe_interrupt("paired_data", written)
        state["tried"] += p.shard_size
        state["kept"] += int(keep.sum())
        state["shards"].append(name)
        io.write_json(mpath, manifest)
        bar.update(int(keep.sum()))
        bar.set_postfix(img_s=f"{n_img / max(time.time() - t0, 1e-9):.1f}")
  manifest["complete"] = True
  io.write_json(mpath, manifest)


def _chunk(G, clf, key, c: int, start: int, size: int, batch: int, psi: float, mesh) -> dict:
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


def has_ws(workdir: str) -> bool:
  """Whether the paired data of `workdir` stored all ws (paired_data.store_all_ws)."""
  out_dir = pipeline.stage_dir(workdir, "paired_data")
  mpath = pipeline.require(os.path.join(out_dir, MANIFEST), "paired_data")
  manifest = io.read_json(mpath)
  for c in manifest["classes"]:
    for name in manifest["per_class"][str(c)]["shards"]:
      with np.load(os.path.join(out_dir, name)) as f:
        return "ws" in f.files
  return False


def load(workdir: str, with_ws: bool = False) -> dict[str, np.ndarray]:
  """All paired data of a finished stage, rows in class order then shard order.

  Args:
    workdir: the pipeline workdir.
    with_ws: also return `ws` [N, num_ws, w_dim] (needs paired_data.store_all_ws).
  Returns:
    {'cls': [N], 'seed_index': [N], 'w': [N, w_dim], 'r': [N, D], 'logits': [N, C]}.
  Raises:
    PipelineError: the stage has not run or not finished.
  """
  out_dir = pipeline.stage_dir(workdir, "paired_data")
  mpath = pipeline.require(os.path.join(out_dir, MANIFEST), "paired_data")
  manifest = io.read_json(mpath)
  if not manifest["complete"]:
    raise pipeline.PipelineError(f"{out_dir} is incomplete: run the 'paired_data' stage again "
                                 f"to finish it")
  keys = ["cls", "seed_index", "w", "r", "logits"] + (["ws"] if with_ws else [])
  parts: dict[str, list] = {k: [] for k in keys}
  for c in manifest["classes"]:
    for name in manifest["per_class"][str(c)]["shards"]:
      with np.load(os.path.join(out_dir, name)) as f:
        if with_ws and "ws" not in f:
          raise pipeline.PipelineError(f"{out_dir} has no ws: set paired_data.store_all_ws=True")
        for k in keys:
          parts[k].append(f[k])
  return {k: np.concatenate(v) for k, v in parts.items()}
