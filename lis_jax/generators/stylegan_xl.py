"""StyleGAN-XL (class-conditional StyleGAN3 with super-resolution stages) in Flax, NHWC.

The network is described by a `GeneratorSpec`: a static, hashable, JSON-able record of
everything the forward pass needs that is not a trained array (channels, sizes,
up/down factors, paddings, FIR filters, gains). The same spec describes a plain
`Generator` snapshot and a `SuperresGenerator` grown by stacked stages: both are an input
layer followed by `layer_names` in execution order. Weights live in a variables dict
`{'params': ..., 'buffers': ...}` whose names follow the reference modules
(`mapping/fc0/weight`, `synthesis/L5_36_48/affine/bias`, `synthesis/input/freqs`, ...);
layouts are JAX's: fully connected weights [in, out], convolutions HWIO.

Reference: autonomousvision/stylegan-xl `training/networks_stylegan3_resetting.py`.

Entry points:
  Generator             the public object (a pytree): .mapping, .synthesis, .synthesis_features
  build_spec(...)       layer specification from hyperparameters, as the trainer grows it
  PRESETS / random_generator(preset, key)   randomly initialised generators
  load(ckpt_dir)        a checkpoint written by `python -m converters.stylegan_xl`
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from lis_jax import io
from lis_jax.generators import ops

KIND = "stylegan_xl"
SPEC_VERSION = 1

# ----------------------------------------------------------------------------- specification


def _tuple(x: Any) -> Any:
  """Nested lists -> nested tuples (hashable), numpy scalars -> Python numbers."""
  if isinstance(x, (list, tuple, np.ndarray)):
    return tuple(_tuple(v) for v in x)
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.floating):
    return float(x)
  return x


@dataclasses.dataclass(frozen=True)
class MappingSpec:
  """`MappingNetwork`: z (+ class embedding) -> w, broadcast to num_ws."""
  z_dim: int
  c_dim: int            # Number of classes (the one-hot label size); > 0.
  w_dim: int
  num_ws: int
  num_layers: int = 2   # Number of fc layers.
  embed_dim: int = 320  # Class embedding width (tf_efficientnet_lite0 embeddings).
  lr_multiplier: float = 0.01  # Of the fc layers (the embedding projection uses 1).


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """`SynthesisInput`: Fourier features with a learned rotation / translation."""
  channels: int
  size: tuple[int, int]   # (width, height) in samples, margin included.
  sampling_rate: float
  bandwidth: float


@dataclasses.dataclass(frozen=True)
class LayerSpec:
  """One `SynthesisLayer`: modulated conv -> filtered leaky ReLU."""
  name: str               # Reference name, e.g. 'L5_36_48'.
  is_torgb: bool
  is_critically_sampled: bool
  in_channels: int
  out_channels: int
  in_size: tuple[int, int]    # (width, height).
  out_size: tuple[int, int]
  conv_kernel: int
  up_factor: int
  down_factor: int
  padding: tuple[int, int, int, int]  # (x0, x1, y0, y1) on the upsampled grid.
  up_filter: Any          # None, taps (separable) or rows of taps (2-D); float32 values.
  down_filter: Any
  conv_clamp: float | None
  in_sampling_rate: float
  out_sampling_rate: float
  in_cutoff: float
  out_cutoff: float
  in_half_width: float
  out_half_width: float


@dataclasses.dataclass(frozen=True)
class SynthesisSpec:
  """`SynthesisNetwork`: input layer, then `layers` in execution order."""
  w_dim: int
  img_resolution: int
  img_channels: int
  output_scale: float
  input: InputSpec
  layers: tuple[LayerSpec, ...]

  @property
  def num_ws(self) -> int:
    return len(self.layers) + 1

  @property
  def layer_names(self) -> tuple[str, ...]:
    return tuple(l.name for l in self.layers)


@dataclasses.dataclass(frozen=True)
class GeneratorSpec:
  mapping: MappingSpec
  synthesis: SynthesisSpec

  def to_json(self) -> dict:
    return {"version": SPEC_VERSION, **dataclasses.asdict(self)}

  @staticmethod
  def from_json(d: Mapping[str, Any]) -> "GeneratorSpec":
    if d.get("version") != SPEC_VERSION:
      raise io.CheckpointError(f"unsupported StyleGAN-XL spec version {d.get('version')!r}")
    s = dict(d["synthesis"])
    s["input"] = InputSpec(**{k: _tuple(v) for k, v in s["input"].items()})
    s["layers"] = tuple(LayerSpec(**{k: _tuple(v) for k, v in l.items()}) for l in s["layers"])
    return GeneratorSpec(mapping=MappingSpec(**d["mapping"]), synthesis=SynthesisSpec(**s))


# ----------------------------------------------------------------------------- spec from hyperparameters


def design_lowpass_filter(numtaps: int, cutoff: float, width: float, fs: float,
                          radial: bool = False) -> tuple | None:
  """Kaiser low-pass filter as the reference designs it (None for a 1-tap identity)."""
  import scipy.signal  # Local: only needed to build specs from hyperparameters.
  import scipy.special
  if numtaps == 1:
    return None
  if not radial:
    f = scipy.signal.firwin(numtaps=numtaps, cutoff=cutoff, width=width, fs=fs)
    return _tuple(f.astype(np.float32))
  x = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
  r = np.hypot(*np.meshgrid(x, x))
  f = scipy.special.j1(2 * cutoff * (np.pi * r)) / (np.pi * r)
  beta = scipy.signal.kaiser_beta(scipy.signal.kaiser_atten(numtaps, width / (fs / 2)))
  w = np.kaiser(numtaps, beta)
  f *= np.outer(w, w)
  f /= np.sum(f)
  return _tuple(f.astype(np.float32))


def _layer_spec(idx: int, is_torgb: bool, is_critical: bool, in_ch: int, out_ch: int,
                in_size: int, out_size: int, in_sr: float, out_sr: float, in_cutoff: float,
                out_cutoff: float, in_hw: float, out_hw: float, conv_kernel: int,
                filter_size: int, lrelu_upsampling: int, use_radial_filters: bool,
                conv_clamp: float | None) -> LayerSpec:
  """Mirrors `SynthesisLayer.__init__` / `init_upfirdn` of the reference."""
  conv_kernel = 1 if is_torgb else conv_kernel
  tmp_sr = max(in_sr, out_sr) * (1 if is_torgb else lrelu_upsampling)
  up = int(np.rint(tmp_sr / in_sr))
  down = int(np.rint(tmp_sr / out_sr))
  up_taps = filter_size * up if up > 1 and not is_torgb else 1
  down_taps = filter_size * down if down > 1 and not is_torgb else 1
  down_radial = use_radial_filters and not is_critical
  pad_total = (out_size - 1) * down + 1
  pad_total -= (in_size + conv_kernel - 1) * up
  pad_total += up_taps + down_taps - 2
  pad_lo = (pad_total + up) // 2
  pad_hi = pad_total - pad_lo
  return LayerSpec(
      name=f"L{idx}_{out_size}_{out_ch}", is_torgb=is_torgb, is_critically_sampled=is_critical,
      in_channels=in_ch, out_channels=out_ch, in_size=(in_size, in_size),
      out_size=(out_size, out_size), conv_kernel=conv_kernel, up_factor=up, down_factor=down,
      padding=(int(pad_lo), int(pad_hi), int(pad_lo), int(pad_hi)),
      up_filter=design_lowpass_filter(up_taps, in_cutoff, in_hw * 2, tmp_sr),
      down_filter=design_lowpass_filter(down_taps, out_cutoff, out_hw * 2, tmp_sr, down_radial),
      conv_clamp=conv_clamp, in_sampling_rate=float(in_sr), out_sampling_rate=float(out_sr),
      in_cutoff=float(in_cutoff), out_cutoff=float(out_cutoff), in_half_width=float(in_hw),
      out_half_width=float(out_hw))


def build_spec(*, z_dim: int = 64, c_dim: int = 1000, w_dim: int = 512, stem_resolution: int = 16,
               stem_layers: int = 10, head_layers: Sequence[int] = (), channel_base: int = 32768,
               channel_max: int = 512, img_channels: int = 3, num_critical: int = 2,
               first_cutoff: float = 2, first_stopband: float = 2 ** 2.1,
               last_stopband_rel: float = 2 ** 0.3, margin_size: int = 10,
               output_scale: float = 0.25, conv_kernel: int = 3, filter_size: int = 6,
               lrelu_upsampling: int = 2, use_radial_filters: bool = False,
               conv_clamp: float | None = 256, mapping_layers: int = 2,
               lr_multiplier: float = 0.01, embed_dim: int = 320) -> GeneratorSpec:
  """The layer specification the StyleGAN-XL trainer builds: a stem `Generator` at
  `stem_resolution`, then one `SuperresGenerator` stage (x2) per entry of `head_layers`.

  Each stage drops the trailing critically sampled layers (and ToRGB) of the network so
  far and appends `head_layers[i] + 1` layers whose cut-offs continue from the last kept
  layer, like `SuperresGenerator.compute_superres_filterparams`.

  Args:
    z_dim, c_dim, w_dim: latent, class count (one-hot size) and W widths.
    stem_resolution: output resolution of the stem; each stage doubles it.
    stem_layers: `num_layers` of the stem synthesis (excluding input and ToRGB).
    head_layers: layers added by each super-resolution stage; () = stem only.
    channel_base, channel_max: channel count min(channel_base / 2 / cutoff, channel_max).
    others: as in the reference `SynthesisNetwork` / `SynthesisLayer` / `MappingNetwork`.
  """
  layer_kw = dict(conv_kernel=conv_kernel, filter_size=filter_size,
                  lrelu_upsampling=lrelu_upsampling, use_radial_filters=use_radial_filters,
                  conv_clamp=conv_clamp)

  def stage(first_cutoff, first_stopband, res, n, first_sr=None, first_ch=None):
    last_cutoff = res / 2
    last_stopband = last_cutoff * last_stopband_rel
    exponents = np.minimum(np.arange(n + 1) / (n - num_critical), 1)
    cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** exponents
    stopbands = first_stopband * (last_stopband / first_stopband) ** exponents
    rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, res))))
    if first_sr is not None:
      rates[0] = first_sr
    half_widths = np.maximum(stopbands, rates / 2) - cutoffs
    sizes = rates + margin_size * 2
    sizes[-2:] = res
    channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
    if first_ch is not None:
      channels[0] = first_ch
    channels[-1] = img_channels
    return cutoffs, rates, half_widths, sizes, channels

  # Stem.
  res = stem_resolution
  cutoffs, rates, half_widths, sizes, channels = stage(first_cutoff, first_stopband, res,
                                                        stem_layers)
  inp = InputSpec(channels=int(channels[0]), size=(int(sizes[0]),) * 2,
                  sampling_rate=float(rates[0]), bandwidth=float(cutoffs[0]))

  def make_layers(offset, n, cutoffs, rates, half_widths, sizes, channels):
    out = []
    for idx in range(n + 1):
      prev = max(idx - 1, 0)
      out.append(_layer_spec(
          idx + offset, is_torgb=(idx == n), is_critical=(idx >= n - num_critical),
          in_ch=int(channels[prev]), out_ch=int(channels[idx]), in_size=int(sizes[prev]),
          out_size=int(sizes[idx]), in_sr=int(rates[prev]), out_sr=int(rates[idx]),
          in_cutoff=cutoffs[prev], out_cutoff=cutoffs[idx], in_hw=half_widths[prev],
          out_hw=half_widths[idx], **layer_kw))
    return out

  layers = make_layers(0, stem_layers, cutoffs, rates, half_widths, sizes, channels)
  for n in head_layers:
    while layers and layers[-1].is_critically_sampled:
      layers.pop()
    last = layers[-1]
    res *= 2
    # The reference passes num_critical=2 here regardless of the network's setting.
    cutoffs, rates, half_widths, sizes, channels = stage(
        last.out_cutoff, last.out_half_width + last.out_cutoff, res, n,
        first_sr=last.out_sampling_rate, first_ch=last.out_channels)
    layers += make_layers(len(layers) + 1, n, cutoffs, rates, half_widths, sizes, channels)

  synthesis = SynthesisSpec(w_dim=w_dim, img_resolution=res, img_channels=img_channels,
                            output_scale=float(output_scale), input=inp, layers=tuple(layers))
  mapping = MappingSpec(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=synthesis.num_ws,
                        num_layers=mapping_layers, embed_dim=embed_dim,
                        lr_multiplier=float(lr_multiplier))
  return GeneratorSpec(mapping=mapping, synthesis=synthesis)


# Random-weight presets (tests, benchmarks, the pipeline's end-to-end tests).
PRESETS: dict[str, dict] = {
    # 16 -> 32 px, a few small layers: fast enough for end-to-end pipeline tests.
    "tiny": dict(z_dim=64, w_dim=64, stem_layers=4, head_layers=(4,), channel_base=1024,
                 channel_max=32),
    # Issue #3 item 5: 16 -> 32 -> 64, about 15M parameters, 22 ws.
    "mid": dict(z_dim=64, w_dim=512, stem_layers=10, head_layers=(7, 7), channel_base=16384,
                channel_max=256),
    # The released ImageNet-256 architecture: four stages, 32 ws, about 233M parameters.
    "full": dict(z_dim=64, w_dim=512, stem_layers=10, head_layers=(7, 7, 7, 7),
                 channel_base=65536, channel_max=1024),
}


# ----------------------------------------------------------------------------- Flax modules

# Filtered leaky ReLUs whose upsampled intermediate exceeds FILTER_BLOCK_MIN_SIZE values
# per sample run on blocks of FILTER_CHANNEL_BLOCK channels (cache-resident; same result).
FILTER_CHANNEL_BLOCK = 16
FILTER_BLOCK_MIN_SIZE = 1 << 19


def _normal(scale: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.normal(key, shape, dtype) * scale
  return init


def _const(value: Any):
  def init(key, shape, dtype=jnp.float32):
    del key
    return jnp.broadcast_to(jnp.asarray(value, dtype), shape)
  return init


class FullyConnected(nn.Module):
  """`FullyConnectedLayer`: weight [in, out] stored divided by its lr multiplier."""
  in_features: int
  out_features: int
  activation: str = "linear"
  lr_multiplier: float = 1.0
  weight_init: float = 1.0
  bias_init: Any = 0.0

  @nn.compact
  def __call__(self, x):
    w = self.param("weight", _normal(self.weight_init / self.lr_multiplier),
                   (self.in_features, self.out_features))
    b = self.param("bias", _const(np.asarray(self.bias_init, np.float32) / self.lr_multiplier),
                   (self.out_features,))
    return ops.fully_connected(x, w, b, self.lr_multiplier / math.sqrt(self.in_features),
                               self.lr_multiplier, self.activation)


class Embedding(nn.Module):
  """`torch.nn.Embedding`: weight [num, dim]; rows looked up by class index."""
  num_embeddings: int
  embedding_dim: int

  @nn.compact
  def __call__(self, idx):
    w = self.param("weight", _normal(1.0), (self.num_embeddings, self.embedding_dim))
    return w[idx]


def _normalize_2nd_moment(x, eps=1e-8):
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=1, keepdims=True) + eps)


class MappingNetwork(nn.Module):
  """z [N, z_dim], classes [N] -> w [N, w_dim] (before broadcasting and truncation)."""
  spec: MappingSpec

  @nn.compact
  def __call__(self, z, classes):
    s = self.spec
    x = _normalize_2nd_moment(z.astype(jnp.float32))
    y = Embedding(s.c_dim, s.embed_dim, name="embed")(classes)
    y = FullyConnected(s.embed_dim, s.z_dim, activation="lrelu", name="embed_proj")(y)
    y = _normalize_2nd_moment(y)
    x = jnp.concatenate([x, y], axis=1)
    dims = [2 * s.z_dim] + [s.w_dim] * s.num_layers
    for idx in range(s.num_layers):
      x = FullyConnected(dims[idx], dims[idx + 1], activation="lrelu",
                         lr_multiplier=s.lr_multiplier, name=f"fc{idx}")(x)
    self.variable("buffers", "w_avg", lambda: jnp.zeros((s.c_dim, s.w_dim), jnp.float32))
    return x


class SynthesisInput(nn.Module):
  spec: InputSpec
  w_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, w):
    s = self.spec
    C = s.channels

    def init_freqs():  # Uniform in a 2-D disc of radius `bandwidth`, as the reference.
      f = jax.random.normal(self.make_rng("params"), (C, 2))
      radii = jnp.sqrt(jnp.sum(jnp.square(f), axis=1, keepdims=True))
      f = f / (radii * jnp.exp(jnp.square(radii)) ** 0.25)
      return f * s.bandwidth

    freqs = self.variable("buffers", "freqs", init_freqs).value
    phases = self.variable(
        "buffers", "phases", lambda: jax.random.uniform(self.make_rng("params"), (C,)) - 0.5).value
    transform = self.variable("buffers", "transform", lambda: jnp.eye(3)).value
    weight = self.param("weight", _normal(1.0), (C, C))  # [in, out]
    t = FullyConnected(self.w_dim, 4, weight_init=0.0, bias_init=(1.0, 0.0, 0.0, 0.0),
                       name="affine")(w)
    x = ops.fourier_features(transform, freqs, phases, t, s.size, s.sampling_rate,
                             s.bandwidth)  # [N, H, W, C]
    x = x @ (weight / np.sqrt(C))
    return x.astype(self.dtype)


class SynthesisLayer(nn.Module):
  spec: LayerSpec
  w_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, w):
    s = self.spec
    k = s.conv_kernel
    magnitude_ema = self.variable("buffers", "magnitude_ema", lambda: jnp.ones((), jnp.float32))
    weight = self.param("weight", _normal(1.0), (k, k, s.in_channels, s.out_channels))
    bias = self.param("bias", _const(0.0), (s.out_channels,))
    styles = FullyConnected(self.w_dim, s.in_channels, bias_init=1.0, name="affine")(w)
    if s.is_torgb:
      styles = styles * (1 / np.sqrt(s.in_channels * k ** 2))
    x = ops.modulated_conv2d(x.astype(self.dtype), weight.astype(self.dtype), styles,
                             demodulate=not s.is_torgb, padding=k - 1,
                             input_gain=jax.lax.rsqrt(magnitude_ema.value))
    # Per-sample size of the upsampled intermediate decides whether to work in blocks.
    upsampled = (x.shape[1] * s.up_factor) * (x.shape[2] * s.up_factor) * s.out_channels
    x = ops.filtered_lrelu(
        x, fu=s.up_filter, fd=s.down_filter, b=bias, up=s.up_factor, down=s.down_factor,
        padding=s.padding, gain=1.0 if s.is_torgb else math.sqrt(2),
        slope=1.0 if s.is_torgb else 0.2, clamp=s.conv_clamp,
        channel_block=FILTER_CHANNEL_BLOCK if upsampled > FILTER_BLOCK_MIN_SIZE else None)
    expected = (x.shape[0], s.out_size[1], s.out_size[0], s.out_channels)
    assert x.shape == expected, f"{s.name}: output {x.shape}, expected {expected}"
    return x


class SynthesisNetwork(nn.Module):
  """ws [N, num_ws, w_dim] -> image [N, H, W, C] (and every layer's output)."""
  spec: SynthesisSpec
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ws, return_features: bool = False):
    s = self.spec
    assert ws.shape[1:] == (s.num_ws, s.w_dim), (ws.shape, s.num_ws, s.w_dim)
    ws = ws.astype(jnp.float32)
    x = SynthesisInput(s.input, s.w_dim, self.dtype, name="input")(ws[:, 0])
    feats = {"input": x}
    for i, layer in enumerate(s.layers):
      x = SynthesisLayer(layer, s.w_dim, self.dtype, name=layer.name)(x, ws[:, i + 1])
      feats[layer.name] = x
    img = x.astype(jnp.float32) * s.output_scale
    assert img.shape[1:] == (s.img_resolution, s.img_resolution, s.img_channels), img.shape
    if return_features:
      return img, {k: v.astype(jnp.float32) for k, v in feats.items()}
    return img


