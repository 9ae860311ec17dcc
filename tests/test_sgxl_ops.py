"""StyleGAN-XL ops against their definitions, evaluated literally in float64 numpy.

upfirdn2d: insert up-1 zeros after each sample, pad (negative = crop), convolve with the
full 2-D filter (outer product for separable taps), keep every down-th sample. The JAX
version never touches the inserted zeros or the dropped samples; these tests hold it to
the literal definition, its gradient to the transposed matrix, and the fused ops to
their step-by-step composition.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lis_jax.generators import ops

# float32 evaluation of short float64 sums: relative to the largest reference magnitude.
RTOL = 1e-5


def assert_close(got, ref, what=""):
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
  err = np.max(np.abs(got - ref))
  assert err <= RTOL * max(1.0, np.max(np.abs(ref))), f"{what}: max |diff| {err:.3g}"


def upfirdn2d_literal(x, f, up=1, down=1, padding=(0, 0, 0, 0), gain=1.0):
  """The reference's definition, step by step, in float64 (NHWC)."""
  N, H, W, C = x.shape
  px0, px1, py0, py1 = padding
  f = np.ones([1, 1]) if f is None else np.asarray(f, np.float64)
  f = (np.outer(f, f) if f.ndim == 1 else f) * gain
  xu = np.zeros((N, H * up, W * up, C))
  xu[:, ::up, ::up] = x
  xp = np.pad(xu, [(0, 0), (max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0)), (0, 0)])
  xp = xp[:, max(-py0, 0):xp.shape[1] - max(-py1, 0), max(-px0, 0):xp.shape[2] - max(-px1, 0)]
  k = f[::-1, ::-1]  # convolution = correlation with the flipped filter
  kh, kw = k.shape
  Ho, Wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
  y = np.zeros((N, Ho, Wo, C))
  for a in range(kh):
    for b in range(kw):
      y += k[a, b] * xp[:, a:a + Ho, b:b + Wo]
  return y[:, ::down, ::down]


_rng = np.random.default_rng(0)
FILTERS = {
    "none": None,
    "sep12": _rng.standard_normal(12),     # lowpass length of up/down 2 layers
    "sep24": _rng.standard_normal(24),     # up 4 layers
    "sep5": _rng.standard_normal(5),       # odd length, shorter than up * 2
    "full4x6": _rng.standard_normal((4, 6)),  # non-separable (radial filters are 2-D)
}
CASES = [  # (filter, up, down, padding)
    ("none", 1, 1, (0, 0, 0, 0)),
    ("sep12", 2, 1, (9, 8, 9, 8)),
    ("sep12", 1, 2, (0, 0, 0, 0)),
    ("sep24", 4, 1, (-6, -9, -6, -9)),
    ("sep12", 2, 1, (-11, -12, -11, -12)),
    ("sep5", 3, 2, (3, -2, 5, 1)),
    ("sep5", 1, 3, (2, 2, 0, 1)),
    ("full4x6", 2, 1, (3, 2, 1, 4)),
    ("full4x6", 1, 2, (-1, 0, 2, 0)),
    ("full4x6", 2, 3, (0, 0, 0, 0)),
]


@pytest.mark.parametrize("name,up,down,padding", CASES)
def test_upfirdn2d_matches_definition(name, up, down, padding):
  x = np.random.default_rng(1).standard_normal((2, 21, 19, 3))
  f = FILTERS[name]
  got = jax.jit(lambda x: ops.upfirdn2d(x, f, up=up, down=down, padding=padding,
                                        gain=up ** 2))(jnp.asarray(x, jnp.float32))
  assert_close(got, upfirdn2d_literal(x, f, up, down, padding, gain=up ** 2), name)


