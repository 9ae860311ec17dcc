"""Generators: StyleGAN-XL in Flax and the built-in demo world, behind one interface.

Every generator `G` returned by `load` exposes (see ../shared/DESIGN.md):
  G.z_dim, G.c_dim, G.w_dim, G.num_ws, G.resolution, G.num_classes
  G.mapping(z, classes, psi=0.7) -> ws          # [N, z_dim], [N] int -> [N, num_ws, w_dim]
  G.synthesis(ws) -> img                        # [N, H, W, 3] float32, nominal [-1, 1]
  G.synthesis_features(ws) -> {name: [N, h, w, C]}
`G` is a pytree (its params are leaves, its architecture static), so it can be passed
as an argument to `jax.jit` / `jax.vmap` without baking the weights into the program.
"""
from __future__ import annotations

import importlib
import os
from typing import Any

from lis_jax import io

# Built-in generators: name -> "module:function" returning a generator (no file needed).
BUILTINS: dict[str, str] = {
    "shapes": "lis_jax.generators.shapes:load_shapes",  # the built-in demo world
    "sgxl-tiny": "lis_jax.generators.stylegan_xl:tiny",  # seeded random 16->32 px StyleGAN-XL
}

# Checkpoint kinds (meta.json "kind") -> "module:function(ckpt_dir) -> generator".
LOADERS: dict[str, str] = {
    "stylegan_xl": "lis_jax.generators.stylegan_xl:load",
}


def _resolve(spec: str):
  module, fn = spec.split(":")
  return getattr(importlib.import_module(module), fn)


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
    return _resolve(BUILTINS[path_or_name])(**kwargs)
  if not os.path.exists(path_or_name):
    raise io.CheckpointError(
        f"generator {path_or_name!r} is neither a checkpoint directory nor a built-in "
        f"({', '.join(sorted(BUILTINS)) or 'none registered'})")
  meta = io.load_meta(path_or_name)
  kind = meta.get("kind")
  if kind not in LOADERS:
    raise io.CheckpointError(f"{path_or_name}: checkpoint kind {kind!r} is not a generator")
  return _resolve(LOADERS[kind])(path_or_name, **kwargs)
