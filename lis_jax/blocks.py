"""The block store: outputs written as one file per block, a file's existence = block done.

Stages that stream results (sweep blocks, counterfactual batches, quantify blocks) write
`<dir>/<prefix>_<b:05d>.npz` atomically (`io.savez`); a killed run resumes at the
missing blocks. Tests and benchmarks build workdirs through the same store.
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from lis_jax import io


class BlockStore:
  """Blocks `<directory>/<prefix>_<b:05d>.npz`."""

  def __init__(self, directory: str, prefix: str = "block"):
    self.directory = directory
    self.prefix = prefix

  def path(self, b: int) -> str:
    return os.path.join(self.directory, f"{self.prefix}_{b:05d}.npz")

  def done(self, b: int) -> bool:
    return os.path.exists(self.path(b))

  def todo(self, n: int) -> list[int]:
    """The blocks of 0..n-1 not written yet."""
    return [b for b in range(n) if not self.done(b)]

  def write(self, b: int, **arrays: np.ndarray) -> None:
    """Writes block b atomically (call last, after any side files of the block)."""
    io.savez(self.path(b), **arrays)

  def read(self, b: int) -> dict[str, np.ndarray]:
    with np.load(self.path(b)) as f:
      return {k: f[k] for k in f.files}

  def count(self) -> int:
    """Number of consecutive blocks 0.. that exist."""
    b = 0
    while self.done(b):
      b += 1
    return b

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    """Blocks 0, 1, ... in order while they exist, each with its index under 'block'."""
    for b in range(self.count()):
      yield {"block": b, **self.read(b)}

  def concat(self, n: int) -> dict[str, np.ndarray]:
    """Blocks 0..n-1 concatenated along axis 0, key by key."""
    parts = [self.read(b) for b in range(n)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
