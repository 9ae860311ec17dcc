"""The built-in 'shapes-resnet': a small ResNet trained on the built-in 'shapes' world.

    clf = classifiers.load('shapes-resnet')
    logits = clf(clf.preprocess(G.synthesis(ws)))       # G = generators.load('shapes')

Architecture: torchvision-style ResNet (lis_jax.classifiers.resnet.ResNet), basic
blocks, one per stage, ImageNet stem (7x7/2 conv + 3x3/2 max pool) of width 16, stage
widths 32-64-128: feature_dim 128 units, 8 classes (`generators.shapes.CLASS_NAMES`).
Input: the 64 px generator image, ImageNet-normalised, no crop (other resolutions of
the world are resized to 64 px).

The weights ship in lis_jax/assets/shapes_resnet/ and are reproduced by
`python scripts/train_shapes_classifier.py` (seeded; see that script). This module also
holds the data sampling and held-out evaluation shared by the script and the tests.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from lis_jax import io
from lis_jax.classifiers.classifier import Classifier, variable_shapes
from lis_jax.classifiers.preprocess import InputSpec
from lis_jax.classifiers.resnet import ResNet

ARCH = "shapes-resnet"
KIND = "shapes-resnet"  # meta.json "kind" of its checkpoint.
ASSET_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "assets", "shapes_resnet")
MODULE_FIELDS = dict(block="basic", stage_sizes=(1, 1, 1), widths=(32, 64, 128),
                     stem="imagenet", stem_width=16)
# The world's 64 px image, ImageNet-normalised; other resolutions of the world are
# resized to the 64 px it was trained on (a 64 px image is passed through untouched).
INPUT_SPEC = InputSpec(resize=64, crop=None)
IMAGE_SIZE = 64
# Truncation of the training and evaluation images: half at psi 1 (the full
# distribution), half uniform in [PSI_LOW, 1] (the pipeline's default 0.7 included).
PSI_LOW = 0.5


def module(num_classes: int = 8) -> ResNet:
  return ResNet(num_classes=num_classes, **MODULE_FIELDS)


def load_shapes_resnet(ckpt_dir: str = ASSET_DIR) -> Classifier:
  """Built-in 'shapes-resnet' (trained weights shipped with the package).

  Args:
    ckpt_dir: checkpoint directory; the default is the shipped one.
  Raises:
    io.CheckpointError: the checkpoint is missing or does not fit the architecture.
  """
  meta = io.load_meta(ckpt_dir)
  if meta.get("kind") != KIND:
    raise io.CheckpointError(f"{ckpt_dir}: kind {meta.get('kind')!r} is not {KIND!r}")
  mod = module(int(meta["num_classes"]))
  variables, _ = io.load_checkpoint(ckpt_dir, expected=variable_shapes(mod, IMAGE_SIZE))
  variables = jax.tree_util.tree_map(jnp.asarray, variables)
  return Classifier.create(mod, variables, arch=ARCH, input_spec=INPUT_SPEC)


def sample_psi(key: jax.Array, n: int) -> jnp.ndarray:
  """[n] truncation values: half 1.0, half uniform in [PSI_LOW, 1]."""
  k1, k2 = jax.random.split(key)
  mixed = jax.random.uniform(k1, (n,), minval=PSI_LOW, maxval=1.0)
  return jnp.where(jax.random.bernoulli(k2, 0.5, (n,)), 1.0, mixed)


def sample_images(G, key: jax.Array, n: int, psi=None):
  """Labelled images from the world: classes uniform, z normal.

  Args:
    G: the shapes world (`generators.load('shapes')`).
    key: PRNG key.
    n: number of images.
    psi: truncation (scalar or [n]); None: `sample_psi` (half 1, half in [PSI_LOW, 1]).
  Returns:
    images [n, H, W, 3] in [-1, 1], classes [n] int32.
  """
  kc, kz, kp = jax.random.split(key, 3)
  classes = jax.random.randint(kc, (n,), 0, G.num_classes)
  z = jax.random.normal(kz, (n, G.z_dim))
  if psi is None:
    psi = sample_psi(kp, n)
  return G.synthesis(G.mapping(z, classes, psi=psi)), classes


def accuracy(clf: Classifier, G, key: jax.Array, n: int, psi=None, batch: int = 250) -> float:
  """Top-1 accuracy of `clf` on n fresh images of the world drawn with `key` (see sample_images)."""
  predict = jax.jit(lambda clf, img: jnp.argmax(clf(clf.preprocess(img)), -1))
  correct = 0
  for i, start in enumerate(range(0, n, batch)):
    img, y = sample_images(G, jax.random.fold_in(key, i), min(batch, n - start), psi)
    correct += int(np.sum(np.asarray(predict(clf, img)) == np.asarray(y)))
  return correct / n
