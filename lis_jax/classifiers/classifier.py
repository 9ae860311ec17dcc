"""The `Classifier` pytree (a Flax classifier module bound to its variables) and
`ClassifierModule`, the base of the modules it wraps.

Any Flax module can be wrapped if it has the methods `features(x, train=False,
layer='penultimate')` -> [N, D] (the input of the last Linear layer), `head(r)` ->
[N, num_classes], `reference_features(x)` / `reference_head(r)` and the attributes
`num_classes` and `feature_dim` (all modules in this package do: `ClassifierModule`).

Feature layers (`FEATURE_LAYERS`, chosen per classifier with `feature_layer`):
  'penultimate': the input of the last Linear layer (ResNet-50 2048, VGG/AlexNet 4096,
    DenseNet-201 1920); `head` is that Linear layer.
  'reference': what the reference code (kaschube-lab/LinkingInStyle) takes as r:
    `nn.Sequential(*list(net.children())[:-1])(x)` flattened. ResNet: the global average
    pool (the same as 'penultimate'); VGG: the adaptive average pool, 512x7x7 = 25088;
    AlexNet: the adaptive average pool, 256x6x6 = 9216; DenseNet: `features`, i.e. norm5
    without the ReLU and the pool that torchvision's forward applies after it
    (densenet201 1920x7x7 = 94080 at 224 px). Flattened in torch's (C, H, W) order. The head
    is then the rest of the classifier after that layer, exactly: VGG/AlexNet the three
    Linear layers with their ReLUs (dropout is the identity in eval mode), DenseNet
    ReLU + global mean + `classifier`; so `clf.head(clf.features(x))` gives the same logits
    for both layers.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from lis_jax.classifiers.preprocess import InputSpec, preprocess

FEATURE_LAYERS = ("penultimate", "reference")


class ClassifierModule(nn.Module):
  """Base of the classifier modules: a `features` stack and a last Linear layer, the head.

  Subclasses define the fields `num_classes`, the property `feature_dim`, the method
  `features(x, train=False)` -> [N, feature_dim] (usually `@nn.compact`) and the class
  constant `HEAD`, the torchvision name of the last Linear layer ('fc', 'classifier_6').
  """
  HEAD: ClassVar[str] = "fc"
  # Is the reference layer's r >= 0 (a pooled ReLU output)? False for DenseNet (norm5
  # before its ReLU). Every penultimate layer here is a ReLU output.
  REFERENCE_NONNEGATIVE: ClassVar[bool] = True

  def setup(self):
    setattr(self, self.HEAD, nn.Dense(self.num_classes))

  def head(self, r: jnp.ndarray) -> jnp.ndarray:
    """[N, feature_dim] -> [N, num_classes]: the last Linear layer."""
    return getattr(self, self.HEAD)(r)

  def reference_features(self, x: jnp.ndarray) -> jnp.ndarray:
    """[N, H, W, 3] normalised image -> [N, D_ref]: the reference's children()[:-1] output."""
    return self.features(x, layer="reference")

  def reference_head(self, r: jnp.ndarray) -> jnp.ndarray:
    """[N, D_ref] -> [N, num_classes]: the classifier after the reference layer.

    Default (ResNets): the reference layer is the penultimate one, so this is `head`.
    """
    return self.head(r)

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
    feature_layer: which layer `features` returns and `head` starts from (FEATURE_LAYERS).
  """
  variables: Any
  module: nn.Module = struct.field(pytree_node=False)
  arch: str = struct.field(pytree_node=False)
  num_classes: int = struct.field(pytree_node=False)
  feature_dim: int = struct.field(pytree_node=False)
  input_spec: InputSpec = struct.field(pytree_node=False)
  feature_layer: str = struct.field(pytree_node=False, default="penultimate")

  @classmethod
  def create(cls, module: nn.Module, variables: Any, arch: str,
             input_spec: InputSpec = InputSpec(),
             feature_layer: str = "penultimate") -> "Classifier":
    """Wraps `module` and its `variables`; num_classes and feature_dim come from the module.

    Raises:
      ValueError: `feature_layer` not in FEATURE_LAYERS.
    """
    clf = cls(variables=variables, module=module, arch=arch, num_classes=module.num_classes,
              feature_dim=module.feature_dim, input_spec=input_spec)
    return clf.with_settings(feature_layer=feature_layer)

  def with_settings(self, feature_layer: str | None = None,
                    quantize: bool | None = None) -> "Classifier":
    """This classifier with another feature layer and/or 8-bit input (None: keep).

    Args:
      feature_layer: 'penultimate' or 'reference' (module docstring).
      quantize: `preprocess` turns the image into the reference's 8-bit levels first.
    Raises:
      ValueError: unknown feature_layer.
    """
    out = self
    if quantize is not None:
      out = out.replace(input_spec=dataclasses.replace(out.input_spec, quantize=bool(quantize)))
    if feature_layer is not None:
      if feature_layer not in FEATURE_LAYERS:
        raise ValueError(f"feature_layer={feature_layer!r}: expected one of "
                         f"{', '.join(FEATURE_LAYERS)}")
      dim = (self.module.feature_dim if feature_layer == "penultimate"
             else reference_dim(self.module, _input_side(self.input_spec)))
      out = out.replace(feature_layer=feature_layer, feature_dim=dim)
    return out

  @property
  def features_nonnegative(self) -> bool:
    """r >= 0 for every input (a ReLU output), so `relu(r)` (the counterfactual's
    `link(relu(r - s))`) leaves an unshifted r unchanged."""
    return self.feature_layer == "penultimate" or getattr(self.module, "REFERENCE_NONNEGATIVE", True)

  def features(self, x: jnp.ndarray) -> jnp.ndarray:
    """[N, H, W, 3] preprocessed input -> [N, feature_dim] representation at `feature_layer`."""
    assert x.ndim == 4 and x.shape[-1] == 3, f"expected [N, H, W, 3], got {x.shape}"
    method = "features" if self.feature_layer == "penultimate" else "reference_features"
    return _apply(self.module, method, self.variables, x)

  def head(self, r: jnp.ndarray) -> jnp.ndarray:
    """[N, feature_dim] -> [N, num_classes] logits (the classifier after `feature_layer`)."""
    assert r.ndim == 2 and r.shape[-1] == self.feature_dim, f"expected [N, {self.feature_dim}], got {r.shape}"
    method = "head" if self.feature_layer == "penultimate" else "reference_head"
    return _apply(self.module, method, self.variables, r)

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


def _input_side(spec: InputSpec) -> int:
  """Side of the square input the classifier sees (the crop, else the resize, else 224)."""
  return spec.crop or spec.resize or 224


@functools.lru_cache(maxsize=32)
def reference_dim(module: nn.Module, size: int = 224) -> int:
  """D_ref: the width of `module.reference_features` for [1, size, size, 3] inputs (no FLOPs).

  Depends on the input size only for DenseNets (their r keeps the spatial map).
  """
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  out = jax.eval_shape(lambda v, x: module.apply(v, x, method="reference_features"),
                       variable_shapes(module, size), x)
  return int(out.shape[-1])
