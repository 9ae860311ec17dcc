"""Registry of the torchvision architectures: arch name -> Flax module constructor."""
from __future__ import annotations

import flax.linen as nn

from lis_jax.classifiers import densenet, resnet, vgg

ARCHS = {
    **resnet.ARCHS,
    **vgg.ARCHS,
    **densenet.ARCHS,
}


def module_for(arch: str, num_classes: int = 1000, **overrides) -> nn.Module:
  """The Flax module of torchvision architecture `arch`.

  Args:
    arch: a key of ARCHS, e.g. 'resnet50', 'vgg16_bn', 'densenet121'.
    num_classes: outputs of the last Linear layer.
    **overrides: other module fields to change (e.g. `widths` of a ResNet).
  Raises:
    ValueError: unknown arch.
  """
  if arch not in ARCHS:
    raise ValueError(f"unknown classifier architecture {arch!r}; known: {', '.join(sorted(ARCHS))}")
  return ARCHS[arch](num_classes=num_classes, **overrides)
