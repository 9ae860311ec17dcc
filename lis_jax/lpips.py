"""LPIPS (Zhang et al. 2018), VGG16 variant, on the Flax VGG16 of lis_jax.classifiers.

    P = lpips.load(DIR)                 # written by `python -m converters.lpips`
    d = P(img0, img1)                   # [N, H, W, 3] in [-1, 1] (each) -> [N] distances
    f = P.features(img0)                # the 5 unit-normalised feature maps, for reuse
    d = P.distance(f, P.features(img1))

What it computes (the `lpips` package 0.1.4, `LPIPS(net='vgg', version='0.1')`, eval mode):
  x -> (x - SHIFT) / SCALE (its ScalingLayer) -> the VGG16 conv stack (torchvision's
  `features`, same parameter names `features_<index>`) -> the activations relu1_2,
  relu2_2, relu3_3, relu4_3, relu5_3 (just before each max pool) -> each divided by its
  channel norm (+ 1e-10) -> squared difference -> a 1x1 conv without bias (the learned
  "lin" weights, one [C] vector per layer) -> spatial mean -> sum over the 5 layers.
`tests/test_lpips.py` holds it to the `lpips` package within 1e-4 on random VGG weights.

Weights: the VGG16 trunk from a torchvision state_dict and the lin weights from the
`lpips` wheel (`lpips/weights/v0.1/vgg.pth`), both converted by `converters/lpips.py`
(the only place torch is needed). `random_lpips(key)` gives a seeded random trunk (optionally
narrower) with unit lin weights, for worlds where ImageNet features mean nothing (the
built-in `shapes` world) and for tests.
"""
from __future__ import annotations

from typing import Any, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from lis_jax import io
from lis_jax.classifiers import layers
from lis_jax.classifiers import vgg

KIND = "lpips"  # meta.json kind of `converters.lpips` outputs
SHIFT = (-0.030, -0.088, -0.188)  # the lpips package's ScalingLayer (v0.1)
SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10  # lpips.normalize_tensor: x / (||x||_C + eps)
VGG16_CFG = vgg.VGG_CFGS["D"]
TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")  # one before each max pool


class VGGTrunk(nn.Module):
  """torchvision VGG `features` up to the last conv block, returning the activation
  before each max pool (for VGG16: relu1_2 ... relu5_3). Parameter names are
  `features_<index>` as in `classifiers.vgg.VGG`, so a VGG16 classifier's params apply.

  Attributes:
    cfg: conv widths and "M" markers (VGG16's by default; narrower widths for `random_lpips`).
  """
  cfg: Sequence[Union[int, str]] = VGG16_CFG

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> list[jnp.ndarray]:
    """[N, H, W, 3] (scaled input) -> [[N, H / 2**l, W / 2**l, C_l] for l in 0..4]."""
    taps, i = [], 0
    for j, v in enumerate(self.cfg):
      if v == "M":
        taps.append(x)
        if j < len(self.cfg) - 1:
          x = layers.max_pool(x, 2, 2)
        i += 1
        continue
      x = nn.relu(layers.conv(v, 3, 1, 1, bias=True, name=f"features_{i}")(x))
      i += 2
    return taps


class LPIPS(struct.PyTreeNode):
  """The LPIPS distance (a pytree: weights are leaves, so jit traces them).

  Attributes:
    trunk: {'params': {'features_<i>': {'kernel', 'bias'}}} of the VGG trunk.
    lins: tuple of 5 [C_l] non-negative lin weights (the 1x1 convs, one output).
    cfg: the trunk's widths (static).
  """
  trunk: Any
  lins: tuple
  cfg: tuple = struct.field(pytree_node=False, default=VGG16_CFG)

  def features(self, img: jnp.ndarray) -> list[jnp.ndarray]:
    """[N, H, W, 3] in [-1, 1] -> 5 channel-normalised maps [N, h_l, w_l, C_l]."""
    x = (img - jnp.asarray(SHIFT, img.dtype)) / jnp.asarray(SCALE, img.dtype)
    taps = VGGTrunk(self.cfg).apply(self.trunk, x)
    return [t / (jnp.sqrt(jnp.sum(t * t, axis=-1, keepdims=True)) + NORM_EPS) for t in taps]

  def distance(self, f0: list[jnp.ndarray], f1: list[jnp.ndarray]) -> jnp.ndarray:
    """Two `features` lists -> [N] distances (sum over layers of the spatial mean)."""
    return sum(jnp.mean(jnp.sum((a - b) ** 2 * w, axis=-1), axis=(1, 2))
               for a, b, w in zip(f0, f1, self.lins))

  def __call__(self, img0: jnp.ndarray, img1: jnp.ndarray) -> jnp.ndarray:
    """Two [N, H, W, 3] images in [-1, 1] (H, W >= 16) -> [N] LPIPS distances."""
    return self.distance(self.features(img0), self.features(img1))


