"""Data parallelism over `jax.devices()` with `jax.sharding`.

The pipeline's batches (latents, sweep images, counterfactual searches) are split along
their leading axis over a 1-D mesh of all devices; models are replicated. XLA (GSPMD)
partitions the jitted computation; results are the same arrays as on one device.
On CPU, `XLA_FLAGS=--xla_force_host_platform_device_count=4` simulates 4 devices.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def data_mesh() -> Mesh:
  """A 1-D mesh over every device, axis name `DATA_AXIS`."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def num_shards(mesh: Mesh) -> int:
  return mesh.shape[DATA_AXIS]


def round_up(n: int, mesh: Mesh) -> int:
  """The smallest multiple of the device count >= n (a batch size every device can split)."""
  k = num_shards(mesh)
  return -(-max(n, 1) // k) * k


def shard_batch(tree: Any, mesh: Mesh) -> Any:
  """Places every array of `tree` split along axis 0 over the mesh (axis 0 must divide)."""
  def put(x):
    spec = PartitionSpec(DATA_AXIS, *([None] * (np.ndim(x) - 1)))
    return jax.device_put(x, NamedSharding(mesh, spec))
  return jax.tree_util.tree_map(put, tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a full copy of every array of `tree` (e.g. model params) on each device."""
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def pad_batch(x: np.ndarray, size: int) -> np.ndarray:
  """Pads axis 0 of `x` to `size` by repeating its last row (results for pads are dropped)."""
  x = np.asarray(x)
  if x.shape[0] == size:
    return x
  if x.shape[0] > size or x.shape[0] == 0:
    raise ValueError(f"cannot pad a batch of {x.shape[0]} rows to {size}")
  reps = np.repeat(x[-1:], size - x.shape[0], axis=0)
  return np.concatenate([x, reps], axis=0)
