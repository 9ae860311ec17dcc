"""Class-wise selectivity: the statistics of `quantify.selectivity` per start-sample class.

A unit may change a concept in images of one class and not another (a unit that grows
mushroom caps need not grow car wheels). The pooled statistics average over start
samples of all classes; here the same statistics are computed on each class's start
samples alone (with that class's share of the null), so the two can be compared.

Each class is its own family: its (unit x concept) p-values are corrected by
Benjamini-Hochberg within the class (`selectivity.shared_null_statistics`), and its
count of selective pairs is shown beside the same count on the null's directions
(`null_counts`: the calls made on the null directions of that class, leave one out,
scaled to the number of units). With one start sample per class (the demo) a class
has little power: the null count says what to expect from chance.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from lis_jax.quantify import selectivity


def split_by_class(deltas: np.ndarray, null_deltas: np.ndarray, sample_cls: np.ndarray
                   ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
  """Splits changes by the class of their start sample.

  Args:
    deltas: [U, S, P, M] changes over the units' sweeps; null_deltas: [R, S, P, M] changes
      along R random directions from the same S starts (quantify's shared null).
    sample_cls: [S] class of each start sample.
  Returns:
    {class: (deltas [U, S_c, P, M], null [R, S_c, P, M])}.
  """
  out = {}
  for c in np.unique(sample_cls):
    idx = np.flatnonzero(sample_cls == c)
    out[int(c)] = (deltas[:, idx], null_deltas[:, idx])
  return out


def statistics(deltas: np.ndarray, lengths: np.ndarray, null_deltas: np.ndarray,
               null_lengths: np.ndarray, sample_cls: np.ndarray, *, seed: int,
               **kwargs) -> dict[int, dict]:
  """{class: selectivity.shared_null_statistics on that class's start samples}; `kwargs`
  (n_boot, level, alpha, rank_by, average, per_length) as there."""
  return {c: selectivity.shared_null_statistics(d, lengths, n, null_lengths, seed=seed + c, **kwargs)
          for c, (d, n) in split_by_class(deltas, null_deltas, sample_cls).items()}


def null_counts(null_deltas: np.ndarray, null_lengths: np.ndarray, sample_cls: np.ndarray, n_units: int,
                *, seed: int, **kwargs) -> dict[int, float]:
  """{class: selective (direction, concept) calls among the null directions of that class's
  start samples (selectivity.null_calls), scaled to n_units units}; `kwargs` (alpha,
  q_level, average, per_length) as there."""
  out = {}
  for c in np.unique(sample_cls):
    nd = null_deltas[:, np.flatnonzero(sample_cls == c)]
    calls = selectivity.null_calls(nd, null_lengths, seed=seed + int(c), **kwargs)
    out[int(c)] = float(np.sum(calls["selective"]) * n_units / nd.shape[0])
  return out


def summary(pooled: Mapping[str, np.ndarray], per_class: Mapping[int, Mapping[str, np.ndarray]],
            null_count: Mapping[int, float] | None = None) -> list[dict]:
  """Per class: start samples, selective (unit, concept) pairs, and overlap with the pooled set.

  Returns rows: class, n_samples (per unit, the most over concepts), n_selective,
  n_selective_null (with `null_count`: the same count on null directions, scaled to the
  units), jaccard (|class-selective & pooled-selective| / |union|), and
  top_agreement (fraction of concepts whose top unit by |mean| is the pooled top unit).
  """
  ps = np.asarray(pooled["selective"], bool)
  p_top = np.argmin(pooled["rank"], axis=0)  # [P, M] unit with rank 1
  rows = []
  for c, st in sorted(per_class.items()):
    cs = np.asarray(st["selective"], bool)
    union = np.sum(ps | cs)
    rows.append({"class": int(c), "n_samples": int(np.max(st["n"])), "n_selective": int(cs.sum()),
                 **({"n_selective_null": null_count.get(int(c))} if null_count is not None else {}),
                 "jaccard": float(np.sum(ps & cs) / union) if union else float("nan"),
                 "top_agreement": float(np.mean(np.argmin(st["rank"], axis=0) == p_top))})
  return rows
