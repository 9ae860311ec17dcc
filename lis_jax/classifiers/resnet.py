"""ResNets with torchvision's semantics and parameter names, NHWC, plus small variants.

torchvision's ImageNet models (`ARCHS`): resnet18/34 (basic blocks), resnet50/101/152
(bottleneck blocks, stride on the 3x3 conv: "ResNet v1.5") and wide_resnet50_2 (bottleneck
inner width doubled). Parameter names follow the torchvision state_dict, so converting one
is a name table: `conv1`, `bn1`, `layer1_0/conv1`, `layer1_0/downsample_0`, ..., `fc`.

A small variant for toy worlds (64-128 px images, a few classes) is the same module with
fewer/narrower stages and, optionally, a CIFAR-style stem that keeps the resolution:

    from lis_jax import classifiers
    from lis_jax.classifiers.resnet import ResNet
    module = ResNet(block="basic", stage_sizes=(1, 1, 1, 1), widths=(16, 32, 64, 128),
                    stem="cifar", num_classes=10)     # feature_dim = 128
    variables = classifiers.random_variables(module, key, 64)  # torchvision-style random init
    clf = classifiers.Classifier.create(module, variables, arch="toy-resnet",
                                        input_spec=classifiers.InputSpec(resize=None, crop=None))

Train it with BatchNorm in train mode (torch momentum 0.1 = Flax momentum 0.9):

    logits, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
    variables = {"params": new_params, "batch_stats": updates["batch_stats"]}

The stem choices: "imagenet" = 7x7/2 conv + BN + ReLU + 3x3/2 max pool (input / 4);
"cifar" = 3x3/1 conv + BN + ReLU (input / 1). Each stage after the first halves the
resolution, so features are global means over [H/32, W/32] (imagenet) or [H/8, W/8] (cifar).
"""
from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lis_jax.classifiers import layers
from lis_jax.classifiers.classifier import Classifier, ClassifierModule, random_variables
from lis_jax.classifiers.preprocess import InputSpec


class BasicBlock(nn.Module):
  """Two 3x3 convs with an identity (or 1x1 conv + BN) shortcut; expansion 1."""
  planes: int
  stride: int = 1
  downsample: bool = False
  expansion = 1

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    y = layers.conv(self.planes, 3, self.stride, 1, name="conv1")(x)
    y = nn.relu(layers.batch_norm(train, name="bn1")(y))
    y = layers.conv(self.planes, 3, 1, 1, name="conv2")(y)
    y = layers.batch_norm(train, name="bn2")(y)
    return nn.relu(y + _shortcut(self, x, train))


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 (strided), 1x1 expand (x4) with a shortcut; torchvision's v1.5 block."""
  planes: int
  stride: int = 1
  downsample: bool = False
  base_width: int = 64   # 128 for wide_resnet50_2: the inner width is planes * base_width / 64.
  expansion = 4

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    width = int(self.planes * (self.base_width / 64.0))
    y = layers.conv(width, 1, name="conv1")(x)
    y = nn.relu(layers.batch_norm(train, name="bn1")(y))
    y = layers.conv(width, 3, self.stride, 1, name="conv2")(y)
    y = nn.relu(layers.batch_norm(train, name="bn2")(y))
    y = layers.conv(self.planes * self.expansion, 1, name="conv3")(y)
    y = layers.batch_norm(train, name="bn3")(y)
    return nn.relu(y + _shortcut(self, x, train))


def _shortcut(block: nn.Module, x: jnp.ndarray, train: bool) -> jnp.ndarray:
  if not block.downsample:
    return x
  s = layers.conv(block.planes * block.expansion, 1, block.stride, name="downsample_0")(x)
  return layers.batch_norm(train, name="downsample_1")(s)