@pytest.mark.parametrize("name,up,down,padding", [c for c in CASES if c[0] != "full4x6"])
def test_upfirdn2d_gradient_is_transposed_matrix(name, up, down, padding):
  """The custom VJP (adjoint polyphase op) equals the transpose of the literal map."""
  shape = (1, 19, 18, 1)
  f = FILTERS[name]
  n_in = int(np.prod(shape))
  basis = np.eye(n_in).reshape(n_in, *shape[1:3]).transpose(1, 2, 0)[None]  # [1, H, W, n_in]
  columns = upfirdn2d_literal(basis, f, up, down, padding)  # every basis image at once
  y_shape = columns.shape[:3] + (1,)
  matrix = columns.reshape(-1, n_in)  # [n_out, n_in]
  ct = np.random.default_rng(2).standard_normal(y_shape)
  fn = lambda x: ops.upfirdn2d(x, f, up=up, down=down, padding=padding)  # noqa: E731
  grad = jax.jit(lambda ct: jax.vjp(fn, jnp.zeros(shape, jnp.float32))[1](ct)[0])
  assert_close(grad(jnp.asarray(ct, jnp.float32)), (matrix.T @ ct.ravel()).reshape(shape))


@pytest.mark.parametrize("channel_block", [None, 2])
def test_filtered_lrelu_is_the_reference_sequence(channel_block):
  rng = np.random.default_rng(3)
  x = rng.standard_normal((2, 10, 10, 5)) * 60  # large enough that the clamp bites
  b = rng.standard_normal(5)
  fu, fd = FILTERS["sep12"] / 4, FILTERS["sep12"] / 4
  padding, clamp, gain, slope = (9, 8, 9, 8), 32.0, np.sqrt(2), 0.2
  t = upfirdn2d_literal(x + b, fu, up=2, padding=padding, gain=4)
  t = np.clip(np.where(t >= 0, t, t * slope) * gain, -clamp, clamp)
  assert np.any(np.abs(t) == clamp)
  ref = upfirdn2d_literal(t, fd, down=2)
  got = jax.jit(lambda x, b: ops.filtered_lrelu(
      x, fu, fd, b, up=2, down=2, padding=padding, gain=gain, slope=slope, clamp=clamp,
      channel_block=channel_block))(jnp.asarray(x, jnp.float32), jnp.asarray(b, jnp.float32))
  assert_close(got, ref)


@pytest.mark.parametrize("demodulate,k", [(True, 3), (False, 1)])
def test_modulated_conv2d_matches_per_sample_weights(demodulate, k):
  """The reference builds a modulated, demodulated weight per sample; so does this."""
  rng = np.random.default_rng(4)
  N, H, W, I, O = 3, 6, 5, 4, 7
  x, w = rng.standard_normal((N, H, W, I)), rng.standard_normal((O, I, k, k))  # w: OIHW
  s, gain = rng.standard_normal((N, I)) + 1, 0.7
  pad = k - 1
  xp = np.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
  Ho, Wo = H + 2 * pad - k + 1, W + 2 * pad - k + 1
  ref = np.zeros((N, Ho, Wo, O))
  for n in range(N):
    wn, sn = w, s[n]
    if demodulate:
      wn = wn / np.sqrt(np.mean(wn ** 2, axis=(1, 2, 3), keepdims=True))
      sn = sn / np.sqrt(np.mean(s ** 2))  # RMS over the whole batch, as the reference
    wn = wn * sn[None, :, None, None]
    if demodulate:
      wn = wn / np.sqrt(np.sum(wn ** 2, axis=(1, 2, 3), keepdims=True) + 1e-8)
    wn = wn * gain
    for a in range(k):
      for b in range(k):
        ref[n] += xp[n, a:a + Ho, b:b + Wo] @ wn[:, :, a, b].T
  got = ops.modulated_conv2d(jnp.asarray(x, jnp.float32),
                             jnp.asarray(w.transpose(2, 3, 1, 0), jnp.float32),
                             jnp.asarray(s, jnp.float32), demodulate=demodulate,
                             padding=pad, input_gain=gain)
  assert_close(got, ref)