def from_vgg_params(params: dict, lins: Sequence[Any]) -> LPIPS:
  """LPIPS from a VGG16's params (e.g. a converted torchvision vgg16's variables['params'];
  the classifier layers are ignored) and 5 lin weight vectors [C_l]."""
  trunk = {"params": {k: jax.tree_util.tree_map(jnp.asarray, v)
                      for k, v in params.items() if k.startswith("features_")}}
  lins = tuple(jnp.asarray(np.asarray(w, np.float32).reshape(-1)) for w in lins)
  got = tuple(int(w.shape[0]) for w in lins)
  want = tuple(v for v in _tap_widths(VGG16_CFG))
  if got != want:
    raise io.CheckpointError(f"LPIPS lin weights have widths {got}, VGG16 needs {want}")
  io.check_tree(trunk, _trunk_shapes(VGG16_CFG), what="VGG16 trunk params")
  return LPIPS(trunk=trunk, lins=lins, cfg=VGG16_CFG)


def load(ckpt_dir: str) -> LPIPS:
  """Restores an LPIPS checkpoint written by `python -m converters.lpips` (kind "lpips")."""
  meta = io.load_meta(ckpt_dir)
  if meta.get("kind") != KIND:
    raise io.CheckpointError(f"{ckpt_dir}: checkpoint kind {meta.get('kind')!r} is not {KIND!r}")
  expected = {"trunk": _trunk_shapes(VGG16_CFG)["params"],
              "lin": {f"lin{l}": jax.ShapeDtypeStruct((c,), jnp.float32)
                      for l, c in enumerate(_tap_widths(VGG16_CFG))}}
  tree, _ = io.load_checkpoint(ckpt_dir, expected=expected)
  return from_vgg_params(tree["trunk"], [tree["lin"][f"lin{l}"] for l in range(len(TAPS))])


def random_lpips(key: jax.Array, width_divisor: int = 1) -> LPIPS:
  """A random-weight LPIPS: VGG16 trunk (torchvision's init, widths / `width_divisor`)
  with unit lin weights (the package's `lpips=False` baseline: sum over channels)."""
  from lis_jax.classifiers import classifier  # pylint: disable=import-outside-toplevel
  cfg = tuple(v if v == "M" else max(1, v // width_divisor) for v in VGG16_CFG)
  module = vgg.VGG(cfg=cfg, hidden=8, num_classes=1)
  params = classifier.random_variables(module, key, size=32)["params"]
  trunk = {"params": {k: jax.tree_util.tree_map(jnp.asarray, v)
                      for k, v in params.items() if k.startswith("features_")}}
  lins = tuple(jnp.ones((c,), jnp.float32) for c in _tap_widths(cfg))
  return LPIPS(trunk=trunk, lins=lins, cfg=cfg)


def _tap_widths(cfg) -> list[int]:
  """Channel count of each tap (the last conv width before each "M")."""
  out, last = [], None
  for v in cfg:
    if v == "M":
      out.append(last)
    else:
      last = v
  return out


def _trunk_shapes(cfg) -> dict:
  """Shapes of VGGTrunk(cfg)'s variables, without computing anything."""
  return jax.eval_shape(lambda: VGGTrunk(cfg).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