# ----------------------------------------------------------------------------- public object


@functools.partial(jax.jit, static_argnames=("spec", "truncate"))
def map_latents(variables: dict, z: jax.Array, classes: jax.Array, psi: jax.Array, *,
                spec: MappingSpec, truncate: bool = True) -> jax.Array:
  """Mapping network + truncation, jitted.

  Args:
    variables: {'params': mapping params, 'buffers': {'w_avg': [c_dim, w_dim]}}.
    z: [N, z_dim] latents; classes: [N] int class indices.
    psi: truncation toward the class's w_avg (scalar); ignored if not `truncate`.
  Returns:
    ws [N, num_ws, w_dim] float32.
  """
  w = MappingNetwork(spec).apply(variables, z, classes)  # [N, w_dim]
  ws = jnp.broadcast_to(w[:, None, :], (w.shape[0], spec.num_ws, spec.w_dim))
  if not truncate:
    return ws
  centre = variables["buffers"]["w_avg"][classes][:, None, :]  # [N, 1, w_dim]
  return centre + psi * (ws - centre)


@functools.partial(jax.jit, static_argnames=("spec", "compute_dtype", "features"))
def synthesize(variables: dict, ws: jax.Array, *, spec: SynthesisSpec,
               compute_dtype: str = "float32", features: bool = False):
  """Synthesis network, jitted.

  Args:
    variables: {'params': synthesis params, 'buffers': synthesis buffers}.
    ws: [N, num_ws, w_dim].
    compute_dtype: dtype of activations and convolutions ('float32' or 'bfloat16').
    features: also return every layer's output.
  Returns:
    images [N, H, W, img_channels] float32, and with `features` a dict
    {'input' / layer name: [N, h, w, C] float32}.
  """
  return SynthesisNetwork(spec, jnp.dtype(compute_dtype)).apply(variables, ws, features)


