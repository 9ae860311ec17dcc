"""The `Classifier` pytree (a Flax classifier module bound to its variables) and
`ClassifierModule`, the base of the modules it wraps.

Any Flax module can be wrapped if it has the methods `features(x, train=False)` ->
[N, D] (the input of the last Linear layer) and `head(r)` -> [N, num_classes], and the
attributes `num_classes` and `feature_dim` (all modules in this package do).
"""
from __future__ import annotations

import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from lis_jax.classifiers.preprocess import InputSpec, preprocess


class ClassifierModule(nn.Module):
  """Base of the classifier modules: a `features` stack and a last Linear layer, the head.

  Subclasses define the fields `num_classes`, the property `feature_dim`, the method
  `features(x, train=False)` -> [N, feature_dim] (usually `@nn.compact`) and the class
  constant `HEAD`, the torchvision name of the last Linear layer ('fc', 'classifier_6').
  """
  HEAD: ClassVar[str] = "fc"

  def setup(self):
    setattr(self, self.HEAD, nn.Dense(self.num_classes))

  def head(self, r: jnp.ndarray) -> jnp.ndarray:
    """[N, feature_dim] -> [N, num_classes]: the last Linear layer."""
    return getattr(self, self.HEAD)(r)

  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """[N, H, W, 3] normalised image -> [N, num_classes] logits."""
    return self.head(self.features(x, train))


class Classifier(struct.PyTreeNode):
  """A classifier: `clf(x) == clf.head(clf.features(x))`, all in eval mode.

  The variables (params and BatchNorm statistics) are the pytree's only leaves; the
  module, names and input settings are static. So `jax.jit(lambda clf, x: clf(x))`
  traces the weights as arguments and does not recompile for new weights.

  Precision: on CPU float32 convolutions are exact float32 (torchvision parity ~1e-6
  relative). On GPU/TPU XLA's default float32 matmul/conv precision is reduced (TF32 /
  bf16 passes); for parity-level agreement set
  `jax.config.update('jax_default_matmul_precision', 'highest')`.

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
    return _apply(self.module, "features", self.variables, x)

  def head(self, r: jnp.ndarray) -> jnp.ndarray:
    """[N, feature_dim] -> [N, num_classes] logits (the last Linear layer)."""
    assert r.ndim == 2 and r.shape[-1] == self.feature_dim, f"expected [N, {self.feature_dim}], got {r.shape}"
    return _apply(self.module, "head", self.variables, r)

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """[N, H, W, 3] preprocessed input -> [N, num_classes] logits."""
    return self.head(self.features(x))

  def preprocess(self, img: jnp.ndarray) -> jnp.ndarray:
    """[N, H, W, 3] generator image in [-1, 1] -> this classifier's input (see `input_spec`)."""
    s = self.input_spec
    return preprocess(img, resize=s.resize, crop=s.crop, mean=s.mean, std=s.std,
                      quantize=s.quantize)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _apply(module: nn.Module, method: str, variables: Any, x: jnp.ndarray) -> jnp.ndarray:
  # Jitted so that eager calls compile once per shape instead of op by op; inside an
  # outer jit this is inlined. The module is hashable, hence static.
  return module.apply(variables, x, method=method)


def init_variables(module: nn.Module, key: jax.Array, size: int = 224) -> Any:
  """Variables of `module` from Flax's `module.init` (the modules' own initialisers).

  Slow for deep models (every layer's random op is compiled); `random_variables` is the
  fast torchvision-style alternative. Kept as is: scripts/train_shapes_classifier.py
  seeds its training from it.

  Args:
    module: a classifier module.
    key: PRNG key of the initialisers.
    size: side of the dummy [1, size, size, 3] input used to trace the model.
  """
  return module.init(key, jnp.zeros((1, size, size, 3), jnp.float32))


def random_variables(module: nn.Module, key: jax.Array, size: int = 224) -> Any:
  """Random variables of `module` with torchvision's initialisation, drawn fast from `key`.

  Conv kernels: kaiming normal (fan_out, ReLU gain), as torchvision's models do; Linear
  kernels: uniform(+-1/sqrt(fan_in)) (torch's default); biases 0; BatchNorm scale 1,
  bias 0, running mean 0, var 1. Drawn with numpy from a seed made of the key's data:
  compiling per-layer jax.random ops (what `init_variables` does) takes tens of seconds
  on a busy CPU, this takes milliseconds. Same key, same variables. Used by `build` and
  the built-in random classifiers.

  Args:
    module: a classifier module (hashable: sequence fields must be tuples).
    key: PRNG key (typed `jax.random.key` or raw uint32 `PRNGKey`).
    size: input side used to trace the variable shapes (only matters for models whose
      parameter shapes depend on the input size; none here do).
  """
  data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
  rng = np.random.default_rng(np.asarray(data, np.uint32).ravel().tolist())

  def init(path, leaf):
    collection, name = path[0].key, path[-1].key
    shape = leaf.shape
    if collection == "batch_stats":
      return np.ones(shape, np.float32) if name == "var" else np.zeros(shape, np.float32)
    if name == "scale":
      return np.ones(shape, np.float32)
    if name == "bias":
      return np.zeros(shape, np.float32)
    if len(shape) == 4:                                          # HWIO conv kernel
      fan_out = shape[0] * shape[1] * shape[3]
      return rng.standard_normal(shape, np.float32) * np.float32(np.sqrt(2.0 / fan_out))
    bound = 1.0 / np.sqrt(shape[0])                              # [in, out] Linear kernel
    return rng.uniform(-bound, bound, shape).astype(np.float32)

  shapes = variable_shapes(module, size)
  return jax.tree_util.tree_map(jnp.asarray, jax.tree_util.tree_map_with_path(init, shapes))


@functools.lru_cache(maxsize=32)
def variable_shapes(module: nn.Module, size: int = 224) -> Any:
  """The variables pytree of `module` as jax.ShapeDtypeStruct leaves, computed without FLOPs.

  Cached per (module, size): tracing a DenseNet takes seconds. Do not mutate the result.
  """
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(module.init, jax.random.key(0), x)
