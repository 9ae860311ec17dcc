"""Stage `sweep`: set one classifier unit to a range of values, link to w, synthesize.

The sweep code is `lis_jax.sweeps`; outputs: WORKSPACE.md, `sweep/`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterator

import ml_collections
import numpy as np

from lis_jax import pipeline
from lis_jax import sweeps
from lis_jax.stages.base import Stage


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.units = "all"  # 'all' or a list like '0,1,5:9'
  c.samples_per_class = 10  # start samples per class (first kept of each class)
  c.n_steps = 3  # values per unit
  c.range = "minmax"  # minmax: the unit's observed [min, max]; std: mean +- k std
  c.k_std = 2.0  # for range 'std'
  c.units_per_block = 4  # units per jitted block (U * S * T images)
  c.batch_size = 32  # images per synthesis call inside a block
  c.reclassify = True  # classify the generated images (r', logits)
  c.store_r_prime = False  # store the full r' [U, S, T, D] (large)
  c.store_logits = False  # store logits [U, S, T, C] (large)
  c.save_png = True  # PNG strips per (unit, sample)
  return c


@dataclasses.dataclass(frozen=True)
class SweepResult:
  """The finished sweep.

  rows [S] paired-data rows of the start samples, cls [S], r_start [S, D];
  workdir: where `blocks()` reads the blocks from (each a dict: block, units [U],
  samples [S], cls [S], values [U, T], w [U, S, T, w_dim], r_prime_unit, pred, p_cls
  [U, S, T] ...; WORKSPACE.md).
  """
  workdir: str
  rows: np.ndarray
  cls: np.ndarray
  r_start: np.ndarray

  def blocks(self) -> Iterator[dict]:
    return sweeps.iter_blocks(self.workdir)


def load(workdir: str) -> SweepResult:
  out_dir = os.path.join(workdir, "sweep")
  pipeline.require(os.path.join(out_dir, "index.csv"), "sweep")
  with np.load(os.path.join(out_dir, "samples.npz")) as f:
    return SweepResult(workdir=workdir, rows=f["rows"], cls=f["cls"], r_start=f["r"])


def run(ctx) -> None:
  sweeps.run(ctx.config, ctx.workdir)


STAGE = Stage(name="sweep", requires=("link",), default_config=default_config, run=run, load=load,
              uses=("classes",), ignores=("batch_size",))