class Generator(flax.struct.PyTreeNode):
  """A StyleGAN-XL generator. A pytree: `variables` are leaves, the spec is static.

  Attributes:
    variables: {'params': {'mapping': ..., 'synthesis': ...}, 'buffers': {...}}.
    spec: the architecture (`GeneratorSpec`).
    compute_dtype: 'float32' or 'bfloat16': dtype of the synthesis activations and
      convolutions (mapping, affines and outputs stay float32).
  """
  variables: Any
  spec: GeneratorSpec = flax.struct.field(pytree_node=False)
  compute_dtype: str = flax.struct.field(pytree_node=False, default="float32")

  z_dim = property(lambda self: self.spec.mapping.z_dim)
  c_dim = property(lambda self: self.spec.mapping.c_dim)
  num_classes = property(lambda self: self.spec.mapping.c_dim)
  w_dim = property(lambda self: self.spec.mapping.w_dim)
  num_ws = property(lambda self: self.spec.synthesis.num_ws)
  resolution = property(lambda self: self.spec.synthesis.img_resolution)
  layer_names = property(lambda self: self.spec.synthesis.layer_names)

  def _vars(self, part: str) -> dict:
    out = {"params": self.variables["params"][part]}
    if part in self.variables.get("buffers", {}):
      out["buffers"] = self.variables["buffers"][part]
    return out

  def mapping(self, z, classes, psi=0.7):
    """z [N, z_dim], classes [N] int, truncation psi -> ws [N, num_ws, w_dim] float32.

    psi: a float (1 = no truncation) or a traced scalar.
    """
    no_trunc = isinstance(psi, (int, float)) and psi == 1
    return map_latents(self._vars("mapping"), jnp.asarray(z), jnp.asarray(classes),
                       jnp.asarray(psi, jnp.float32), spec=self.spec.mapping,
                       truncate=not no_trunc)

  def synthesis(self, ws):
    """ws [N, num_ws, w_dim] -> images [N, H, W, 3] float32, nominal range [-1, 1]."""
    return synthesize(self._vars("synthesis"), ws, spec=self.spec.synthesis,
                      compute_dtype=self.compute_dtype)

  def synthesis_features(self, ws) -> dict:
    """ws -> {'input': [N, h, w, C], '<layer name>': [N, h, w, C], ...} float32.

    The dict's key order is not the execution order (jit returns dicts key-sorted);
    that is `('input',) + G.layer_names`.
    """
    return synthesize(self._vars("synthesis"), ws, spec=self.spec.synthesis,
                      compute_dtype=self.compute_dtype, features=True)[1]

  def astype(self, compute_dtype: str) -> "Generator":
    return self.replace(compute_dtype=jnp.dtype(compute_dtype).name)


