"""Class-wise selectivity: the statistics of `quantify.selectivity` per start-sample class.

A unit may change a concept in images of one class and not another (a unit that grows
mushroom caps need not grow car wheels). The pooled statistics average over start
samples of all classes; here the same statistics are computed on each class's start
samples alone (with that class's share of the null), so the two can be compared.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from lis_jax.quantify import selectivity


def split_by_class(deltas: np.ndarray, null_deltas: np.ndarray, sample_cls: np.ndarray
                   ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
  """Splits changes by the class of their start sample.

  Args:
    deltas: [U, S, P, M] changes; null_deltas: [U, S * R, P, M] null changes, sample-major
      (R draws of sample 0, then of sample 1, ...), as quantify stores them.
    sample_cls: [S] class of each start sample.
  Returns:
    {class: (deltas [U, S_c, P, M], null [U, S_c * R, P, M])}.
  """
  u, s = deltas.shape[:2]
  r = null_deltas.shape[1] // s
  null = null_deltas.reshape(u, s, r, *null_deltas.shape[2:])
  out = {}
  for c in np.unique(sample_cls):
    idx = np.flatnonzero(sample_cls == c)
    out[int(c)] = (deltas[:, idx], null[:, idx].reshape(u, idx.size * r, *null.shape[3:]))
  return out


def statistics(deltas: np.ndarray, null_deltas: np.ndarray, sample_cls: np.ndarray, *, seed: int,
               n_boot: int = 1000, level: float = 0.95, alpha: float = 0.05) -> dict[int, dict]:
  """{class: selectivity.unit_statistics on that class's start samples}."""
  return {c: selectivity.unit_statistics(d, n, seed=seed + c, n_boot=n_boot, level=level, alpha=alpha)
          for c, (d, n) in split_by_class(deltas, null_deltas, sample_cls).items()}


def summary(pooled: Mapping[str, np.ndarray], per_class: Mapping[int, Mapping[str, np.ndarray]]
            ) -> list[dict]:
  """Per class: start samples, selective (unit, concept) pairs, and overlap with the pooled set.

  Returns rows: class, n_samples (per unit, the most over concepts), n_selective,
  jaccard (|class-selective & pooled-selective| / |union|), and
  top_agreement (fraction of concepts whose top unit by |mean| is the pooled top unit).
  """
  ps = np.asarray(pooled["selective"], bool)
  p_top = np.argmin(pooled["rank"], axis=0)  # [P, M] unit with rank 1
  rows = []
  for c, st in sorted(per_class.items()):
    cs = np.asarray(st["selective"], bool)
    union = np.sum(ps | cs)
    rows.append({"class": int(c), "n_samples": int(np.max(st["n"])), "n_selective": int(cs.sum()),
                 "jaccard": float(np.sum(ps & cs) / union) if union else float("nan"),
                 "top_agreement": float(np.mean(np.argmin(st["rank"], axis=0) == p_top))})
  return rows
