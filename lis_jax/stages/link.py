"""Stage `link`: fits the linking network w = link(r) on the paired data.

The fitting library is `lis_jax.linking`; outputs: WORKSPACE.md, `link/`.
"""
from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np

from lis_jax import io
from lis_jax import linking
from lis_jax import pipeline
from lis_jax.stages.base import Stage


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.kind = "ols"  # ols | ridge | elasticnet | mlp
  c.alpha = 1.0  # ridge / elasticnet penalty (scikit-learn's meaning)
  c.l1_ratio = 0.5  # elasticnet L1 share
  c.float64 = False  # solve the linear fit in float64
  c.solver = "lstsq"  # ols: lstsq (SVD) | cholesky (normal equations + jitter)
  c.jitter = 1e-6  # cholesky diagonal, relative to the mean eigenvalue
  c.max_iter = 5000  # elasticnet FISTA iterations cap
  c.tol = 1e-7  # elasticnet relative coefficient change to stop at
  c.hidden = (1024,)  # mlp hidden widths
  c.epochs = 30  # mlp
  c.batch_size = 256  # mlp
  c.learning_rate = 1e-3  # mlp Adam
  c.holdout_fraction = 0.1  # held-out pairs for MSE / R^2
  c.cycle_samples = 256  # held-out samples for r -> w -> image -> r' (0: skip)
  return c


@dataclasses.dataclass(frozen=True)
class LinkResult:
  """The fitted link and its evaluation.

  link: the `linking.Link` (a pytree). metrics: metrics.json (test/train regression
  metrics, optional cycle). train, test: [N_train], [N_test] paired-data rows.
  """
  link: linking.Link
  metrics: dict
  train: np.ndarray
  test: np.ndarray


def load(workdir: str) -> LinkResult:
  out_dir = os.path.join(workdir, "link")
  metrics = io.read_json(pipeline.require(os.path.join(out_dir, "metrics.json"), "link"))
  with np.load(os.path.join(out_dir, "split.npz")) as f:
    train, test = f["train"], f["test"]
  return LinkResult(link=linking.load(os.path.join(out_dir, "model")), metrics=metrics,
                    train=train, test=test)


def run(ctx) -> None:
  linking.run(ctx.config, ctx.workdir)


STAGE = Stage(name="link", requires=("paired_data",), default_config=default_config, run=run,
              load=load, uses=("seed",))