def _flax_variables(spec: GeneratorSpec, key: jax.Array) -> dict:
  """`Module.init` of both networks (traces a batch-1 forward pass)."""
  k_map, k_syn = jax.random.split(key)
  m, s = spec.mapping, spec.synthesis
  vm = MappingNetwork(m).init(k_map, jnp.zeros((1, m.z_dim)), jnp.zeros((1,), jnp.int32))
  vs = SynthesisNetwork(s).init(k_syn, jnp.zeros((1, s.num_ws, s.w_dim)))
  return {"params": {"mapping": vm["params"], "synthesis": vs["params"]},
          "buffers": {"mapping": vm["buffers"], "synthesis": vs["buffers"]}}


def init_variables(spec: GeneratorSpec, key: jax.Array) -> dict:
  """Randomly initialised variables for `spec`, drawn as the reference initialises them.

  The same distributions as the modules' initialisers, drawn with numpy (seeded from
  `key`) and moved to the device one array at a time: no XLA program to compile (a
  jitted `Module.init` takes seconds to compile even for 'tiny') and no second copy of
  the 233M-parameter 'full' preset.
  """
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
  put = lambda a: jax.device_put(np.asarray(a, np.float32))  # noqa: E731
  normal = lambda *shape: put(rng.standard_normal(shape, np.float32))  # noqa: E731

  def fc(in_f, out_f, lr=1.0, weight_init=1.0, bias_init=0.0):
    w = rng.standard_normal((in_f, out_f), np.float32) * np.float32(weight_init / lr)
    b = np.broadcast_to(np.asarray(bias_init, np.float32) / np.float32(lr), (out_f,))
    return {"weight": put(w), "bias": put(b)}

  m, s = spec.mapping, spec.synthesis
  p_map = {"embed": {"weight": normal(m.c_dim, m.embed_dim)},
           "embed_proj": fc(m.embed_dim, m.z_dim)}
  dims = [2 * m.z_dim] + [m.w_dim] * m.num_layers
  for i in range(m.num_layers):
    p_map[f"fc{i}"] = fc(dims[i], dims[i + 1], lr=m.lr_multiplier)
  C = s.input.channels
  freqs = rng.standard_normal((C, 2), np.float32)
  radii = np.sqrt(np.sum(np.square(freqs), axis=1, keepdims=True))
  freqs = freqs / (radii * np.exp(np.square(radii)) ** 0.25) * s.input.bandwidth
  p_syn = {"input": {"weight": normal(C, C),
                     "affine": fc(s.w_dim, 4, weight_init=0.0, bias_init=(1, 0, 0, 0))}}
  b_syn = {"input": {"freqs": put(freqs), "phases": put(rng.random(C, np.float32) - 0.5),
                     "transform": put(np.eye(3))}}
  for l in s.layers:
    k = l.conv_kernel
    p_syn[l.name] = {"weight": normal(k, k, l.in_channels, l.out_channels),
                     "bias": put(np.zeros(l.out_channels)),
                     "affine": fc(s.w_dim, l.in_channels, bias_init=1.0)}
    b_syn[l.name] = {"magnitude_ema": put(np.ones(()))}
  return {"params": {"mapping": p_map, "synthesis": p_syn},
          "buffers": {"mapping": {"w_avg": put(np.zeros((m.c_dim, m.w_dim)))},
                      "synthesis": b_syn}}


