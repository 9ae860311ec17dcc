"""The generator protocols: what the pipeline needs from a generator, and what a world
that knows its own truth adds. Code checks `isinstance(G, GroundTruthWorld)`, never
`hasattr`.

Every generator is a pytree (params are leaves, architecture static), so it can be an
argument of `jax.jit` / `jax.vmap` without baking its weights into the program.
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence, runtime_checkable


@runtime_checkable
class Generator(Protocol):
  """A class-conditional StyleGAN-like generator.

  z_dim, c_dim, w_dim, num_ws, resolution, num_classes: sizes.
  mapping(z [N, z_dim], classes [N] int, psi=0.7) -> ws [N, num_ws, w_dim]
  synthesis(ws) -> image [N, H, W, 3] float32, nominal [-1, 1]
  synthesis_features(ws) -> {layer name: [N, h, w, C]}
  """
  z_dim: int
  c_dim: int
  num_ws: int
  resolution: int
  num_classes: int

  @property
  def w_dim(self) -> int: ...

  def mapping(self, z: Any, classes: Any, psi: Any = 0.7) -> Any: ...

  def synthesis(self, ws: Any) -> Any: ...

  def synthesis_features(self, ws: Any) -> Mapping[str, Any]: ...


@runtime_checkable
class GroundTruthWorld(Generator, Protocol):
  """A generator that knows the truth behind its images (the built-in 'shapes' world).

  part_names: parts of `ground_truth(ws)['masks']` (background first).
  factor_names, factor_ranges {name: (lo, hi)}, circular_factors (wrap at hi - lo).
  factor_concepts: factor -> the (part, metric) concept that shows it in the image.
  class_names: a name per class id.
  ground_truth(ws) -> {'masks' [N, H, W, P], 'part_names', 'factors' {name: [N]},
    'class_weights' [N, C], 'classes' [N]}
  decode_factors(ws) -> ({name: [N]}, class weights [N, C]) without rendering.
  """
  part_names: Sequence[str]
  factor_names: Sequence[str]
  factor_ranges: Mapping[str, tuple[float, float]]
  circular_factors: Sequence[str]
  factor_concepts: Mapping[str, tuple[str, str]]
  class_names: Sequence[str]

  def ground_truth(self, ws: Any) -> Mapping[str, Any]: ...

  def decode_factors(self, ws: Any) -> tuple[Mapping[str, Any], Any]: ...


def broadcast_ws(w: Any, num_ws: int) -> Any:
  """w [..., w_dim] -> ws [..., num_ws, w_dim] (the same w for every synthesis layer)."""
  import jax.numpy as jnp
  return jnp.broadcast_to(w[..., None, :], (*w.shape[:-1], num_ws, w.shape[-1]))
