"""Shared by the sweep stage and the stages that read its blocks (quantify, the report):
which start samples they look at."""
from __future__ import annotations

import numpy as np


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