class ResNet(ClassifierModule):
  """A torchvision ResNet on NHWC images.

  Attributes:
    block: "basic" (BasicBlock, expansion 1) or "bottleneck" (Bottleneck, expansion 4).
    stage_sizes: number of blocks per stage (torchvision `layers`); any number of stages.
    widths: `planes` of each stage; the output width of a stage is planes * expansion.
    stem: "imagenet" (7x7/2 conv, 3x3/2 max pool) or "cifar" (3x3/1 conv, no pool).
    stem_width: output channels of the stem conv (torchvision: 64).
    base_width: bottleneck inner width per 64 planes (64 normal, 128 wide_resnet50_2).
    num_classes: outputs of the final Linear layer `fc`.
  """
  block: str = "bottleneck"
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  widths: Sequence[int] = (64, 128, 256, 512)
  stem: str = "imagenet"
  stem_width: int = 64
  base_width: int = 64
  num_classes: int = 1000

  def setup(self):
    assert len(self.stage_sizes) == len(self.widths), (self.stage_sizes, self.widths)
    assert self.block in ("basic", "bottleneck"), self.block
    assert self.stem in ("imagenet", "cifar"), self.stem
    super().setup()                                             # the head, `fc`

  @property
  def expansion(self) -> int:
    return 1 if self.block == "basic" else 4

  @property
  def feature_dim(self) -> int:
    return self.widths[-1] * self.expansion

  def block_plan(self) -> list[tuple[str, int, int, bool]]:
    """(name, planes, stride, has downsample) of every block, in order: `layer{stage}_{index}`.

    The first block of each stage but the first strides by 2; a block gets a 1x1 conv +
    BN shortcut (`downsample_0`, `downsample_1`) where stride or width change.
    """
    plan, in_width = [], self.stem_width
    for i, (n_blocks, planes) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(n_blocks):
        stride = 2 if (i > 0 and j == 0) else 1
        downsample = stride != 1 or in_width != planes * self.expansion
        plan.append((f"layer{i + 1}_{j}", planes, stride, downsample))
        in_width = planes * self.expansion
    return plan

  @nn.compact
  def features(self, x: jnp.ndarray, train: bool = False,
               layer: str = "penultimate") -> jnp.ndarray:
    """[N, H, W, 3] normalised image -> [N, feature_dim] (global mean after the last stage).

    `layer` 'reference' is the same vector: torchvision's children()[:-1] ends with avgpool.
    """
    del layer
    if self.stem == "imagenet":
      x = layers.conv(self.stem_width, 7, 2, 3, name="conv1")(x)       # [N, H/2, W/2, C]
      x = nn.relu(layers.batch_norm(train, name="bn1")(x))
      x = layers.max_pool(x, 3, 2, 1)                                  # [N, H/4, W/4, C]
    else:
      x = layers.conv(self.stem_width, 3, 1, 1, name="conv1")(x)       # [N, H, W, C]
      x = nn.relu(layers.batch_norm(train, name="bn1")(x))
    for name, planes, stride, downsample in self.block_plan():
      if self.block == "basic":
        x = BasicBlock(planes, stride, downsample, name=name)(x, train)
      else:
        x = Bottleneck(planes, stride, downsample, self.base_width, name=name)(x, train)
    return jnp.mean(x, axis=(1, 2))                                     # [N, feature_dim]


# torchvision's ImageNet ResNets: arch name -> module constructor (num_classes is free).
ARCHS = {
    "resnet18": functools.partial(ResNet, block="basic", stage_sizes=(2, 2, 2, 2)),
    "resnet34": functools.partial(ResNet, block="basic", stage_sizes=(3, 4, 6, 3)),
    "resnet50": functools.partial(ResNet, block="bottleneck", stage_sizes=(3, 4, 6, 3)),
    "resnet101": functools.partial(ResNet, block="bottleneck", stage_sizes=(3, 4, 23, 3)),
    "resnet152": functools.partial(ResNet, block="bottleneck", stage_sizes=(3, 8, 36, 3)),
    "wide_resnet50_2": functools.partial(ResNet, block="bottleneck", stage_sizes=(3, 4, 6, 3),
                                         base_width=128),
}


# ----------------------------------------------------------------------------- built-ins

TINY_WIDTHS = (8, 16, 32, 64)     # tiny: a few thousand params per stage; feature_dim 64.
TINY_INPUT_SIZE = 32              # generator images of any size are resized to 32 px.
TINY_SEED = 0                     # fixed, so 'tiny-resnet-random' is the same model everywhere.


def tiny_resnet_random(num_classes: int = 1000, seed: int = TINY_SEED):
  """Built-in 'tiny-resnet-random': a seeded random-weight ResNet for fast end-to-end tests.

  Basic blocks, one per stage, widths 8-16-32-64, CIFAR stem (feature_dim 64). Its
  preprocess resizes any generator image (e.g. 16-64 px) to 32 px (shorter side) with
  ImageNet normalisation and no crop, so it is cheap at every generator resolution.
  Not trained: its outputs are arbitrary but deterministic (and nearly input-independent
  in their argmax: one class wins for most images, as in any random ReLU net).

  Args:
    num_classes: number of logits (default 1000, like the ImageNet models).
    seed: PRNG seed of the weights; the default makes the built-in reproducible.
  """
  module = ResNet(block="basic", stage_sizes=(1, 1, 1, 1), widths=TINY_WIDTHS, stem="cifar",
                  stem_width=TINY_WIDTHS[0], num_classes=num_classes)
  variables = random_variables(module, jax.random.key(seed), TINY_INPUT_SIZE)
  return Classifier.create(module, variables, arch="tiny-resnet-random",
                           input_spec=InputSpec(resize=TINY_INPUT_SIZE, crop=None))
