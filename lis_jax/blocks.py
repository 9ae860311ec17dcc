"""The block store: outputs written as one file per block, a file's existence = block done.

Stages that stream results (sweep blocks, counterfactual batches, quantify blocks) write
`<dir>/<prefix>_<b:05d>.npz` atomically with a checksum (`io.save_npz`); a killed run
resumes at the missing blocks. Blocks are verified when read (checksum, NaN/inf in the
`finite` keys): `todo` treats a corrupt block as not done (and says so), `read` and
`blocks(n)` raise `io.CorruptFileError` for a corrupt or missing one. Tests and
benchmarks build workdirs through the same store.
"""
from __future__ import annotations

import os
from typing import Iterable, Iterator, Sequence

import numpy as np

from lis_jax import io


class BlockStore:
  """Blocks `<directory>/<prefix>_<b:05d>.npz`."""

  def __init__(self, directory: str, prefix: str = "block",
               finite: bool | Sequence[str] = True):
    self.directory = directory
    self.prefix = prefix
    self.finite = finite   # keys that must hold no NaN/inf (True: every float array)

  def path(self, b: int) -> str:
    return os.path.join(self.directory, f"{self.prefix}_{b:05d}.npz")

  def done(self, b: int) -> bool:
    return os.path.exists(self.path(b))

  def todo(self, n: int, items: Iterable[int] | None = None) -> list[int]:
    """The blocks of 0..n-1 (or of `items`, e.g. this process's share) not written yet, or
    corrupt (reported: they are recomputed)."""
    return [int(b) for b in (range(n) if items is None else items) if not self._ok(int(b))]

  def _ok(self, b: int) -> bool:
    if not self.done(b):
      return False
    try:
      self.read(b)
      return True
    except io.CorruptFileError as e:
      print(f"[{os.path.basename(self.directory)}] {e}; recomputing it", flush=True)
      return False

  def write(self, b: int, **arrays: np.ndarray) -> None:
    """Writes block b atomically (call last, after any side files of the block)."""
    io.save_npz(self.path(b), **arrays)

  def read(self, b: int) -> dict[str, np.ndarray]:
    """Block b, verified (io.CorruptFileError if missing, corrupt or non-finite)."""
    return io.load_npz(self.path(b), finite=self.finite)

  def blocks(self, n: int) -> Iterator[dict[str, np.ndarray]]:
    """Blocks 0..n-1 in order, each with its index under 'block'; all must be there."""
    for b in range(n):
      yield {"block": b, **self.read(b)}

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
