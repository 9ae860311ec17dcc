"""Tiny random-weight generator and classifier that follow the project's protocols.

They stand in for StyleGAN-XL and a torchvision classifier in pipeline tests: same
attributes and methods (see /work/shared/DESIGN.md), JAX pytrees (params are leaves,
sizes are static), a few thousand parameters, so every stage runs in seconds.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


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
    return 10.0 * x.mean(axis=(1, 2))   # ResNet-like scale: r of order 1

  def head(self, r):
    """r [N, feature_dim] -> logits [N, num_classes]."""
    return r @ self.params["fc_w"] + self.params["fc_b"]

  def __call__(self, x):
    return self.head(self.features(x))


def tiny_generator(seed: int, num_classes: int = 5) -> TinyGenerator:
  """A random TinyGenerator; `seed` (numpy, cheap: no per-shape compilation) seeds every weight."""
  z_dim, w_dim = 8, 6
  rng = np.random.default_rng(seed)
  n = lambda *shape: rng.normal(size=shape).astype(np.float32)
  params = {
      "map0": n(z_dim, 16) / np.sqrt(z_dim),
      "embed": n(num_classes, 16),
      "map1": n(16, w_dim) / 4.0,
      "w_avg": 0.3 * n(num_classes, w_dim),
      "const": n(w_dim, 4 * 4 * 8) / np.sqrt(w_dim),
      "style0": 0.3 * n(w_dim, 8),
      "style1": 0.3 * n(w_dim, 8),
      "conv0": n(3, 3, 8, 8) / np.sqrt(72.0),
      "conv1": n(3, 3, 8, 8) / np.sqrt(72.0),
      "torgb": n(8, 3) / np.sqrt(8.0),
  }
  return TinyGenerator(params=params, z_dim=z_dim, w_dim=w_dim, num_classes=num_classes)


def tiny_classifier(seed: int, num_classes: int = 5, feature_dim: int = 12) -> TinyClassifier:
  """A random TinyClassifier; `seed` (numpy) seeds every weight."""
  rng = np.random.default_rng(seed)
  n = lambda *shape: rng.normal(size=shape).astype(np.float32)
  params = {
      "conv0": n(3, 3, 3, 8) / np.sqrt(27.0),
      "bias0": np.full((8,), 0.1, np.float32),
      "conv1": n(3, 3, 8, feature_dim) / np.sqrt(72.0),
      "bias1": np.full((feature_dim,), 0.1, np.float32),
      "fc_w": n(feature_dim, num_classes) * 3.0,
      "fc_b": np.zeros((num_classes,), np.float32),
  }
  return TinyClassifier(params=params, num_classes=num_classes, feature_dim=feature_dim)


@functools.lru_cache(maxsize=None)
def generator() -> TinyGenerator:
  """Zero-argument form for configs: `config.generator = 'tests.tiny_models:generator'`."""
  return tiny_generator(0)


@functools.lru_cache(maxsize=None)
def classifier() -> TinyClassifier:
  """Zero-argument form for configs: `config.classifier = 'tests.tiny_models:classifier'`.

  Its head is a nearest-class-mean rule (diagonal Gaussian) on the features of images
  from `generator()`, so it is right often but not always, like a real classifier.
  """
  clf = tiny_classifier(1)
  G = generator()
  n = 32
  cls = np.repeat(np.arange(G.num_classes), n)
  z = np.random.default_rng(2).normal(size=(cls.size, G.z_dim)).astype(np.float32)
  r = jax.jit(lambda G, clf, z, c: clf.features(clf.preprocess(G.synthesis(G.mapping(z, c, psi=0.7)))))(
      G, clf, z, cls)
  r = np.asarray(r, np.float64).reshape(G.num_classes, n, -1)
  mu = r.mean(1)                                                    # [C, D]
  var = r.var(1).mean(0) + 1e-8                                     # [D] pooled
  params = dict(clf.params, fc_w=(mu / var).T.astype(np.float32),
                fc_b=(-0.5 * (mu ** 2 / var).sum(1)).astype(np.float32))
  return clf.replace(params=params)
