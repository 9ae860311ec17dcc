"""The truth decides: false-discovery rate and power of calls on a world that knows its factors.

On a GroundTruthWorld (the built-in `shapes` world) every sweep's and every path's true
factor changes are known (`decode_factors`, as a fraction of each factor's range:
`sweep.factor_deltas`, `boundary.factor_changes`), and `factor_concepts` names the
(part, metric) concept that shows each factor. A tested (item, concept) pair, an item
being a unit or an (origin, target) pair, is

  truly null       when the true change of the concept's factor, and of every factor
                   that moves the concept by construction (`CONFOUNDERS`: the object's
                   area is the union of its parts'), is below NULL_BELOW of the range;
  truly selective  when the true change of its factor is above SELECTIVE_ABOVE;
  undecided        otherwise (and concepts that show no factor): left out of both rates.

A call is a false discovery when it lands on a truly null pair. `rates` gives the
false-discovery rate (false calls / calls on decided pairs) and the power (calls on
truly selective pairs / truly selective pairs).

The thresholds: a change below 5% of a factor's range is hard to see in a 64 px image;
above 40% is beyond what most random directions with the units' geometry do (measured
on the demo's seed-0 workdir: the r-space null's mean change of pos_x, scale and
rotation has its 75th percentile at 0.32-0.36 and its 95th at 0.43-0.45; benchmarks/
calibration.py).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

NULL_BELOW = 0.05  # fraction of the factor's range: truly null below
SELECTIVE_ABOVE = 0.40  # truly selective above

# shapes world: factors that move a concept by construction besides its own factor.
CONFOUNDERS = {
    ("object", "area"): ("body_width", "body_height", "top_width", "top_height", "extra_width",
                         "extra_height"),
}


def labels(truth: np.ndarray, factor_names: Sequence[str], factor_concepts: Mapping[str, tuple[str, str]],
           parts: Sequence[str], metrics: Sequence[str], *, null_below: float = NULL_BELOW,
           selective_above: float = SELECTIVE_ABOVE,
           confounders: Mapping[tuple[str, str], Sequence[str]] = CONFOUNDERS) -> np.ndarray:
  """True status of every (item, concept) pair.

  Args:
    truth: [N, F] mean true change of each factor per item (fraction of its range).
    factor_names: the F factors; factor_concepts: factor -> (part, metric).
    parts, metrics: the P parts and M metrics of the tested concepts.
  Returns:
    [N, P, M] int8: 1 truly selective, 0 truly null, -1 undecided or no factor.
  """
  truth = np.abs(np.asarray(truth, np.float64))
  out = np.full((truth.shape[0], len(parts), len(metrics)), -1, np.int8)
  names = list(factor_names)
  for factor, (part, metric) in factor_concepts.items():
    if factor not in names or part not in parts or metric not in metrics:
      continue
    own = truth[:, names.index(factor)]
    others = [names.index(f) for f in confounders.get((part, metric), ()) if f in names]
    moved = np.max(truth[:, [names.index(factor)] + others], axis=1)
    col = np.full(truth.shape[0], -1, np.int8)
    col[moved < null_below] = 0
    col[own > selective_above] = 1
    out[:, parts.index(part), metrics.index(metric)] = col
  return out


def rates(called: np.ndarray, status: np.ndarray) -> dict:
  """FDR and power of boolean calls [N, P, M] against `labels`' status [N, P, M].

  Returns:
    {'fdr' (false / max(calls on decided pairs, 1): 0 without calls, the false-discovery
     proportion whose expectation BH controls), 'power' (NaN without truly selective
     pairs), 'n_called', 'n_false', 'n_true_selective', 'n_true_null', 'null_call_rate'
     (calls among truly null pairs)}.
  """
  c = np.asarray(called, bool)
  s = np.asarray(status)
  n_false = int(np.sum(c & (s == 0)))
  n_hit = int(np.sum(c & (s == 1)))
  n_sel, n_null = int(np.sum(s == 1)), int(np.sum(s == 0))
  called_decided = n_false + n_hit
  return {"fdr": n_false / max(called_decided, 1),  # V / max(R, 1): 0 without calls (BH's definition)
          "power": n_hit / n_sel if n_sel else float("nan"),
          "n_called": called_decided, "n_false": n_false, "n_true_selective": n_sel,
          "n_true_null": n_null, "null_call_rate": n_false / n_null if n_null else float("nan")}


def superposition_truth(truth: np.ndarray, factor_names: Sequence[str], threshold: float = SELECTIVE_ABOVE
                        ) -> np.ndarray:
  """[N] number of factors each item truly moves beyond `threshold` (a truly superposed
  item moves two or more)."""
  del factor_names
  return np.sum(np.abs(np.asarray(truth)) > threshold, axis=1)


def oracle_beyond_random(truth: np.ndarray, null_truth: np.ndarray, factor_names: Sequence[str],
                         factors: Sequence[str], q_level: float = 0.1) -> dict:
  """The best any 'beyond random directions' call could do: each item's TRUE change of a
  factor tested against the true changes of the null's random directions (the
  permutation p with a GPD tail, `calls.tail_pvalues`), BH over item x factor.

  If this oracle calls nothing, no measured statistic can: the items do not move the
  factors more than the null's directions do, whatever the measurement.

  Args:
    truth: [N, F] items' mean true change (fraction of range); null_truth: [R, F] the
      null directions'; factor_names: the F columns; factors: those tested.
  Returns:
    {'n_calls', 'n_tests', 'min_p', 'share_p05' (items x factors with p <= 0.05)}.
  """
  from lis_jax.analysis import calls  # Local: truth is otherwise free of the calls' scipy use.
  idx = [list(factor_names).index(f) for f in factors if f in factor_names]
  p = calls.tail_pvalues(np.abs(np.asarray(truth)[:, idx]), np.abs(np.asarray(null_truth)[:, idx]))
  q = calls.bh_qvalues(p)
  return {"n_calls": int(np.sum(q <= q_level)), "n_tests": int(np.sum(np.isfinite(p))),
          "min_p": float(np.nanmin(p)), "share_p05": float(np.nanmean(p <= 0.05))}


def precision_within_se(found: Sequence[int], per_start: np.ndarray, k: int) -> tuple[float | None, int]:
  """precision@k where the truth's own top k is only known to its sampling error.

  The true top k of units ranked by |mean change over start samples| is itself an estimate:
  on the built-in world the 5th and 6th units often differ by less than 0.01 of the
  factor's range while a unit's change varies by 0.1-0.2 from start to start. A found unit
  counts as a hit when its |mean true change| is at least the k-th largest minus that
  k-th unit's standard error over its start samples.

  Args:
    found: indices (rows of per_start) of the units a call ranks first (at most k used).
    per_start: [U, S] the true change of one factor per unit and start sample.
    k: the k of precision@k.
  Returns:
    (precision or None without found units, number of units that count as top k: its
    chance level is that number / U).
  """
  x = np.asarray(per_start, np.float64)
  t = np.abs(np.nanmean(x, axis=1))
  n = np.sum(np.isfinite(x), axis=1)
  se = np.nanstd(x, axis=1, ddof=1) / np.sqrt(np.maximum(n, 1))
  kth = np.argsort(-t, kind="stable")[min(k, t.size) - 1]
  relevant = t >= t[kth] - se[kth]
  f = list(found)[:k]
  return (float(np.mean(relevant[f])) if f else None), int(relevant.sum())
