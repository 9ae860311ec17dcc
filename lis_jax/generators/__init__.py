"""Generators: StyleGAN-XL in Flax and the built-in demo world, behind one interface.

Every generator `G` returned by `load` is a `base.Generator`:
  G.z_dim, G.c_dim, G.w_dim, G.num_ws, G.resolution, G.num_classes
  G.mapping(z, classes, psi=0.7) -> ws          # [N, z_dim], [N] int -> [N, num_ws, w_dim]
  G.synthesis(ws) -> img                        # [N, H, W, 3] float32, nominal [-1, 1]
  G.synthesis_features(ws) -> {name: [N, h, w, C]}
The built-in world is also a `base.GroundTruthWorld` (part masks, factors).
`G` is a pytree (its params are leaves, its architecture static), so it can be passed
as an argument to `jax.jit` / `jax.vmap` without baking the weights into the program.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from lis_jax import io
from lis_jax.generators import shapes
from lis_jax.generators import stylegan_xl
from lis_jax.generators.base import Generator, GroundTruthWorld, broadcast_ws  # noqa: F401 (re-exported)

# Built-in generators: name -> function returning a generator (no file needed).
BUILTINS: dict[str, Callable[..., Any]] = {
    "shapes": shapes.load_shapes,  # the built-in demo world
    "sgxl-tiny": stylegan_xl.tiny,  # seeded random 16->32 px StyleGAN-XL
}

# Checkpoint kinds (meta.json "kind") -> function(ckpt_dir) -> generator.
LOADERS: dict[str, Callable[..., Any]] = {
    "stylegan_xl": stylegan_xl.load,
}


def load(path_or_name: str, **kwargs: Any):
  """Loads a generator from a converted checkpoint dir or by built-in name.

  Args:
    path_or_name: a directory written by a converter (e.g. `python -m
      converters.stylegan_xl`), or one of `BUILTINS`.
    **kwargs: passed to the loader (e.g. dtype options).
  Raises:
    io.CheckpointError: unknown name, missing or malformed checkpoint.
  """
  if path_or_name in BUILTINS:
    return BUILTINS[path_or_name](**kwargs)
  if not os.path.exists(path_or_name):
    raise io.CheckpointError(
        f"generator {path_or_name!r} is neither a checkpoint directory nor a built-in "
        f"({', '.join(sorted(BUILTINS)) or 'none registered'})")
  meta = io.load_meta(path_or_name)
  kind = meta.get("kind")
  if kind not in LOADERS:
    raise io.CheckpointError(f"{path_or_name}: checkpoint kind {kind!r} is not a generator")
  return LOADERS[kind](path_or_name, **kwargs)
