"""The built-in demo world: a differentiable generator of part-based objects.

A small stand-in for StyleGAN-XL that ships with the package, so the whole pipeline
runs offline and its findings can be checked against a known truth. It has exactly
the `Generator` and `GroundTruthWorld` protocols of generators/base.py:

    G = generators.load('shapes')
    ws = G.mapping(z, classes, psi=0.7)   # [N, z_dim], [N] -> [N, num_ws, w_dim]
    img = G.synthesis(ws)                 # [N, H, W, 3] in [-1, 1]
    feats = G.synthesis_features(ws)      # {'input', 'L0_16', 'L1_32', 'L2_64'}
    truth = G.ground_truth(ws)            # part masks and factor values

The world.
  Eight object classes (`CLASS_NAMES`), each made of three parts in fixed slots
  `body`, `top`, `extra` on a background (`PART_NAMES`; what each slot is for each
  class: `PART_ROLES`, e.g. a mushroom's body is its stem, top its cap, extra its
  spots). Every part is a soft signed-distance primitive (a blend of a rounded box and
  an ellipse, optionally tapered into a triangle, cut in half, mirrored into a pair,
  rotated), composited back to front: background, body, top, extra.
  Twenty continuous factors (`FACTORS`: name, low, high) set position, rotation and
  scale of the object, background hue and luminance, width, height, hue and luminance
  of each part, and the frequency and contrast of stripes on the body.

How w relates to the factors (the "GAN-like" part).
  A code u = [class code (num_classes), factor code (z_dim)] is built from the class
  (one-hot) and z (standard normal, one coordinate per factor), then mixed into w by a
  FIXED seeded random map: w = leaky_relu(u M1 + b1) M2 + b2 (M1: random Gaussian,
  M2: random orthogonal). Every w coordinate depends on every factor: W is entangled,
  and only a nonlinear map recovers the factors. Truncation moves w toward the class's
  average w (`w_avg[c]`, the mean of w over z for class c), as StyleGAN does.
  Synthesis inverts the mixing exactly on its range (leaky_relu is invertible, M2 is
  orthogonal, M1 has a pseudo-inverse) and reads the factors from u:
    class weights = softmax(CLASS_SHARPNESS * class code)       (soft: shapes morph)
    factor k      = low_k + (high_k - low_k) * sigmoid(prior[class] + u_k)
  where `prior` is a fixed seeded per-class offset of the colour factors (each class
  has typical colours). Off-manifold w (e.g. from a linking network) decode to the
  nearest code in the least-squares sense.

Which ws are used (style-mixing convention).
  The geometry (class and shape/pose factors, `GEOMETRY_FACTORS`) is decoded from the
  mean of the first num_ws // 2 ws ("coarse" layers), colour and texture (all other
  factors) from the mean of the remaining ws ("fine" layers). When ws are one w
  broadcast over num_ws (as the pipeline does), this is just that w.

Everything is a pure function of (params, inputs) and runs under jit / grad / vmap.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

CLASS_NAMES = ("mushroom", "bird", "car", "snowman", "house", "tree", "fish", "icecream")
PART_NAMES = ("background", "body", "top", "extra")
PART_ROLES = {  # What the part slots body, top, extra are for each class.
    "mushroom": ("stem", "cap", "spots"),
    "bird": ("body", "head", "legs"),
    "car": ("body", "cabin", "wheels"),
    "snowman": ("belly", "head", "hat"),
    "house": ("walls", "roof", "door"),
    "tree": ("trunk", "crown", "baubles"),
    "fish": ("body", "tail", "eye"),
    "icecream": ("cone", "scoop", "cherry"),
}

# Continuous factors: (name, low, high). Units: positions in image half-widths
# (the image spans [-1, 1]), rotation in radians, hue in turns, luminance in [0, 1],
# width/height as multipliers of the class template; the body's stripes are
# 1 + contrast * sin(pi * stripe_freq * x) along the object's x axis (object
# coordinates: the object spans about [-1, 1]).
FACTORS = (
    ("pos_x", -0.25, 0.25),
    ("pos_y", -0.2, 0.2),
    ("rotation", -0.4, 0.4),
    ("scale", 0.45, 0.65),
    ("body_width", 0.75, 1.3),
    ("body_height", 0.75, 1.3),
    ("top_width", 0.75, 1.3),
    ("top_height", 0.75, 1.3),
    ("extra_width", 0.75, 1.3),
    ("extra_height", 0.75, 1.3),
    ("bg_hue", 0.0, 1.0),
    ("bg_lum", 0.15, 0.85),
    ("body_hue", 0.0, 1.0),
    ("body_lum", 0.2, 0.8),
    ("top_hue", 0.0, 1.0),
    ("top_lum", 0.2, 0.8),
    ("extra_hue", 0.0, 1.0),
    ("extra_lum", 0.2, 0.8),
    ("stripe_freq", 0.5, 3.0),
    ("stripe_contrast", 0.0, 0.45),
)
FACTOR_NAMES = tuple(f[0] for f in FACTORS)
GEOMETRY_FACTORS = FACTOR_NAMES[:10]  # Decoded from the coarse ws; the rest from the fine ws.
_COLOUR_FACTORS = FACTOR_NAMES[10:18]  # Get a per-class prior offset.

# Part templates in object coordinates (y points down; the object spans about [-1, 1]):
# per class and part slot (body, top, extra):
# (cx, cy, half-width, half-height, roundness 0 box..1 ellipse, taper -1 apex up..1 apex
#  down, cut 1 whole..0 upper half only, mirror offset (0 one part, >0 a pair at +-x),
#  angle in radians).
# Factor -> the (part, metric) concept that shows it in the image (quantify's truth check).
FACTOR_CONCEPTS = {
    "pos_x": ("body", "centre_x"),
    "pos_y": ("body", "centre_y"),
    "scale": ("body", "area"),
    "rotation": ("body", "angle"),
    "body_lum": ("body", "luminance"),
    "top_lum": ("top", "luminance"),
    "extra_lum": ("extra", "luminance"),
    "stripe_contrast": ("body", "entropy"),
}
_TEMPLATE_FIELDS = ("cx", "cy", "hw", "hh", "round", "taper", "cut", "mirror", "angle")
_TEMPLATES = np.array([
    # mushroom: stem, domed cap, a pair of spots on the cap
    [[0.0, 0.35, 0.18, 0.42, 0.3, 0.2, 1.0, 0.0, 0.0],
     [0.0, 0.05, 0.8, 0.6, 1.0, 0.0, 0.0, 0.0, 0.0],
     [0.0, -0.2, 0.11, 0.11, 1.0, 0.0, 1.0, 0.32, 0.0]],
    # bird: oval body, round head up right, a pair of thin legs
    [[-0.1, 0.1, 0.62, 0.36, 1.0, 0.0, 1.0, 0.0, 0.0],
     [0.48, -0.35, 0.26, 0.26, 1.0, 0.0, 1.0, 0.0, 0.0],
     [-0.1, 0.62, 0.04, 0.22, 0.0, 0.0, 1.0, 0.16, 0.0]],
    # car: long low box, narrower cabin, a pair of wheels
    [[0.0, 0.12, 0.88, 0.24, 0.15, 0.0, 1.0, 0.0, 0.0],
     [-0.05, -0.25, 0.45, 0.2, 0.25, -0.35, 1.0, 0.0, 0.0],
     [0.0, 0.4, 0.2, 0.2, 1.0, 0.0, 1.0, 0.52, 0.0]],
    # snowman: big round belly, smaller head, a box hat
    [[0.0, 0.38, 0.48, 0.48, 1.0, 0.0, 1.0, 0.0, 0.0],
     [0.0, -0.32, 0.3, 0.3, 1.0, 0.0, 1.0, 0.0, 0.0],
     [0.0, -0.72, 0.2, 0.16, 0.0, 0.0, 1.0, 0.0, 0.0]],
    # house: square walls, triangular roof, a door
    [[0.0, 0.3, 0.6, 0.45, 0.0, 0.0, 1.0, 0.0, 0.0],
     [0.0, -0.4, 0.4, 0.32, 0.0, -1.0, 1.0, 0.0, 0.0],
     [0.0, 0.52, 0.13, 0.23, 0.0, 0.0, 1.0, 0.0, 0.0]],
    # tree: thin trunk, tall triangular crown, a pair of baubles
    [[0.0, 0.6, 0.12, 0.32, 0.0, 0.0, 1.0, 0.0, 0.0],
     [0.0, -0.2, 0.32, 0.65, 0.0, -1.0, 1.0, 0.0, 0.0],
     [0.0, 0.05, 0.08, 0.08, 1.0, 0.0, 1.0, 0.22, 0.0]],
    # fish: oval body, triangular tail pointing left, an eye
    [[0.12, 0.0, 0.62, 0.34, 1.0, 0.0, 1.0, 0.0, 0.0],
     [-0.62, 0.0, 0.17, 0.3, 0.0, -1.0, 1.0, 0.0, np.pi / 2],
     [0.45, -0.08, 0.08, 0.08, 1.0, 0.0, 1.0, 0.0, 0.0]],
    # icecream: cone (apex down), round scoop, a cherry on top
    [[0.0, 0.35, 0.2, 0.55, 0.0, 1.0, 1.0, 0.0, 0.0],
     [0.0, -0.3, 0.42, 0.38, 1.0, 0.0, 1.0, 0.0, 0.0],
     [0.0, -0.74, 0.11, 0.11, 1.0, 0.0, 1.0, 0.0, 0.0]],
], dtype=np.float32)  # [num_classes, 3, len(_TEMPLATE_FIELDS)]

CLASS_SHARPNESS = 8.0  # Class weights = softmax(sharpness * class code): near one-hot on the data.
LEAKY_SLOPE = 0.5      # Slope of the mixing's leaky_relu (invertible; gentler = less noise gain).
CHROMA = 0.28          # Colour saturation amplitude around the luminance.
EDGE_PX = 0.6          # Soft edge width of the rendered parts, in pixels.
FEATURE_EDGE_PX = 2.0  # Softer edges in the synthesis features (not the rendering's masks).
W_AVG_SAMPLES = 4096   # z samples per class for the class's average w.
FEATURE_CHANNELS = {"input": 16, "coarse": 32, "mid": 32, "fine": 16}


# ----------------------------------------------------------------------------- construction


def make_params(seed: int, w_dim: int = 64, num_classes: int = len(CLASS_NAMES)) -> dict:
  """Builds the fixed random parameters of the world (deterministic in `seed`).

  Returns a dict of float32 arrays: mixing `m1` [U, w_dim], `b1` [w_dim], `m2`
  [w_dim, w_dim] (orthogonal), `b2` [w_dim], `m1_pinv` [w_dim, U]; class colour
  `prior` [num_classes, z_dim]; class average `w_avg` [num_classes, w_dim]; and the
  fixed feature projections `feat/*` used by `synthesis_features`.
  """
  if num_classes != len(CLASS_NAMES):
    raise ValueError(f"the shapes world has {len(CLASS_NAMES)} classes, not {num_classes}")
  z_dim = len(FACTORS)
  u_dim = num_classes + z_dim
  if w_dim < u_dim:
    raise ValueError(f"w_dim must be >= {u_dim} (class code + factors) so w keeps all factors")
  rng = np.random.default_rng(seed)
  m1 = rng.normal(size=(u_dim, w_dim)) / np.sqrt(u_dim)
  m2, _ = np.linalg.qr(rng.normal(size=(w_dim, w_dim)))
  prior = np.zeros((num_classes, z_dim))
  colour = [FACTOR_NAMES.index(n) for n in _COLOUR_FACTORS]
  prior[:, colour] = rng.normal(size=(num_classes, len(colour))) * 1.2
  n_stack = _feature_stack_channels()
  params = {
      "m1": m1, "b1": rng.normal(size=(w_dim,)) * 0.3, "m2": m2,
      "b2": rng.normal(size=(w_dim,)) * 0.1, "m1_pinv": np.linalg.pinv(m1), "prior": prior,
      "feat": {
          "input": rng.normal(size=(w_dim, FEATURE_CHANNELS["input"])) / np.sqrt(w_dim),
          "coarse": rng.normal(size=(n_stack, FEATURE_CHANNELS["coarse"])) / np.sqrt(n_stack),
          "mid": rng.normal(size=(n_stack, FEATURE_CHANNELS["mid"])) / np.sqrt(n_stack),
          "fine": rng.normal(size=(n_stack, FEATURE_CHANNELS["fine"])) / np.sqrt(n_stack),
      },
  }
  params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)
  z = jax.random.normal(jax.random.PRNGKey(seed), (W_AVG_SAMPLES, z_dim))
  params["w_avg"] = jnp.stack([
      _mix(params, z, jnp.full((W_AVG_SAMPLES,), c), num_classes).mean(0)
      for c in range(num_classes)])
  return params


class ShapesWorld(struct.PyTreeNode):
  """The built-in generator (a pytree: `params` are leaves, the rest is static).

  Attributes:
    params: dict of fixed arrays from `make_params`.
    resolution: image side in pixels (a multiple of 16, 32 to 128).
    num_ws: number of ws per sample (>= 2; see the module doc for how they are used).
  """
  params: Any
  resolution: int = struct.field(pytree_node=False, default=64)
  num_ws: int = struct.field(pytree_node=False, default=4)

  z_dim = len(FACTORS)
  num_classes = len(CLASS_NAMES)
  c_dim = len(CLASS_NAMES)  # Conditioning is a class id (one-hot of c_dim internally).
  part_names = PART_NAMES
  factor_names = FACTOR_NAMES
  factor_ranges = {name: (lo, hi) for name, lo, hi in FACTORS}
  circular_factors = tuple(n for n in FACTOR_NAMES if n.endswith("_hue"))  # hue wraps at 1
  class_names = CLASS_NAMES
  factor_concepts = FACTOR_CONCEPTS

  @property
  def w_dim(self) -> int:
    return self.params["m2"].shape[0]

  def mapping(self, z, classes, psi=0.7):
    """z [N, z_dim], classes [N] int, psi scalar or [N] (1: no truncation) -> ws [N, num_ws, w_dim]."""
    return _mapping(self.params, z, classes, psi, self.num_ws)

  def synthesis(self, ws):
    """ws [N, num_ws, w_dim] -> image [N, H, W, 3] float32 in [-1, 1]."""
    return _synthesis(self.params, ws, self.resolution)

  def synthesis_features(self, ws):
    """ws [N, num_ws, w_dim] -> intermediate features {name: [N, h, w, C]}.

    'input': [N, 4, 4, 16] a fixed projection of w (the "constant input" layer);
    'L0_{R/4}', 'L1_{R/2}': [N, R/4, R/4, 32], [N, R/2, R/2, 32];
    'L2_{R}': [N, R, R, 16]. The spatial layers are fixed random mixtures (then tanh) of
    the parts' signed distances, softened coverages and colours, the background colour
    and the pixel coordinates, average-pooled to the layer's size. They determine the
    part masks but do not contain them: a segmentation head has to learn the mapping.
    """
    return _features(self.params, ws, self.resolution)

  def ground_truth(self, ws):
    """The truth behind `synthesis(ws)`.

    Returns a dict:
      'masks': [N, H, W, P] float32 in [0, 1], visible coverage of each part in
        `PART_NAMES` order (background first); sums to 1 over P.
      'part_names': `PART_NAMES`.
      'factors': {name: [N]} the factor values of `FACTORS` (their units there).
      'class_weights': [N, num_classes] the soft class the geometry is drawn from.
      'classes': [N] int32, its argmax.
    """
    return {**_ground_truth(self.params, ws, self.resolution), "part_names": PART_NAMES}

  def decode_factors(self, ws):
    """ws [N, num_ws, w_dim] -> ({name: [N]} factors, class weights [N, num_classes]); no rendering."""
    f, cw = jax.jit(_decode)(self.params, ws)
    return dict(zip(FACTOR_NAMES, jnp.moveaxis(f, -1, 0))), cw


def load_shapes(seed: int = 0, resolution: int = 64, num_ws: int = 4, w_dim: int = 64) -> ShapesWorld:
  """The built-in world `generators.load('shapes')`; all arguments are static choices.

  Args:
    seed: seed of the fixed random mixing, priors and feature projections. The shipped
      classifier (`classifiers.load('shapes-resnet')`) was trained on seed 0.
    resolution: image side in pixels; a multiple of 16 in [32, 128].
    num_ws: ws per sample (>= 2).
    w_dim: dimension of w (>= num_classes + z_dim = 28).
  """
  if resolution % 16 or not 32 <= resolution <= 128:
    raise ValueError(f"resolution must be a multiple of 16 in [32, 128], got {resolution}")
  if num_ws < 2:
    raise ValueError(f"num_ws must be >= 2, got {num_ws}")
  return ShapesWorld(params=_cached_params(seed, w_dim), resolution=resolution, num_ws=num_ws)


@functools.lru_cache(maxsize=4)
def _cached_params(seed: int, w_dim: int) -> dict:
  return make_params(seed, w_dim)


# ----------------------------------------------------------------------------- mapping


def _mix(params, z, classes, num_classes):
  """u = [one-hot class, z] -> w = leaky_relu(u M1 + b1) M2 + b2.  [N, z_dim], [N] -> [N, w_dim]."""
  u = jnp.concatenate([jax.nn.one_hot(classes, num_classes, dtype=z.dtype), z], axis=-1)
  h = u @ params["m1"] + params["b1"]
  h = jnp.where(h >= 0, h, LEAKY_SLOPE * h)
  return h @ params["m2"] + params["b2"]


def _unmix(params, w):
  """Inverse of `_mix` on its range (least squares off it): w [..., w_dim] -> u [..., U]."""
  h = (w - params["b2"]) @ params["m2"].T
  h = jnp.where(h >= 0, h, h / LEAKY_SLOPE)
  return (h - params["b1"]) @ params["m1_pinv"]


@functools.partial(jax.jit, static_argnames=("num_ws",))
def _mapping(params, z, classes, psi, num_ws):
  num_classes = params["prior"].shape[0]
  z = jnp.asarray(z, jnp.float32)
  classes = jnp.asarray(classes, jnp.int32)
  if z.ndim != 2 or z.shape[1] != len(FACTORS):
    raise ValueError(f"z must be [N, {len(FACTORS)}], got {z.shape}")
  if classes.shape != z.shape[:1]:
    raise ValueError(f"classes must be [N] = {z.shape[:1]}, got {classes.shape}")
  w = _mix(params, z, classes, num_classes)  # [N, w_dim]
  w_avg = params["w_avg"][classes]  # [N, w_dim]
  psi = jnp.broadcast_to(jnp.asarray(psi, jnp.float32), z.shape[:1])[:, None]
  w = w_avg + psi * (w - w_avg)
  return jnp.broadcast_to(w[:, None], (w.shape[0], num_ws, w.shape[1]))


def _decode(params, ws):
  """ws [N, num_ws, w_dim] -> factors [N, z_dim] (in FACTORS units), class weights [N, K]."""
  if ws.ndim != 3 or ws.shape[1] < 2:
    raise ValueError(f"ws must be [N, num_ws >= 2, w_dim], got {ws.shape}")
  num_classes = params["prior"].shape[0]
  half = ws.shape[1] // 2
  u_coarse = _unmix(params, ws[:, :half].mean(1))  # [N, U]
  u_fine = _unmix(params, ws[:, half:].mean(1))  # [N, U]
  class_weights = jax.nn.softmax(CLASS_SHARPNESS * u_coarse[:, :num_classes], axis=-1)  # [N, K]
  geometric = np.array([n in GEOMETRY_FACTORS for n in FACTOR_NAMES])
  code = jnp.where(geometric, u_coarse[:, num_classes:], u_fine[:, num_classes:])  # [N, z_dim]
  lo = np.array([f[1] for f in FACTORS], np.float32)
  hi = np.array([f[2] for f in FACTORS], np.float32)
  factors = lo + (hi - lo) * jax.nn.sigmoid(class_weights @ params["prior"] + code)
  return factors, class_weights


# ----------------------------------------------------------------------------- rendering


def _hue_lum_rgb(hue, lum):
  """hue, lum [...] -> rgb [..., 3]: luminance plus a chroma wave of the hue."""
  phase = 2 * jnp.pi * (hue[..., None] - jnp.array([0.0, 1 / 3, 2 / 3]))
  return lum[..., None] + CHROMA * jnp.cos(phase)


def _part_sdf(p, tp, width, height):
  """Signed distance (object units) of one part slot.

  Args:
    p: [N, H, W, 2] pixel positions in object coordinates.
    tp: [N, len(_TEMPLATE_FIELDS)] template parameters (class-weighted).
    width, height: [N] size multipliers.
  Returns:
    [N, H, W] signed distance, negative inside.
  """
  b = lambda k: tp[:, _TEMPLATE_FIELDS.index(k), None, None]  # [N, 1, 1]
  hw = b("hw") * width[:, None, None]
  hh = b("hh") * height[:, None, None]
  qx, qy = p[..., 0] - b("cx"), p[..., 1] - b("cy")
  ca, sa = jnp.cos(b("angle")), jnp.sin(b("angle"))
  qx, qy = ca * qx + sa * qy, -sa * qx + ca * qy
  qx = jnp.abs(qx) - b("mirror") * width[:, None, None]
  qx = jnp.abs(qx)
  taper = jnp.maximum(1.0 - b("taper") * qy / hh, 0.05)  # Width profile along y.
  qx = qx / taper
  # Rounded box (corner radius 15% of the smaller half-size).
  r = 0.15 * jnp.minimum(hw, hh)
  dx, dy = qx - hw + r, jnp.abs(qy) - hh + r
  d_box = jnp.sqrt(jnp.maximum(dx, 0) ** 2 + jnp.maximum(dy, 0) ** 2 + 1e-8) + jnp.minimum(
      jnp.maximum(dx, dy), 0) - r
  d_ell = (jnp.sqrt((qx / hw) ** 2 + (qy / hh) ** 2 + 1e-8) - 1.0) * jnp.minimum(hw, hh)
  d = (1 - b("round")) * d_box + b("round") * d_ell
  return jnp.maximum(d, qy - b("cut") * hh)  # Cut: keep y <= cut * hh.


def _scene(params, ws, resolution):
  """Renders everything the outputs are built from. Returns a dict of arrays."""
  factors, class_weights = _decode(params, ws)
  f = {n: factors[:, i] for i, n in enumerate(FACTOR_NAMES)}
  n = ws.shape[0]
  t = (jnp.arange(resolution, dtype=jnp.float32) + 0.5) / resolution * 2 - 1
  xy = jnp.stack(jnp.meshgrid(t, t, indexing="xy"), -1)  # [H, W, 2], y down
  xy = jnp.broadcast_to(xy, (n, resolution, resolution, 2))
  # Image -> object coordinates: translate, rotate by -rotation, scale.
  px = xy[..., 0] - f["pos_x"][:, None, None]
  py = xy[..., 1] - f["pos_y"][:, None, None]
  c, s = jnp.cos(f["rotation"])[:, None, None], jnp.sin(f["rotation"])[:, None, None]
  scale = f["scale"][:, None, None]
  p = jnp.stack([(c * px + s * py) / scale, (-s * px + c * py) / scale], -1)  # [N, H, W, 2]
  templates = jnp.einsum("nk,kpf->npf", class_weights, jnp.asarray(_TEMPLATES))  # [N, 3, F]
  sdf = jnp.stack([
      _part_sdf(p, templates[:, j], f[f"{part}_width"], f[f"{part}_height"]) * scale
      for j, part in enumerate(PART_NAMES[1:])], -1)  # [N, H, W, 3], image units
  pixel = 2.0 / resolution
  alpha = jax.nn.sigmoid(-sdf / (EDGE_PX * pixel))  # [N, H, W, 3]
  colours = jnp.stack([_hue_lum_rgb(f[f"{part}_hue"], f[f"{part}_lum"])
                       for part in PART_NAMES[1:]], 1)  # [N, 3 parts, 3 rgb]
  stripes = jnp.sin(jnp.pi * f["stripe_freq"][:, None, None] * p[..., 0])  # [N, H, W]
  body = colours[:, None, None, 0] * (1 + f["stripe_contrast"][:, None, None, None] * stripes[..., None])
  bg = _hue_lum_rgb(f["bg_hue"], f["bg_lum"])[:, None, None] + 0.08 * xy[..., 1:]  # [N, H, W, 3]
  # Back-to-front compositing; masks are the visible coverage of each layer.
  layers = [bg, body, colours[:, None, None, 1], colours[:, None, None, 2]]
  img, masks = bg, [jnp.ones_like(alpha[..., 0])]
  for j in range(3):
    a = alpha[..., j]
    img = img * (1 - a[..., None]) + layers[j + 1] * a[..., None]
    masks = [m * (1 - a) for m in masks] + [a]
  return {
      "img": jnp.clip(img, 0.0, 1.0) * 2 - 1,  # [N, H, W, 3]
      "masks": jnp.stack(masks, -1),  # [N, H, W, 4]
      "sdf": sdf, "colours": colours, "bg": bg, "xy": xy,
      "factors": factors, "class_weights": class_weights,
  }


@functools.partial(jax.jit, static_argnames=("resolution",))
def _synthesis(params, ws, resolution):
  return _scene(params, ws, resolution)["img"]


@functools.partial(jax.jit, static_argnames=("resolution",))
def _ground_truth(params, ws, resolution):
  sc = _scene(params, ws, resolution)
  return {
      "masks": sc["masks"],
      "factors": dict(zip(FACTOR_NAMES, jnp.moveaxis(sc["factors"], -1, 0))),
      "class_weights": sc["class_weights"],
      "classes": jnp.argmax(sc["class_weights"], -1).astype(jnp.int32),
  }


def _feature_stack_channels() -> int:
  return 3 + 3 + 9 + 3 + 2  # sdf, soft coverage, part colours, background, coordinates


def _avg_pool(x, factor):
  n, h, w, c = x.shape
  return x.reshape(n, h // factor, factor, w // factor, factor, c).mean((2, 4))


@functools.partial(jax.jit, static_argnames=("resolution",))
def _features(params, ws, resolution):
  sc = _scene(params, ws, resolution)
  n = ws.shape[0]
  pixel = 2.0 / resolution
  soft = jax.nn.sigmoid(-sc["sdf"] / (FEATURE_EDGE_PX * pixel))  # [N, H, W, 3]
  colours = jnp.broadcast_to(sc["colours"].reshape(n, 1, 1, 9), (n, resolution, resolution, 9))
  stack = jnp.concatenate([
      jnp.tanh(sc["sdf"] * 4), soft, colours, sc["bg"], sc["xy"]], -1)  # [N, H, W, 20]
  fp = params["feat"]
  w = ws.mean(1)  # [N, w_dim]
  out = {"input": jnp.broadcast_to(jnp.tanh(w @ fp["input"])[:, None, None], (n, 4, 4, fp["input"].shape[1]))}
  for i, (name, factor) in enumerate((("coarse", 4), ("mid", 2), ("fine", 1))):
    out[f"L{i}_{resolution // factor}"] = jnp.tanh(_avg_pool(stack @ fp[name], factor))
  return out
