"""Tiny random-weight generator and classifier that follow the project's protocols.

They stand in for StyleGAN-XL and a torchvision classifier in pipeline tests: same
attributes and methods (see /work/shared/DESIGN.md), JAX pytrees (params are leaves,
sizes are static), a few thousand parameters, so every stage runs in seconds.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


class TinyGenerator(flax.struct.PyTreeNode):
  """z -> w (class-conditional MLP, truncation toward per-class w_avg) -> 16 px image."""
  params: Any
  z_dim: int = flax.struct.field(pytree_node=False, default=8)
  w_dim: int = flax.struct.field(pytree_node=False, default=6)
  num_ws: int = flax.struct.field(pytree_node=False, default=3)
  resolution: int = flax.struct.field(pytree_node=False, default=16)
  num_classes: int = flax.struct.field(pytree_node=False, default=5)

  @property
  def c_dim(self) -> int:
    return self.num_classes

  def mapping(self, z, classes, psi=0.7):
    """z [N, z_dim], classes [N] int -> ws [N, num_ws, w_dim], truncated toward w_avg[class]."""
    p = self.params
    h = jnp.tanh(z @ p["map0"] + p["embed"][classes])      # [N, 16]
    w = h @ p["map1"]                                      # [N, w_dim]
    avg = p["w_avg"][classes]                              # [N, w_dim]
    w = avg + psi * (w - avg)
    return jnp.broadcast_to(w[:, None], (w.shape[0], self.num_ws, self.w_dim))

  def synthesis_features(self, ws):
    """ws [N, num_ws, w_dim] -> {'input': [N, 4, 4, 8], 'L1': [N, 8, 8, 8], 'L2': [N, 16, 16, 8]}."""
    p = self.params
    n = ws.shape[0]
    x = jnp.tanh(ws[:, 0] @ p["const"]).reshape(n, 4, 4, 8)
    feats = {"input": x}
    for i, name in enumerate(("L1", "L2")):
      style = ws[:, min(i + 1, self.num_ws - 1)] @ p[f"style{i}"]   # [N, 8]
      x = jax.image.resize(x, (n, x.shape[1] * 2, x.shape[2] * 2, 8), "nearest")
      x = x * (1 + style[:, None, None, :])
      x = jax.lax.conv_general_dilated(x, p[f"conv{i}"], (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      x = jax.nn.leaky_relu(x, 0.2)
      feats[name] = x
    return feats

  def synthesis(self, ws):
    """ws [N, num_ws, w_dim] -> img [N, 16, 16, 3] in (-1, 1)."""
    x = self.synthesis_features(ws)["L2"]
    return jnp.tanh(x @ self.params["torgb"])


class TinyClassifier(flax.struct.PyTreeNode):
  """Two strided convs, global average pool (features r >= 0), one Linear head."""
  params: Any
  arch: str = flax.struct.field(pytree_node=False, default="tiny-conv")
  num_classes: int = flax.struct.field(pytree_node=False, default=5)
  feature_dim: int = flax.struct.field(pytree_node=False, default=12)

  def preprocess(self, img):
    """[-1, 1] image [N, H, W, 3] -> classifier input (here: unchanged)."""
    return img

  def features(self, x):
    """x [N, H, W, 3] -> r [N, feature_dim], non-negative like a ResNet's pooled features."""
    p = self.params
    for i in range(2):
      x = jax.lax.conv_general_dilated(x, p[f"conv{i}"], (2, 2), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      x = jax.nn.relu(x + p[f"bias{i}"])
    return x.mean(axis=(1, 2))

  def head(self, r):
    """r [N, feature_dim] -> logits [N, num_classes]."""
    return r @ self.params["fc_w"] + self.params["fc_b"]

  def __call__(self, x):
    return self.head(self.features(x))


def tiny_generator(key: jax.Array, num_classes: int = 5) -> TinyGenerator:
  """A random TinyGenerator; `key` seeds every weight."""
  z_dim, w_dim = 8, 6
  k = jax.random.split(key, 8)
  n = jax.random.normal
  params = {
      "map0": n(k[0], (z_dim, 16)) / jnp.sqrt(z_dim),
      "embed": n(k[1], (num_classes, 16)),
      "map1": n(k[2], (16, w_dim)) / 4.0,
      "w_avg": 0.3 * n(k[3], (num_classes, w_dim)),
      "const": n(k[4], (w_dim, 4 * 4 * 8)) / jnp.sqrt(w_dim),
      "style0": 0.3 * n(k[5], (w_dim, 8)),
      "style1": 0.3 * n(k[6], (w_dim, 8)),
      "conv0": n(k[7], (3, 3, 8, 8)) / jnp.sqrt(72.0),
      "conv1": n(jax.random.fold_in(k[7], 1), (3, 3, 8, 8)) / jnp.sqrt(72.0),
      "torgb": n(jax.random.fold_in(k[7], 2), (8, 3)) / jnp.sqrt(8.0),
  }
  return TinyGenerator(params=params, z_dim=z_dim, w_dim=w_dim, num_classes=num_classes)


def tiny_classifier(key: jax.Array, num_classes: int = 5, feature_dim: int = 12) -> TinyClassifier:
  """A random TinyClassifier; `key` seeds every weight."""
  k = jax.random.split(key, 4)
  n = jax.random.normal
  params = {
      "conv0": n(k[0], (3, 3, 3, 8)) / jnp.sqrt(27.0),
      "bias0": jnp.full((8,), 0.1),
      "conv1": n(k[1], (3, 3, 8, feature_dim)) / jnp.sqrt(72.0),
      "bias1": jnp.full((feature_dim,), 0.1),
      "fc_w": n(k[2], (feature_dim, num_classes)) * 3.0,
      "fc_b": jnp.zeros((num_classes,)),
  }
  return TinyClassifier(params=params, num_classes=num_classes, feature_dim=feature_dim)


def generator() -> TinyGenerator:
  """Zero-argument form for configs: `config.generator = 'tests.tiny_models:generator'`."""
  return tiny_generator(jax.random.PRNGKey(0))


def classifier() -> TinyClassifier:
  """Zero-argument form for configs: `config.classifier = 'tests.tiny_models:classifier'`."""
  return tiny_classifier(jax.random.PRNGKey(1))