def random_generator(preset: str | GeneratorSpec, key: jax.Array,
                     dtype: str = "float32") -> Generator:
  """A randomly initialised generator.

  Args:
    preset: a name in `PRESETS` ('tiny', 'mid', 'full') or a `GeneratorSpec`.
    key: PRNG key for the weights.
    dtype: compute dtype of the synthesis ('float32' or 'bfloat16').
  """
  spec = preset if isinstance(preset, GeneratorSpec) else build_spec(**PRESETS[preset])
  return Generator(init_variables(spec, key), spec, jnp.dtype(dtype).name)


def tiny(seed: int = 0, dtype: str = "float32") -> Generator:
  """The built-in 'sgxl-tiny': the 'tiny' preset with seeded random weights."""
  return random_generator("tiny", jax.random.PRNGKey(seed), dtype)


def expected_variables(spec: GeneratorSpec) -> Any:
  """The variables' structure for `spec` as jax.ShapeDtypeStruct (nothing allocated)."""
  return jax.eval_shape(lambda k: _flax_variables(spec, k), jax.random.PRNGKey(0))


def load(ckpt_dir: str, dtype: str = "float32") -> Generator:
  """Loads a checkpoint written by `python -m converters.stylegan_xl`.

  Args:
    ckpt_dir: the converter's output directory.
    dtype: compute dtype of the synthesis ('float32' or 'bfloat16').
  Raises:
    io.CheckpointError: missing files, wrong kind, or params not matching the spec.
  """
  meta = io.load_meta(ckpt_dir)
  if meta.get("kind") != KIND:
    raise io.CheckpointError(f"{ckpt_dir}: kind {meta.get('kind')!r} is not {KIND!r}")
  try:
    spec = GeneratorSpec.from_json(meta["spec"])
  except (KeyError, TypeError) as e:
    raise io.CheckpointError(f"{ckpt_dir}: malformed StyleGAN-XL spec in meta.json: {e}") from e
  variables, _ = io.load_checkpoint(ckpt_dir, expected=expected_variables(spec))
  variables = jax.tree_util.tree_map(jnp.asarray, variables)
  return Generator(variables, spec, jnp.dtype(dtype).name)
