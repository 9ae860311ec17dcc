"""Differentiable ImageNet preprocessing of generator images (torchvision's eval transform).

torchvision's eval transform for its ImageNet classifiers is
`Resize(256) -> CenterCrop(224) -> ToTensor() -> Normalize(mean, std)` on a PIL image.
`preprocess` does the same on a float [-1, 1] generator image in pure JAX (jit-able and
differentiable): the shorter side is resized to `resize` with an antialiased bilinear
(triangle) filter whose support widens with the downscaling factor, which is PIL's
BILINEAR filter; then the centre `crop` x `crop` window is taken with torchvision's
rounding; then the channels are normalised.

How close it is to the PIL path (measured on skimage's sample photos and noise images,
the same comparison tests/test_preprocess.py asserts; errors in units of 1/255 of the
[0, 1] image before normalisation, over the 224x224 crop):
  - vs PIL resize(BILINEAR) + crop on uint8 images (torchvision's PIL path): max 1.0,
    mean 0.26-0.36, for downscaling (astronaut 512->256, coffee 400x600, chelsea 300x451,
    noise 333x500, 1024->256) and upscaling (128->256); exact for 256 px (no resize).
    This is PIL's own 8-bit rounding after each of its two separable passes.
  - vs PIL's float32 resize (mode 'F', no rounding) of the same images: max 0.003,
    mean <= 0.0003: the filter itself is PIL's.
The reference code first converts the generator output to uint8 (clip, truncate);
`quantize=True` does the same (straight-through gradient), which makes the whole path
match the reference's PIL path within PIL's own 8-bit rounding (max 1/255; exact at 256 px).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """How a classifier wants its input (hashable, so it can be static in a pytree).

  Attributes:
    resize: target length of the shorter image side; None keeps the size.
    crop: side of the centre square crop; None keeps the (resized) image whole.
    mean, std: per-channel normalisation of the [0, 1] image (RGB order).
    quantize: first turn the image into 8-bit levels as the reference code does (see
      `preprocess`); False keeps it continuous.
  """
  resize: int | None = 256
  crop: int | None = 224
  mean: tuple[float, float, float] = IMAGENET_MEAN
  std: tuple[float, float, float] = IMAGENET_STD
  quantize: bool = False


def resized_shape(h: int, w: int, size: int) -> tuple[int, int]:
  """torchvision's Resize(size) output shape: shorter side -> size, aspect ratio kept.

  The longer side is truncated, not rounded: int(size * long / short).
  """
  if h <= w:
    return size, int(size * w / h)
  return int(size * h / w), size


def center_crop_offsets(h: int, w: int, crop: int) -> tuple[int, int]:
  """torchvision CenterCrop's top/left offsets: int(round((h - crop) / 2))."""
  if crop > h or crop > w:
    raise ValueError(f"cannot centre-crop {crop} px from a {h}x{w} image")
  return int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))


def preprocess(img: jnp.ndarray, resize: int | None = 256, crop: int | None = 224,
               mean=IMAGENET_MEAN, std=IMAGENET_STD, quantize: bool = False) -> jnp.ndarray:
  """A [-1, 1] generator image -> a normalised classifier input, like torchvision's eval transform.

  Args:
    img: [N, H, W, 3] float, nominal range [-1, 1] (values outside are not clipped
      unless `quantize`, so gradients flow everywhere).
    resize: the shorter side is resized to this many pixels with an antialiased bilinear
      filter (PIL BILINEAR semantics); None: no resize.
    crop: side of the centre square crop after resizing; None: no crop.
    mean, std: RGB normalisation applied to the [0, 1] image.
    quantize: mimic the reference code (kaschube-lab/LinkingInStyle), which hands the
      classifier `((img + 1) * 127.5).clamp(0, 255).to(torch.uint8)` as a PIL image:
      clip, scale and truncate to integer levels before resizing. The gradient passes
      straight through (as if not quantised), so it stays usable under `jax.grad`.
      False: the continuous image (differs from the reference by up to 1/255).
  Returns:
    [N, crop, crop, 3] float32 (or the resized size when crop is None).
  """
  assert img.ndim == 4 and img.shape[-1] == 3, f"expected [N, H, W, 3], got {img.shape}"
  x = (jnp.asarray(img, jnp.float32) + 1.0) * 0.5                    # [N, H, W, 3] in [0, 1]
  if quantize:
    levels = jnp.floor(jnp.clip(x * 255.0, 0.0, 255.0)) / 255.0     # torch .to(uint8) truncates
    x = x + jax.lax.stop_gradient(levels - x)                         # straight-through gradient
  n, h, w, c = x.shape
  if resize is not None:
    rh, rw = resized_shape(h, w, resize)
    if (rh, rw) != (h, w):
      # Linear = triangle kernel; antialias widens it by the downscale factor (PIL's rule)
      # and renormalises the weights at the borders as PIL does.
      x = jax.image.resize(x, (n, rh, rw, c), method="linear", antialias=True,
                           precision=jax.lax.Precision.HIGHEST)
    h, w = rh, rw
  if crop is not None:
    top, left = center_crop_offsets(h, w, crop)
    x = x[:, top:top + crop, left:left + crop, :]                    # [N, crop, crop, 3]
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (x - mean) / std
