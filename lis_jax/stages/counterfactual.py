"""Stage `counterfactual`: shift r until the generated image is classified as a target.

The search code is `lis_jax.counterfactuals`; outputs: WORKSPACE.md, `counterfactual/`.
"""
from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np

from lis_jax import counterfactuals
from lis_jax import io
from lis_jax import pipeline
from lis_jax.stages.base import Stage


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.pairs = "all"  # 'all' ordered pairs of config.classes, or '232>254,151>197'
  c.samples_per_pair = 4  # searches per (origin, target)
  c.mode = "reference"  # reference: loss on r; image: loss on the regenerated image
  c.lr = 0.5  # SGD learning rate
  c.max_steps = 2000  # give up after this many steps
  c.check_every = 1  # image-domain stopping check every k steps (1: reference)
  c.w_origin = 0.6  # weight of +logit_origin in the loss
  c.w_cos = 10.0  # weight of -cos(link(r), link(r - s))
  c.batch_size = 64  # searches per jitted while_loop
  c.compact_rows = 0  # when <= this many searches still run, check only those (0: off; on CPU try batch_size / 4)
  c.top_units = 10  # units with the largest |shift| to record
  c.save_png = True  # before | after PNG per search
  return c


@dataclasses.dataclass(frozen=True)
class CounterfactualResult:
  """All searches (results.npz) and their summary (summary.json).

  arrays: search, sample, origin, target [B]; r, shift [B, D]; w_before, w_after
  [B, w_dim]; steps [B]; success [B] bool; probs_before, probs_after [B, C];
  top_units, top_shift [B, top_units]. summary: n, success_rate, steps_*.
  """
  arrays: dict
  summary: dict


def load(workdir: str) -> CounterfactualResult:
  out_dir = os.path.join(workdir, "counterfactual")
  path = pipeline.require(os.path.join(out_dir, "results.npz"), "counterfactual")
  with np.load(path) as f:
    arrays = {k: f[k] for k in f.files}
  return CounterfactualResult(arrays=arrays, summary=io.read_json(os.path.join(out_dir, "summary.json")))


def run(ctx) -> None:
  counterfactuals.run(ctx.config, ctx.workdir)


STAGE = Stage(name="counterfactual", requires=("link",), default_config=default_config, run=run,
              load=load, uses=("classes", "seed"), ignores=("save_png", "compact_rows", "batch_size"))
