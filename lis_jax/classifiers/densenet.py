"""DenseNets with torchvision's semantics and parameter names, NHWC.

Names follow torchvision's `features.*` with the dots of nested containers joined by
underscores: `conv0`, `norm0`, `denseblock1_denselayer1/{norm1,conv1,norm2,conv2}`,
`transition1/{norm,conv}`, ..., `norm5`, `classifier`. After `norm5` torchvision applies
ReLU and a global (1x1 adaptive) average pool: that vector is the penultimate representation.
The reference layer (`layer='reference'`, the reference code's children()[:-1], i.e.
`features`) is norm5's output before that ReLU, flattened in (C, H, W) order (densenet201
at 224 px: 1920x7x7 = 94080); `reference_head` applies the ReLU, the pool and `classifier`.
"""
from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from lis_jax.classifiers import layers
from lis_jax.classifiers.classifier import ClassifierModule


class DenseLayer(nn.Module):
  """BN-ReLU-1x1 conv (bn_size * growth) - BN-ReLU-3x3 conv (growth); returns the new maps only."""
  growth_rate: int
  bn_size: int

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    y = nn.relu(layers.batch_norm(train, name="norm1")(x))
    y = layers.conv(self.bn_size * self.growth_rate, 1, name="conv1")(y)
    y = nn.relu(layers.batch_norm(train, name="norm2")(y))
    return layers.conv(self.growth_rate, 3, 1, 1, name="conv2")(y)   # [N, H, W, growth]


class Transition(nn.Module):
  """BN-ReLU-1x1 conv-2x2/2 average pool between dense blocks."""
  out_channels: int

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = nn.relu(layers.batch_norm(train, name="norm")(x))
    x = layers.conv(self.out_channels, 1, name="conv")(x)
    return layers.avg_pool(x, 2, 2)


class DenseNet(ClassifierModule):
  """torchvision DenseNet-BC.

  Attributes:
    growth_rate: channels each dense layer adds (32; 48 for densenet161).
    block_config: dense layers per block.
    num_init_features: channels of the stem conv (64; 96 for densenet161).
    bn_size: bottleneck width factor of a dense layer (4).
    num_classes: outputs of the last Linear layer `classifier`.
  """
  growth_rate: int = 32
  block_config: Sequence[int] = (6, 12, 24, 16)
  num_init_features: int = 64
  bn_size: int = 4
  num_classes: int = 1000

  HEAD = "classifier"
  REFERENCE_NONNEGATIVE = False   # the reference r is norm5's output before the ReLU

  @property
  def feature_dim(self) -> int:
    c = self.num_init_features
    for i, n in enumerate(self.block_config):
      c += n * self.growth_rate
      if i != len(self.block_config) - 1:
        c //= 2
    return c

  def reference_head(self, r: jnp.ndarray) -> jnp.ndarray:
    """[N, feature_dim * h * w] flattened norm5 output -> [N, num_classes]: ReLU, mean, classifier."""
    x = r.reshape(r.shape[0], self.feature_dim, -1)                     # [N, C, h * w]
    return self.head(jnp.mean(nn.relu(x), axis=-1))

  @nn.compact
  def features(self, x: jnp.ndarray, train: bool = False,
               layer: str = "penultimate") -> jnp.ndarray:
    """[N, H, W, 3] normalised image -> [N, feature_dim] (ReLU + global mean after norm5);
    'reference': [N, feature_dim * h * w], norm5's output flattened (C, H, W)."""
    x = layers.conv(self.num_init_features, 7, 2, 3, name="conv0")(x)   # [N, H/2, W/2, C]
    x = nn.relu(layers.batch_norm(train, name="norm0")(x))
    x = layers.max_pool(x, 3, 2, 1)                                     # [N, H/4, W/4, C]
    c = self.num_init_features
    for i, n_layers in enumerate(self.block_config):
      for j in range(n_layers):
        new = DenseLayer(self.growth_rate, self.bn_size,
                         name=f"denseblock{i + 1}_denselayer{j + 1}")(x, train)
        x = jnp.concatenate([x, new], axis=-1)
      c += n_layers * self.growth_rate
      if i != len(self.block_config) - 1:
        c //= 2
        x = Transition(c, name=f"transition{i + 1}")(x, train)
    x = layers.batch_norm(train, name="norm5")(x)                       # [N, h, w, C]
    if layer == "reference":
      return layers.flatten_chw(x)                                       # [N, C * h * w]
    return jnp.mean(nn.relu(x), axis=(1, 2))                                      # [N, feature_dim]


ARCHS = {
    "densenet121": functools.partial(DenseNet, growth_rate=32, block_config=(6, 12, 24, 16),
                                     num_init_features=64),
    "densenet161": functools.partial(DenseNet, growth_rate=48, block_config=(6, 12, 36, 24),
                                     num_init_features=96),
    "densenet169": functools.partial(DenseNet, growth_rate=32, block_config=(6, 12, 32, 32),
                                     num_init_features=64),
    "densenet201": functools.partial(DenseNet, growth_rate=32, block_config=(6, 12, 48, 32),
                                     num_init_features=64),
}
