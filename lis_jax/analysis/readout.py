"""Reading a world's true factors: decode them from w, and the held-out R^2 of a linear
read-out. One implementation each, shared by the link, sweep, boundary and invariances
stages."""
from __future__ import annotations

import jax
import numpy as np

from lis_jax import generators


@jax.jit
def decode_factors(G, w):
  """A GroundTruthWorld's (factors {name: [N]}, class weights [N, K]) of w [N, w_dim]."""
  return G.decode_factors(generators.broadcast_ws(w, G.num_ws))


def readout_r2(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray,
               alpha: float = 0.0) -> np.ndarray:
  """Held-out R^2 of a linear read-out (with intercept) of each column of y from x.

  x: [N, D] inputs, y: [N, F] targets; fitted on rows `train`, scored on rows `test`.
  alpha: 0: least squares. > 0: ridge on x standardised over the train rows, penalty
    alpha * n_train ||coef||^2 (scikit-learn's Ridge(alpha * n_train) on those inputs), for
    read-outs from fewer rows than dimensions.
  Returns [F] (1 - SS_res / SS_tot on the test rows).
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if alpha > 0:
    mu, sd = x[train].mean(0), x[train].std(0)
    xs = (x - mu) / np.where(sd > 0, sd, 1.0)
    ym = y[train].mean(0)
    gram = xs[train].T @ xs[train] + alpha * len(train) * np.eye(x.shape[1])
    pred = xs[test] @ np.linalg.solve(gram, xs[train].T @ (y[train] - ym)) + ym
  else:
    x1 = np.concatenate([x, np.ones((len(x), 1))], -1)
    pred = x1[test] @ np.linalg.lstsq(x1[train], y[train], rcond=None)[0]
  res = ((y[test] - pred) ** 2).sum(0)
  tot = ((y[test] - y[test].mean(0)) ** 2).sum(0)
  return 1.0 - res / np.maximum(tot, 1e-12)
