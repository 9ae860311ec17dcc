"""VGG and AlexNet with torchvision's semantics and parameter names, NHWC.

Both are `features` (a conv stack, names `features_<index in torchvision's Sequential>`),
an adaptive average pool (7x7 for VGG, 6x6 for AlexNet: for other input sizes the pool
averages overlapping bins or repeats pixels exactly as torch.nn.AdaptiveAvgPool2d does),
a flatten in torch's (C, H, W) order, and `classifier` (three Linear layers,
`classifier_<index>`). The penultimate representation is the input of the last Linear
layer (4096-d), taken in eval mode (dropout is the identity). The reference layer
(`layer='reference'`, the reference code's children()[:-1]) is the flattened adaptive
pool output (VGG 512x7x7 = 25088, AlexNet 256x6x6 = 9216); `reference_head` runs the
whole `classifier` on it.
"""
from __future__ import annotations

import functools
from typing import Sequence, Union

import flax.linen as nn
import jax.numpy as jnp

from lis_jax.classifiers import layers
from lis_jax.classifiers.classifier import ClassifierModule

# torchvision's VGG configurations: conv widths, "M" = 2x2/2 max pool.
VGG_CFGS = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "E": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"),
}


class VGG(ClassifierModule):
  """torchvision VGG.

  Attributes:
    cfg: conv widths and "M" (max pool) markers, torchvision's `cfgs` entry.
    batch_norm: a BatchNorm after every conv (the `_bn` variants).
    hidden: width of the two hidden Linear layers (4096).
    pool_size: output side of the adaptive average pool (7).
    num_classes: outputs of the last Linear layer `classifier_6`.
  """
  cfg: Sequence[Union[int, str]] = VGG_CFGS["D"]
  batch_norm: bool = False
  hidden: int = 4096
  pool_size: int = 7
  num_classes: int = 1000

  HEAD = "classifier_6"
  HIDDEN = ("classifier_0", "classifier_3")

  @property
  def feature_dim(self) -> int:
    return self.hidden

  def setup(self):
    _setup_hidden(self)

  def reference_head(self, r: jnp.ndarray) -> jnp.ndarray:
    """[N, 512 * pool_size**2] flattened pool output -> [N, num_classes] (the whole classifier)."""
    return self.head(_hidden_layers(self, r))

  @nn.compact
  def features(self, x: jnp.ndarray, train: bool = False,
               layer: str = "penultimate") -> jnp.ndarray:
    """[N, H, W, 3] normalised image -> [N, hidden]: the input of `classifier_6`
    ('reference': [N, 512 * pool_size**2], the flattened adaptive pool output)."""
    i = 0   # index in torchvision's `features` Sequential (conv, [bn], relu, pool).
    for v in self.cfg:
      if v == "M":
        x = layers.max_pool(x, 2, 2)
        i += 1
        continue
      x = layers.conv(v, 3, 1, 1, bias=True, name=f"features_{i}")(x)
      i += 1
      if self.batch_norm:
        x = layers.batch_norm(train, name=f"features_{i}")(x)
        i += 1
      x = nn.relu(x)
      i += 1
    x = layers.flatten_chw(layers.adaptive_avg_pool(x, self.pool_size))
    return x if layer == "reference" else _hidden_layers(self, x)


class AlexNet(ClassifierModule):
  """torchvision AlexNet (the one-GPU variant: 64-192-384-256-256 convs).

  Attributes:
    hidden: width of the two hidden Linear layers (4096).
    pool_size: output side of the adaptive average pool (6).
    num_classes: outputs of the last Linear layer `classifier_6`.
  """
  hidden: int = 4096
  pool_size: int = 6
  num_classes: int = 1000

  HEAD = "classifier_6"
  HIDDEN = ("classifier_1", "classifier_4")

  @property
  def feature_dim(self) -> int:
    return self.hidden

  def setup(self):
    _setup_hidden(self)

  def reference_head(self, r: jnp.ndarray) -> jnp.ndarray:
    """[N, 256 * pool_size**2] flattened pool output -> [N, num_classes] (the whole classifier)."""
    return self.head(_hidden_layers(self, r))

  @nn.compact
  def features(self, x: jnp.ndarray, train: bool = False,
               layer: str = "penultimate") -> jnp.ndarray:
    """[N, H, W, 3] normalised image (at least 63 px) -> [N, hidden]: the input of `classifier_6`
    ('reference': [N, 256 * pool_size**2], the flattened adaptive pool output)."""
    del train  # No BatchNorm; dropout is the identity in eval mode.
    x = nn.relu(layers.conv(64, 11, 4, 2, bias=True, name="features_0")(x))
    x = layers.max_pool(x, 3, 2)
    x = nn.relu(layers.conv(192, 5, 1, 2, bias=True, name="features_3")(x))
    x = layers.max_pool(x, 3, 2)
    x = nn.relu(layers.conv(384, 3, 1, 1, bias=True, name="features_6")(x))
    x = nn.relu(layers.conv(256, 3, 1, 1, bias=True, name="features_8")(x))
    x = nn.relu(layers.conv(256, 3, 1, 1, bias=True, name="features_10")(x))
    x = layers.max_pool(x, 3, 2)                                       # [N, 6, 6, 256] at 224 px
    x = layers.flatten_chw(layers.adaptive_avg_pool(x, self.pool_size))  # [N, 256 * 36]
    return x if layer == "reference" else _hidden_layers(self, x)


def _setup_hidden(module) -> None:
  """The head and the two hidden Linear layers (named `module.HIDDEN`, torchvision's indices)."""
  ClassifierModule.setup(module)
  for name in module.HIDDEN:
    setattr(module, name, nn.Dense(module.hidden))


def _hidden_layers(module, x: jnp.ndarray) -> jnp.ndarray:
  """The two Linear+ReLU of `classifier` (dropout: eval identity): [N, C * p * p] -> [N, hidden]."""
  for name in module.HIDDEN:
    x = nn.relu(getattr(module, name)(x))
  return x


ARCHS = {
    "alexnet": AlexNet,
    **{f"vgg{depth}{'_bn' if bn else ''}": functools.partial(VGG, cfg=VGG_CFGS[c], batch_norm=bn)
       for depth, c in (("11", "A"), ("13", "B"), ("16", "D"), ("19", "E"))
       for bn in (False, True)},
}
