"""Stage `paired_data`: (w, r) pairs from generated images the classifier gets right.

The generation code is `lis_jax.paired_data`; outputs: WORKSPACE.md, `paired_data/`.
"""
from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from lis_jax import paired_data as lib
from lis_jax.stages.base import Stage


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.n_per_class = 5000  # kept samples per class (the reference's N)
  c.keep_only_correct = True  # keep only images classified as their class
  c.store_all_ws = False  # also store all ws [num_ws, w_dim] (they are equal)
  c.batch_size = 32  # images per jitted call (rounded up to the device count)
  c.shard_size = 512  # tried latents per shard file (resume granularity)
  c.max_tries_factor = 20.0  # give up on a class after this many x n tries
  return c


@dataclasses.dataclass(frozen=True)
class PairedData:
  """All kept pairs, rows in class order then shard order.

  cls [N] int32, seed_index [N] int32 (position in the class's latent stream),
  w [N, w_dim], r [N, D], logits [N, C]; ws [N, num_ws, w_dim] or None (store_all_ws).
  """
  cls: np.ndarray
  seed_index: np.ndarray
  w: np.ndarray
  r: np.ndarray
  logits: np.ndarray
  ws: np.ndarray | None = None


def load(workdir: str) -> PairedData:
  data = lib.load(workdir, with_ws=lib.has_ws(workdir))
  return PairedData(**data)


def run(ctx) -> None:
  lib.run(ctx.config, ctx.workdir)


STAGE = Stage(name="paired_data", requires=(), default_config=default_config, run=run, load=load,
              uses=("generator", "classifier", "classes", "psi", "seed"),
              ignores=("batch_size", "max_tries_factor"))
