"""torchvision-compatible classifiers in Flax (NHWC), plus built-in demo classifiers.

Every classifier `clf` returned by `load` or `build` exposes (classifier.py):
  clf.arch, clf.num_classes, clf.feature_dim
  clf.features(x) -> r        # [N, H, W, 3] preprocessed -> [N, D] at clf.feature_layer
  clf.head(r) -> logits       # [N, D] -> [N, num_classes] (the classifier after that layer)
  clf.feature_layer           # 'penultimate' (input of the last Linear layer) or 'reference'
                              # (the reference code's children()[:-1], flattened): `load`
  clf(x) -> logits            # == clf.head(clf.features(x))
  clf.preprocess(img)         # [-1, 1] generator image -> this classifier's input
`clf` is a pytree (params are leaves), so it can be passed to `jax.jit`.

Architectures (`ARCHS`): resnet18/34/50/101/152, wide_resnet50_2, vgg11/13/16/19 and
their _bn variants, alexnet, densenet121/161/169/201. Weights come from torchvision
state_dicts through `python -m converters.torchvision`.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp

from lis_jax import io
from lis_jax.classifiers.archs import ARCHS, module_for
from lis_jax.classifiers.classifier import (FEATURE_LAYERS, Classifier, init_variables,
                                           random_variables, reference_dim, variable_shapes)
from lis_jax.classifiers.preprocess import IMAGENET_MEAN, IMAGENET_STD, InputSpec, preprocess
from lis_jax.classifiers import resnet
from lis_jax.classifiers import shapes_resnet



def build(arch: str, num_classes: int = 1000, *, key: jax.Array, **overrides: Any) -> Classifier:
  """A randomly initialised torchvision-architecture classifier.

  Args:
    arch: a key of ARCHS, e.g. 'resnet50'.
    num_classes: outputs of the last Linear layer.
    key: PRNG key of the random weights (BatchNorm statistics start at mean 0, var 1).
    **overrides: module fields to change, e.g. `widths=(16, 32, 64, 128)` for a ResNet.
  """
  module = module_for(arch, num_classes, **overrides)
  return Classifier.create(module, random_variables(module, key), arch=arch)


def load(path_or_name: str, feature_layer: str = "penultimate", quantize: bool | None = None,
         **kwargs: Any) -> Classifier:
  """Loads a classifier from a converted checkpoint dir or by built-in name.

  Args:
    path_or_name: a directory written by `python -m converters.torchvision` (meta.json
      kind "torchvision"), or one of `BUILTINS`.
    feature_layer: 'penultimate' (the input of the last Linear layer) or 'reference' (the
      reference code's `children()[:-1]` output, flattened; see classifier.py). `features`
      returns it and `head` maps it to the logits.
    quantize: True: `preprocess` hands the classifier the reference's 8-bit image
      (straight-through gradient); False: the continuous image; None: the model's default.
    **kwargs: passed to the built-in's constructor or the kind's loader.
  Raises:
    io.CheckpointError: unknown name, missing or malformed checkpoint, or parameters
      that do not match the architecture (the message lists the differences).
    ValueError: unknown feature_layer.
  """
  if feature_layer not in FEATURE_LAYERS:
    raise ValueError(f"feature_layer={feature_layer!r}: expected one of {', '.join(FEATURE_LAYERS)}")
  clf = _load(path_or_name, **kwargs)
  return clf.with_settings(feature_layer=feature_layer, quantize=quantize)


def _load(path_or_name: str, **kwargs: Any) -> Classifier:
  if path_or_name in BUILTINS:
    return BUILTINS[path_or_name](**kwargs)
  if not os.path.exists(path_or_name):
    raise io.CheckpointError(
        f"classifier {path_or_name!r} is neither a checkpoint directory nor a built-in "
        f"({', '.join(sorted(BUILTINS)) or 'none registered'})")
  meta = io.load_meta(path_or_name)
  kind = meta.get("kind")
  if kind not in LOADERS:
    raise io.CheckpointError(f"{path_or_name}: checkpoint kind {kind!r} is not a classifier")
  return LOADERS[kind](path_or_name, **kwargs)


def load_torchvision(ckpt_dir: str) -> Classifier:
  """Restores a classifier converted from a torchvision state_dict (meta kind "torchvision")."""
  meta = io.load_meta(ckpt_dir)
  arch, num_classes = meta.get("arch"), meta.get("num_classes")
  if arch not in ARCHS or not isinstance(num_classes, int):
    raise io.CheckpointError(
        f"{ckpt_dir}: meta.json needs a known 'arch' and an int 'num_classes', "
        f"got arch={arch!r} num_classes={num_classes!r}")
  module = module_for(arch, num_classes)
  variables, _ = io.load_checkpoint(ckpt_dir, expected=variable_shapes(module))
  variables = jax.tree_util.tree_map(jnp.asarray, variables)    # Device arrays, once.
  return Classifier.create(module, variables, arch=arch)


# Built-in classifiers: name -> function returning a classifier (no file needed).
BUILTINS: dict[str, Callable[..., Classifier]] = {
    "tiny-resnet-random": resnet.tiny_resnet_random,
    "shapes-resnet": shapes_resnet.load_shapes_resnet,  # trained on 'shapes'
}

# Checkpoint kinds (meta.json "kind") -> function(ckpt_dir) -> classifier.
LOADERS: dict[str, Callable[..., Classifier]] = {
    "torchvision": load_torchvision,
}
