"""The `Classifier` pytree: a Flax classifier module bound to its variables.

Any Flax module can be wrapped if it has the methods `features(x, train=False)` ->
[N, D] (the input of the last Linear layer) and `head(r)` -> [N, num_classes], and the
attributes `num_classes` and `feature_dim` (all modules in this package do).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from lis_jax.classifiers.preprocess import InputSpec, preprocess


class Classifier(struct.PyTreeNode):
  """A classifier: `clf(x) == clf.head(clf.features(x))`, all in eval mode.

  The variables (params and BatchNorm statistics) are the pytree's only leaves; the
  module, names and input settings are static. So `jax.jit(lambda clf, x: clf(x))`
  traces the weights as arguments and does not recompile for new weights.

  Attributes:
    variables: {'params': ..., 'batch_stats': ...} (batch_stats only for BN models).
    module: the Flax module (hashable, static).
    arch: architecture name, e.g. 'resnet50' or 'tiny-resnet-random'.
    num_classes: number of logits.
    feature_dim: D, the size of the penultimate representation.
    input_spec: what `preprocess` does to a [-1, 1] generator image for this model.
  """
  variables: Any
  module: nn.Module = struct.field(pytree_node=False)
  arch: str = struct.field(pytree_node=False)
  num_classes: int = struct.field(pytree_node=False)
  feature_dim: int = struct.field(pytree_node=False)
  input_spec: InputSpec = struct.field(pytree_node=False)

  @classmethod
  def create(cls, module: nn.Module, variables: Any, arch: str,
             input_spec: InputSpec = InputSpec()) -> "Classifier":
    """Wraps `module` and its `variables`; num_classes and feature_dim come from the module."""
    return cls(variables=variables, module=module, arch=arch, num_classes=module.num_classes,
               feature_dim=module.feature_dim, input_spec=input_spec)

  def features(self, x: jnp.ndarray) -> jnp.ndarray:
    """[N, H, W, 3] preprocessed input -> [N, feature_dim] penultimate representation."""
    assert x.ndim == 4 and x.shape[-1] == 3, f"expected [N, H, W, 3], got {x.shape}"
    return self.module.apply(self.variables, x, method="features")

  def head(self, r: jnp.ndarray) -> jnp.ndarray:
    """[N, feature_dim] -> [N, num_classes] logits (the last Linear layer)."""
    assert r.ndim == 2 and r.shape[-1] == self.feature_dim, f"expected [N, {self.feature_dim}], got {r.shape}"
    return self.module.apply(self.variables, r, method="head")

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """[N, H, W, 3] preprocessed input -> [N, num_classes] logits."""
    return self.head(self.features(x))

  def preprocess(self, img: jnp.ndarray) -> jnp.ndarray:
    """[N, H, W, 3] generator image in [-1, 1] -> this classifier's input (see `input_spec`)."""
    s = self.input_spec
    return preprocess(img, resize=s.resize, crop=s.crop, mean=s.mean, std=s.std)


def init_variables(module: nn.Module, key: jax.Array, size: int = 224) -> Any:
  """Random variables of `module` (Flax default / torchvision-like init) for a size x size input."""
  return module.init(key, jnp.zeros((1, size, size, 3), jnp.float32))


def variable_shapes(module: nn.Module, size: int = 224) -> Any:
  """The variables pytree of `module` as jax.ShapeDtypeStruct leaves, computed without FLOPs."""
  return jax.eval_shape(lambda: init_variables(module, jax.random.key(0), size))
