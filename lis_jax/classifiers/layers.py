"""Layers with PyTorch's conventions, shared by the torchvision-compatible classifiers.

PyTorch pads convolutions and pools symmetrically by an explicit amount, where Flax's
'SAME' pads asymmetrically for strided layers; BatchNorm uses epsilon 1e-5 and keeps
running statistics with momentum 0.1 (Flax's momentum is the opposite: 0.9).
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

BN_EPSILON = 1e-5   # torch.nn.BatchNorm2d default, used by every torchvision model.
BN_MOMENTUM = 0.9   # Flax convention: running = 0.9 * running + 0.1 * batch (torch's 0.1).

# torchvision initialises convolutions with kaiming_normal_(mode='fan_out', relu).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(features: int, kernel: int, stride: int = 1, padding: int = 0, bias: bool = False,
         name: str | None = None) -> nn.Conv:
  """A torch.nn.Conv2d equivalent on NHWC: square kernel, symmetric explicit padding."""
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((padding, padding), (padding, padding)), use_bias=bias,
                 kernel_init=conv_init, name=name)


def batch_norm(train: bool, name: str | None = None) -> nn.BatchNorm:
  """A torch.nn.BatchNorm2d equivalent: running statistics unless `train`."""
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                      name=name)


def max_pool(x: jnp.ndarray, kernel: int, stride: int, padding: int = 0) -> jnp.ndarray:
  """torch.nn.MaxPool2d (floor mode): padding counts as -inf."""
  return nn.max_pool(x, (kernel, kernel), (stride, stride),
                     padding=((padding, padding), (padding, padding)))


def avg_pool(x: jnp.ndarray, kernel: int, stride: int) -> jnp.ndarray:
  """torch.nn.AvgPool2d without padding (floor mode)."""
  return nn.avg_pool(x, (kernel, kernel), (stride, stride))


@functools.lru_cache(maxsize=None)
def _adaptive_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] averaging weights of torch's adaptive pooling along one axis.

  Bin i covers input indices [floor(i * n_in / n_out), ceil((i + 1) * n_in / n_out)),
  so bins overlap when n_in is not a multiple of n_out and repeat inputs when n_in < n_out.
  """
  m = np.zeros((n_out, n_in), np.float32)
  for i in range(n_out):
    start = (i * n_in) // n_out
    end = -((-(i + 1) * n_in) // n_out)
    m[i, start:end] = 1.0 / (end - start)
  return m


def adaptive_avg_pool(x: jnp.ndarray, out_size: int) -> jnp.ndarray:
  """torch.nn.AdaptiveAvgPool2d(out_size) on NHWC: [N, H, W, C] -> [N, out, out, C]."""
  _, h, w, _ = x.shape
  if (h, w) == (out_size, out_size):
    return x
  mh = jnp.asarray(_adaptive_matrix(h, out_size))
  mw = jnp.asarray(_adaptive_matrix(w, out_size))
  return jnp.einsum("oh,nhwc,pw->nopc", mh, x, mw, precision="highest")


def flatten_chw(x: jnp.ndarray) -> jnp.ndarray:
  """torch.flatten(x, 1) of the NCHW equivalent of NHWC `x`: [N, H, W, C] -> [N, C*H*W].

  Keeps torchvision's Linear weights valid as they are (their input is in C, H, W order).
  """
  return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
