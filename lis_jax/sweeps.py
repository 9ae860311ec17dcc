"""Shared by the sweep stage and the stages that read its blocks (quantify, the report):
which start samples they look at, and the reference's own start samples."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lis_jax import memory

REFERENCE_SEED = 136   # kaschube-lab/LinkingInStyle src/tune_units.py: get_rs_for_tuning(gen_seed=136)


def pick_starts(cls: np.ndarray, n: int) -> np.ndarray:
  """The start-sample picker: indices of n samples spread over the classes (round robin
  over classes, each class's first samples first), sorted. Used by every consumer of
  the sweep (quantify, the report) so they look at the same samples."""
  rank = np.zeros(cls.size, int)
  for c in np.unique(cls):
    idx = np.flatnonzero(cls == c)
    rank[idx] = np.arange(idx.size)
  order = np.lexsort((np.arange(cls.size), rank))
  return np.sort(order[:min(n, cls.size)])


def reference_latents(n: int, z_dim: int, seed: int = REFERENCE_SEED) -> np.ndarray:
  """The reference's start latents [n, z_dim]: `np.random.RandomState(seed).randn(n, z_dim)`,
  the same for every class (its `gen_utils.get_w_from_seed(G, n, ..., class_idx=c, seed)`).

  The reference's own seed, deliberately not a run-context stream: these are its samples.
  """
  return np.random.RandomState(seed).randn(n, z_dim).astype(np.float32)


@jax.jit
def _start_r(G: Any, clf: Any, psi: jax.Array, batch: dict) -> jax.Array:
  ws = G.mapping(batch["z"], batch["cls"], psi=psi)
  return clf.features(clf.preprocess(G.synthesis(ws)))


def reference_starts(G: Any, clf: Any, classes: np.ndarray, per_class: int, psi: float,
                     seed: int = REFERENCE_SEED, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
  """The reference's start samples: per class, `per_class` latents of its own seed, mapped
  with truncation `psi` toward the class, synthesized and classified; not filtered for
  correctness (its `get_rs_for_tuning`).

  Returns:
    r [len(classes) * per_class, D] float32, cls [same] int32 (class-major order).
  """
  z = reference_latents(per_class, G.z_dim, seed)
  cls = np.repeat(np.asarray(classes, np.int32), per_class)
  rows = {"z": np.tile(z, (len(classes), 1)), "cls": cls}
  r = memory.map_batches(_start_r, rows, batch_size, G, clf, jnp.float32(psi),
                         budget=memory.default_budget(), call="start samples",
                         setting="sweep.batch_size")
  return np.asarray(r, np.float32), cls
