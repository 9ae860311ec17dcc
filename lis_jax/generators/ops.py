"""StyleGAN3 / StyleGAN-XL ops in pure JAX, NHWC.

Semantics follow the reference implementations' slow paths (`_upfirdn2d_ref`,
`_filtered_lrelu_ref`, `_bias_act_ref` and `modulated_conv2d` of NVlabs / StyleGAN-XL
`torch_utils/ops`), re-expressed so that nothing is computed that is thrown away:
  * upsampling never convolves inserted zeros: a 1-D filter is split into its polyphase
    components, each a short correlation over the original samples;
  * downsampling only evaluates the kept samples (strided slices, or window strides);
  * the modulated convolution scales the *input* per sample and runs one ordinary
    batched convolution with shared weights, then demodulates the output. This is exactly
    the reference's grouped per-sample convolution rewritten (conv is linear in x and in
    w), and much faster on CPUs than grouped convolution.

Filters are numpy arrays or (nested) tuples of floats: they are part of the static
architecture, not trained parameters, so XLA sees them as constants.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
Filter = Any  # None (identity), 1-D taps [K] (separable) or 2-D [Kh, Kw]; numpy or tuples.


def _as_filter(f: Filter) -> np.ndarray | None:
  """Returns the filter as float64 numpy (exact for float32 taps), or None for identity."""
  if f is None:
    return None
  f = np.asarray(f, dtype=np.float64)
  if f.ndim not in (1, 2) or f.size == 0:
    raise ValueError(f"filter must be 1-D or 2-D and non-empty, got shape {f.shape}")
  return f


def _parse_padding(padding: int | Sequence[int]) -> tuple[int, int, int, int]:
  """int, [px, py] or [px0, px1, py0, py1] -> (px0, px1, py0, py1), like the reference."""
  if isinstance(padding, (int, np.integer)):
    padding = [int(padding)] * 2
  padding = [int(p) for p in padding]
  if len(padding) == 2:
    px, py = padding
    padding = [px, px, py, py]
  if len(padding) != 4:
    raise ValueError(f"padding must have 1, 2 or 4 entries, got {padding}")
  return tuple(padding)


# ----------------------------------------------------------------------------- upfirdn


def _upfirdn_1d(x: Array, taps: Sequence[float], up: int, down: int, pad0: int, pad1: int,
                axis: int) -> Array:
  """`_upfirdn_1d_impl` with its adjoint as gradient (see there for the arguments).

  The adjoint of "zero-insert by up, pad, correlate, keep every down-th" is the same op
  with the taps reversed, up and down swapped and the padding mirrored (as the
  reference's CUDA op does in its backward). Using it keeps the backward pass as cheap
  and as small to compile as the forward, instead of XLA's pad-and-add transposes of
  every slice.
  """
  return _upfirdn_1d_vjp(x, tuple(float(t) for t in taps), up, down, pad0, pad1, axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5, 6))
def _upfirdn_1d_vjp(x, taps, up, down, pad0, pad1, axis):
  return _upfirdn_1d_impl(x, taps, up, down, pad0, pad1, axis)


def _upfirdn_1d_fwd(x, taps, up, down, pad0, pad1, axis):
  return _upfirdn_1d_impl(x, taps, up, down, pad0, pad1, axis), x.shape[axis]


def _upfirdn_1d_bwd(taps, up, down, pad0, pad1, axis, n, dy):
  L, J = len(taps), dy.shape[axis]
  dpad0 = L - 1 - pad0
  dpad1 = (n - 1) * up + 1 - J * down + pad0
  dx = _upfirdn_1d_vjp(dy, taps[::-1], down, up, dpad0, dpad1, axis)
  assert dx.shape[axis] == n, (dx.shape, n)
  return (dx,)


_upfirdn_1d_vjp.defvjp(_upfirdn_1d_fwd, _upfirdn_1d_bwd)


def _upfirdn_1d_impl(x: Array, taps: Sequence[float], up: int, down: int, pad0: int,
                     pad1: int, axis: int) -> Array:
  """1-D upsample (zero insertion), pad/crop, correlate with `taps`, keep every `down`th.

  Polyphase evaluation: output j reads input sample i only through taps k with
  down*j + k - pad0 = up*i, so the outputs fall into P = up / gcd(up, down) classes
  (j mod P); class j0 is a short correlation with taps[k0::up] over input samples
  c + S*q + t (S = down / gcd), evaluated with strided slices.

  Args:
    x: input array; `axis` is the one resampled.
    taps: correlation taps [L] (already flipped and scaled by the caller).
    up, down: integer factors >= 1.
    pad0, pad1: padding of the upsampled signal, before / after; negative crops.
    axis: the axis of `x` to resample.
  Returns:
    x resampled along `axis` to length ceil((n*up + pad0 + pad1 - L + 1) / down).
  """
  n = x.shape[axis]
  L = len(taps)
  full = n * up + pad0 + pad1 - L + 1  # Length before keeping every down-th sample.
  if full < 1:
    raise ValueError(f"upfirdn: signal of length {n} too short for filter of {L} taps "
                     f"(up={up}, pad=({pad0}, {pad1}))")
  J = -(-full // down)  # Output length.
  g = math.gcd(up, down)
  P, S = up // g, down // g
  classes = []  # (count Q, first input index c, taps h) for each class j0 = 0..P-1.
  for j0 in range(P):
    Q = -(-(J - j0) // P) if j0 < J else 0
    k0 = (pad0 - down * j0) % up
    h = taps[k0::up]
    c = (down * j0 + k0 - pad0) // up
    classes.append((Q, c, h))
  lo = max([0] + [-c for Q, c, h in classes if Q > 0 and len(h)])
  hi = max([0] + [c + len(h) - 1 + S * (Q - 1) + 1 - n for Q, c, h in classes
                  if Q > 0 and len(h)])
  if lo or hi:
    cfg = [(0, 0)] * x.ndim
    cfg[axis] = (lo, hi)
    x = jnp.pad(x, cfg)
  # All classes read a common window of input samples c_min + S*q + t, t < T; class j0
  # weights them with H[t, j0] (its own taps, shifted by c_j0 - c_min, zero elsewhere).
  # One pass of T strided slices then yields [..., q_max, P, ...], interleaved by a
  # reshape (a class with fewer outputs computes at most one extra, cut at the end).
  live = [(Q, c, h) for Q, c, h in classes if Q > 0 and len(h)]
  q_max = classes[0][0]
  if not live:
    shape = list(x.shape)
    shape[axis] = J
    return jnp.zeros(shape, x.dtype)
  c_min = min(c for _, c, _ in live)
  T = max(c + len(h) for _, c, h in live) - c_min
  H = np.zeros((T, P))
  for j0, (Q, c, h) in enumerate(classes):
    if Q > 0 and len(h):
      H[c - c_min:c - c_min + len(h), j0] = h
  need = c_min + lo + T - 1 + S * (q_max - 1) + 1 - x.shape[axis]
  if need > 0:  # Classes with fewer outputs may read past the end: more zeros.
    cfg = [(0, 0)] * x.ndim
    cfg[axis] = (0, need)
    x = jnp.pad(x, cfg)
  bshape = [1] * (x.ndim + 1)
  bshape[axis + 1] = P
  acc = None
  for t in range(T):
    start = c_min + lo + t
    sl = lax.slice_in_dim(x, start, start + S * (q_max - 1) + 1, stride=S, axis=axis)
    if P == 1:
      term = sl * float(H[t, 0])
    else:
      term = jnp.expand_dims(sl, axis + 1) * jnp.asarray(H[t].reshape(bshape), x.dtype)
    acc = term if acc is None else acc + term
  if P == 1:
    return lax.slice_in_dim(acc, 0, J, axis=axis)
  shape = list(x.shape)
  y = acc.reshape(shape[:axis] + [q_max * P] + shape[axis + 1:])
  return lax.slice_in_dim(y, 0, J, axis=axis)


def _upfirdn_2d_full(x: Array, f: np.ndarray, up: int, down: int,
                     padding: tuple[int, int, int, int]) -> Array:
  """Non-separable filter [Kh, Kw] (correlation taps) via one depthwise convolution.

  Upsampling uses input dilation (the inserted zeros are implicit), downsampling uses
  window strides; negative padding (a crop of the upsampled grid) is lax padding too.
  Only radially symmetric filters take this path (StyleGAN3-R configs); it is slower
  on CPUs than the separable path.
  """
  px0, px1, py0, py1 = padding
  C = x.shape[-1]
  kern = jnp.asarray(f, x.dtype)[:, :, None, None] * jnp.ones((1, 1, 1, C), x.dtype)
  return lax.conv_general_dilated(
      x, kern, window_strides=(down, down),
      padding=[(py0, py1 + up - 1), (px0, px1 + up - 1)],
      lhs_dilation=(up, up), dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=C)


def upfirdn2d(x: Array, f: Filter = None, up: int = 1, down: int = 1,
              padding: int | Sequence[int] = 0, flip_filter: bool = False,
              gain: float = 1.0) -> Array:
  """Upsample, pad, FIR-filter and downsample a batch of images (NHWC).

  The same sequence as the reference `upfirdn2d`: (1) insert up-1 zeros after each
  sample, (2) pad with zeros (negative padding crops), (3) convolve with `f` keeping only
  outputs whose footprint lies inside the padded signal, (4) keep every `down`-th sample.

  Args:
    x: images [N, H, W, C].
    f: FIR filter: None = identity, [K] = separable (applied along W then H),
      [Kh, Kw] = full 2-D.
    up: integer upsampling factor (both axes).
    down: integer downsampling factor (both axes).
    padding: int, [px, py] or [px0, px1, py0, py1], relative to the upsampled image.
    flip_filter: False = convolution (reference default), True = correlation.
    gain: overall signal gain; a separable filter gets sqrt(gain) per axis.
  Returns:
    [N, H', W', C] with W' = ceil((W*up + px0 + px1 - Kw + 1) / down), likewise H'.
  """
  px0, px1, py0, py1 = _parse_padding(padding)
  f = _as_filter(f)
  if f is None:
    f = np.ones([1], np.float64)
  if not flip_filter:
    f = f[::-1] if f.ndim == 1 else f[::-1, ::-1]
  if f.ndim == 2:
    return _upfirdn_2d_full(x, f * gain, up, down, (px0, px1, py0, py1))
  taps = f * math.sqrt(gain)
  x = _upfirdn_1d(x, taps, up, down, px0, px1, axis=2)  # Along W.
  x = _upfirdn_1d(x, taps, up, down, py0, py1, axis=1)  # Along H.
  return x


# ----------------------------------------------------------------------------- activations


def bias_act_lrelu(x: Array, b: Array | None = None, slope: float = 0.2,
                   gain: float = math.sqrt(2), clamp: float | None = None) -> Array:
  """Reference `bias_act(act='lrelu')` on the last axis: (x + b) -> lrelu -> * gain -> clamp.

  Args:
    x: [..., C].
    b: bias [C], or None for no bias.
    slope: leaky ReLU slope on the negative side (1 = linear).
    gain: multiplier after the activation.
    clamp: clamp the result to [-clamp, clamp]; None = no clamping.
  """
  if b is not None:
    x = x + b.astype(x.dtype)
  if slope != 1:
    x = jnp.where(x >= 0, x, x * slope)
  if gain != 1:
    x = x * gain
  if clamp is not None:
    x = jnp.clip(x, -clamp, clamp)
  return x


def filtered_lrelu(x: Array, fu: Filter = None, fd: Filter = None, b: Array | None = None,
                   up: int = 1, down: int = 1, padding: int | Sequence[int] = 0,
                   gain: float = math.sqrt(2), slope: float = 0.2,
                   clamp: float | None = None, channel_block: int | None = None) -> Array:
  """Filtered leaky ReLU, in the reference order (`_filtered_lrelu_ref`), NHWC.

  1. add bias `b`; 2. upsample by `up` with filter `fu` (gain up**2) and `padding`;
  3. leaky ReLU with `slope`, times `gain`; 4. clamp to [-clamp, clamp];
  5. filter with `fd` and keep every `down`-th sample.

  Args:
    x: [N, H, W, C].
    fu, fd: up / down filters (None = identity, [K] separable, [Kh, Kw] full).
    b: bias [C] or None.
    up, down: integer factors.
    padding: as in `upfirdn2d`, relative to the upsampled image.
    gain, slope, clamp: as in `bias_act_lrelu` (clamp None = none).
    channel_block: evaluate one (sample, block of this many channels) at a time, to keep
      the upsampled intermediate in cache (same result); None = all at once.
  Returns:
    [N, H', W', C].
  """
  if b is not None:
    x = x + b.astype(x.dtype)

  def apply(x):
    x = upfirdn2d(x, fu, up=up, padding=padding, gain=up ** 2)
    x = bias_act_lrelu(x, None, slope=slope, gain=gain, clamp=clamp)
    return upfirdn2d(x, fd, down=down)

  if channel_block is None or (up == 1 and fu is None and fd is None):
    return apply(x)
  return _map_channel_blocks(apply, x, channel_block)


def _map_channel_blocks(fn, x: Array, block: int) -> Array:
  """fn (per-channel, spatially shaped) applied to one (sample, channel block) at a time.

  The upsampled intermediate of a filtered leaky ReLU is up**2 times its input; on
  CPUs the op is bound by memory traffic. Evaluating it on [1, H, W, block] slices in a
  loop keeps that intermediate in cache (about 3x faster for 256 channels at 84 px).
  Channels are zero-padded to a multiple of `block` and cut off afterwards.
  """
  N, H, W, C = x.shape
  G = -(-C // block)
  if G * block != C:
    x = jnp.pad(x, [(0, 0)] * 3 + [(0, G * block - C)])
  xs = x.reshape(N, H, W, G, block).transpose(0, 3, 1, 2, 4).reshape(N * G, 1, H, W, block)
  ys = lax.map(fn, xs)  # [N*G, 1, H', W', block]
  Ho, Wo = ys.shape[2:4]
  y = ys.reshape(N, G, Ho, Wo, block).transpose(0, 2, 3, 1, 4).reshape(N, Ho, Wo, G * block)
  return y[..., :C] if G * block != C else y


# ----------------------------------------------------------------------------- layers


def fully_connected(x: Array, weight: Array, bias: Array | None, weight_gain: float,
                    bias_gain: float = 1.0, activation: str = "linear") -> Array:
  """The reference `FullyConnectedLayer` with its runtime gains (lr multiplier).

  Args:
    x: [N, in].
    weight: [in, out] (the transpose of torch's Linear weight).
    bias: [out] or None.
    weight_gain: lr_multiplier / sqrt(in).
    bias_gain: lr_multiplier.
    activation: 'linear' or 'lrelu' (slope 0.2, gain sqrt(2)).
  Returns:
    [N, out].
  """
  y = x @ (weight.astype(x.dtype) * weight_gain)
  b = None if bias is None else bias.astype(x.dtype) * bias_gain
  if activation == "linear":
    return y if b is None else y + b
  if activation == "lrelu":
    return bias_act_lrelu(y, b)
  raise ValueError(f"unsupported activation {activation!r}")


def modulated_conv2d(x: Array, weight: Array, styles: Array, demodulate: bool = True,
                     padding: int = 0, input_gain: Array | float | None = None) -> Array:
  """Modulated convolution of StyleGAN3 (`modulated_conv2d`), NHWC.

  The reference builds per-sample weights w[n] = w * s[n] (pre-normalised), demodulates
  them per output channel, scales them by `input_gain` and runs a grouped convolution.
  Here the same result is computed as  d[n] * conv(x * s[n] * input_gain, w): one
  batched convolution with shared weights.

  One deliberate difference: the reference pre-normalises the styles by their RMS over
  the whole *batch*; with demodulation that factor cancels exactly except inside the
  1e-8 epsilon, so here it is taken per sample, which keeps samples independent of their
  batch (the difference is below float32 resolution for any sane style magnitude).

  Args:
    x: input [N, H, W, I].
    weight: [kh, kw, I, O] (HWIO).
    styles: [N, I].
    demodulate: apply weight (pre-)normalisation and demodulation.
    padding: symmetric zero padding (the reference passes kernel_size - 1).
    input_gain: scalar (or [I] / [N, I]) input scaling applied after demodulation;
      None = 1.
  Returns:
    [N, H + 2*padding - kh + 1, W + 2*padding - kw + 1, O].
  """
  N, _, _, I = x.shape
  kh, kw, wi, O = weight.shape
  assert wi == I and styles.shape == (N, I), (x.shape, weight.shape, styles.shape)
  w = weight.astype(jnp.float32)
  s = styles.astype(jnp.float32)
  if demodulate:
    w = w * lax.rsqrt(jnp.mean(jnp.square(w), axis=(0, 1, 2), keepdims=True))
    s = s * lax.rsqrt(jnp.mean(jnp.square(s), axis=1, keepdims=True))
    # d[n, o] = rsqrt(sum_{i,k} (w[k, i, o] s[n, i])^2 + 1e-8)
    dcoefs = lax.rsqrt(jnp.square(s) @ jnp.sum(jnp.square(w), axis=(0, 1)) + 1e-8)  # [N, O]
  gain = s if input_gain is None else s * input_gain  # [N, I]
  xs = x * gain[:, None, None, :].astype(x.dtype)
  if kh == kw == 1 and padding == 0:
    y = jnp.einsum("nhwi,io->nhwo", xs, w[0, 0].astype(x.dtype))
  else:
    y = lax.conv_general_dilated(
        xs, w.astype(x.dtype), window_strides=(1, 1),
        padding=[(padding, padding), (padding, padding)],
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  if demodulate:
    y = y * dcoefs[:, None, None, :].astype(y.dtype)
  return y


def fourier_features(transform: Array, freqs: Array, phases: Array, affine_t: Array,
                     size: tuple[int, int], sampling_rate: float, bandwidth: float) -> Array:
  """Fourier features of `SynthesisInput` before its trainable channel mixing.

  Args:
    transform: user-specified inverse transform [3, 3] (a buffer, usually identity).
    freqs: [C, 2] frequencies; phases: [C].
    affine_t: [N, 4] output of the input layer's affine: (r_c, r_s, t_x, t_y).
    size: output (width, height) in samples.
    sampling_rate: samples per unit; bandwidth: frequency cut-off of the features.
  Returns:
    [N, height, width, C] features sin(2 pi (grid . f + phase)) * amplitude.
  """
  t = affine_t / jnp.linalg.norm(affine_t[:, :2], axis=1, keepdims=True)
  N = t.shape[0]
  zeros, ones = jnp.zeros((N,), t.dtype), jnp.ones((N,), t.dtype)
  # Inverse rotation and inverse translation wrt the resulting image: [N, 3, 3].
  m_r = jnp.stack([jnp.stack([t[:, 0], -t[:, 1], zeros], 1),
                   jnp.stack([t[:, 1], t[:, 0], zeros], 1),
                   jnp.stack([zeros, zeros, ones], 1)], 1)
  m_t = jnp.stack([jnp.stack([ones, zeros, -t[:, 2]], 1),
                   jnp.stack([zeros, ones, -t[:, 3]], 1),
                   jnp.stack([zeros, zeros, ones], 1)], 1)
  transforms = m_r @ m_t @ transform[None]  # [N, 3, 3]
  ph = phases[None] + (freqs[None] @ transforms[:, :2, 2:])[..., 0]  # [N, C]
  fr = freqs[None] @ transforms[:, :2, :2]  # [N, C, 2]
  amplitudes = jnp.clip(
      1 - (jnp.linalg.norm(fr, axis=2) - bandwidth) / (sampling_rate / 2 - bandwidth), 0, 1)
  width, height = int(size[0]), int(size[1])
  # Sample centres as torch.affine_grid(align_corners=False) places them, scaled by theta.
  gx = (2 * np.arange(width) + 1) / width - 1
  gy = (2 * np.arange(height) + 1) / height - 1
  gx = jnp.asarray(gx * (0.5 * width / sampling_rate), jnp.float32)  # [W]
  gy = jnp.asarray(gy * (0.5 * height / sampling_rate), jnp.float32)  # [H]
  x = (gx[None, None, :, None] * fr[:, None, None, :, 0]
       + gy[None, :, None, None] * fr[:, None, None, :, 1])  # [N, H, W, C]
  x = x + ph[:, None, None, :]
  x = jnp.sin(x * (np.pi * 2))
  return x * amplitudes[:, None, None, :]
