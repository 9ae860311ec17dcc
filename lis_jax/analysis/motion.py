"""Dense motion of parts between consecutive images of a sweep, from the generator's own
features (JAX, batched, jit-able; no file I/O).

The reference (kaschube-lab/LinkingInStyle, src/motion_estimation.py) matches the two
images with PUMP (sparse correspondences, densified) and fits an affine map. Here:

1. `dense_flow`: per-pixel flow by coarse-to-fine multi-channel Lucas-Kanade on what the
   generator computes for each image along the path (`sweep_features`: its output image,
   a synthesis layer, or both; a synthesis layer carries many channels per pixel, so the
   2x2 structure tensor is well conditioned where the RGB image is flat). At each level of a pyramid (2x average
   pooling), frame 2's features are warped by the current flow (bilinear, backward) and a
   Gauss-Newton update solves, per pixel, the least-squares system of the linearised
   brightness (feature) constancy summed over the channels and a Gaussian window; a few
   updates per level, then the flow is upsampled to the next finer level. Channels are
   standardised over the pair first, so none dominates. Why not matching by nearest
   neighbours / soft-argmax: their estimates are quantised to the sampling grid (or
   biased toward the window's centre) and need a sub-pixel refinement anyway; the LK
   update is that refinement, and the pyramid gives it the range of a search.
2. `part_motion`: per part (soft masks of frame 1), a weighted least-squares affine fit
   x2 = A x1 + t of the flow, as the reference fits an affine map to its correspondences:
   mean displacement, rotation (the rotation of A's polar decomposition) and scale
   (sqrt |det A|), plus the part's mask weight.

Which features: on the built-in world the output image gives the best flow (benchmarks/
bench_motion.py): its synthesis layers carry the absolute pixel position (a positional
encoding, as StyleGAN-XL's Fourier input layer does too), which does not move with the
object and pulls the flow toward zero (translation EPE 0.96 px on 2.3 px steps with
'L2_64' alone, 0.2 px with the image). `FEATURES = 'image'` is the default for that reason.
A unit's sweep, though, also changes colours and the background, which breaks brightness
constancy; there the part masks themselves are matched ('masks' in `sweep_motion` and
`consecutive_motion`; the motion stage's default, README "Dense motion of parts").
3. `sweep_motion` does both for batches of sweeps under one jit (images, masks, flow, fits);
`sweep_totals` sums them from the first to the last image; `true_pose_change` is the
built-in world's truth for them.

Conventions: flow [N, H, W, 2] in pixels, (dx, dy) with x to the right and y down; the
pixel p of frame 1 moves to p + flow[p] in frame 2. Validation against the built-in
world's true motion: tests/test_motion.py and benchmarks/bench_motion.py (README numbers).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

LEVELS = 3          # pyramid levels (the coarsest is 1/4 of the feature map's side)
ITERS = 4           # Gauss-Newton updates per level
SIGMA = 1.5         # std (pixels of each level) of the Gaussian window of the LK sums
DAMPING = 1e-3      # Tikhonov term of each 2x2 solve, relative to the mean structure tensor
MAX_STEP = 2.0      # cap on one update's length, in pixels of its level (keeps LK stable)
FEATURES = "image"  # what dense_flow matches by default: the generator's output image


def standardise(f1: jnp.ndarray, f2: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Per-sample, per-channel standardisation of a pair over both images: [N, H, W, C] each."""
  both = jnp.concatenate([f1, f2], axis=1)
  mean = both.mean(axis=(1, 2), keepdims=True)
  std = both.std(axis=(1, 2), keepdims=True) + 1e-6
  return (f1 - mean) / std, (f2 - mean) / std


def downsample(x: jnp.ndarray) -> jnp.ndarray:
  """[N, H, W, C] -> [N, H/2, W/2, C] by 2x2 averaging (H, W even)."""
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).mean((2, 4))


def warp(x: jnp.ndarray, flow: jnp.ndarray) -> jnp.ndarray:
  """Bilinear backward warp: out[p] = x[p + flow[p]] (borders clamped). [N, H, W, C], [N, H, W, 2]."""
  n, h, w, _ = x.shape
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=x.dtype), jnp.arange(w, dtype=x.dtype), indexing="ij")
  sx = jnp.clip(xx + flow[..., 0], 0, w - 1)
  sy = jnp.clip(yy + flow[..., 1], 0, h - 1)
  x0, y0 = jnp.floor(sx), jnp.floor(sy)
  ax, ay = (sx - x0)[..., None], (sy - y0)[..., None]
  x0i, y0i = x0.astype(jnp.int32), y0.astype(jnp.int32)
  x1i, y1i = jnp.minimum(x0i + 1, w - 1), jnp.minimum(y0i + 1, h - 1)
  b = jnp.arange(n)[:, None, None]
  g = lambda yi, xi: x[b, yi, xi]                                   # [N, H, W, C]
  return ((1 - ay) * ((1 - ax) * g(y0i, x0i) + ax * g(y0i, x1i))
          + ay * ((1 - ax) * g(y1i, x0i) + ax * g(y1i, x1i)))


def _gradients(x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Central differences (one-sided at the borders): d/dx, d/dy of [N, H, W, C]."""
  gx = jnp.gradient(x, axis=2)
  gy = jnp.gradient(x, axis=1)
  return gx, gy


def _blur(x: jnp.ndarray, sigma: float) -> jnp.ndarray:
  """Separable Gaussian window sum (edge-replicated) over H, W of [N, H, W, K]."""
  r = max(1, int(round(3 * sigma)))
  t = jnp.arange(-r, r + 1, dtype=x.dtype)
  k = jnp.exp(-0.5 * (t / sigma) ** 2)
  k = k / k.sum()
  pad = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")
  h, w = x.shape[1], x.shape[2]
  y = sum(k[i] * pad[:, i:i + h, :, :] for i in range(2 * r + 1))
  return sum(k[i] * y[:, :, i:i + w, :] for i in range(2 * r + 1))


def _lk_update(f1: jnp.ndarray, f2: jnp.ndarray, flow: jnp.ndarray, sigma: float) -> jnp.ndarray:
  """One Gauss-Newton step of the flow [N, h, w, 2] at one level."""
  f2w = warp(f2, flow)
  g1x, g1y = _gradients(f1)
  g2x, g2y = _gradients(f2w)
  gx, gy = 0.5 * (g1x + g2x), 0.5 * (g1y + g2y)                     # symmetric gradient
  e = f1 - f2w                                                       # residual [N, h, w, C]
  sums = _blur(jnp.stack([(gx * gx).sum(-1), (gx * gy).sum(-1), (gy * gy).sum(-1),
                          (gx * e).sum(-1), (gy * e).sum(-1)], -1), sigma)
  a, b, c, bx, by = (sums[..., i] for i in range(5))
  lam = DAMPING * jnp.mean(a + c, axis=(1, 2), keepdims=True) + 1e-9
  a, c = a + lam, c + lam
  det = a * c - b * b
  dx = (c * bx - b * by) / det
  dy = (a * by - b * bx) / det
  step = jnp.stack([dx, dy], -1)
  norm = jnp.linalg.norm(step, axis=-1, keepdims=True)
  return flow + step * jnp.minimum(1.0, MAX_STEP / (norm + 1e-9))


@functools.partial(jax.jit, static_argnames=("levels", "iters", "sigma"))
def dense_flow(f1: jnp.ndarray, f2: jnp.ndarray, levels: int = LEVELS, iters: int = ITERS,
               sigma: float = SIGMA) -> jnp.ndarray:
  """Per-pixel flow from frame 1 to frame 2 of feature maps.

  Args:
    f1, f2: [N, H, W, C] features of the two images (e.g. `G.synthesis_features(ws)[layer]`,
      or images, or both concatenated); H, W divisible by 2**(levels - 1).
    levels, iters, sigma: pyramid depth, Gauss-Newton updates per level, window std.
  Returns:
    [N, H, W, 2] flow in pixels of the feature map: (dx, dy), p in frame 1 -> p + flow.
  """
  f1, f2 = standardise(jnp.asarray(f1, jnp.float32), jnp.asarray(f2, jnp.float32))
  pyr = [(f1, f2)]
  for _ in range(levels - 1):
    pyr.append((downsample(pyr[-1][0]), downsample(pyr[-1][1])))
  n, h, w, _ = pyr[-1][0].shape
  flow = jnp.zeros((n, h, w, 2), jnp.float32)
  for lvl in reversed(range(levels)):
    a, b = pyr[lvl]
    if flow.shape[1:3] != a.shape[1:3]:                                # upsample x2
      flow = 2.0 * jax.image.resize(flow, (n,) + a.shape[1:3] + (2,), "linear")
    flow = jax.lax.fori_loop(0, iters, lambda _, f: _lk_update(a, b, f, sigma), flow)  # one compiled body
  return flow


def upsample_flow(flow: jnp.ndarray, size: int) -> jnp.ndarray:
  """Flow [N, h, w, 2] of a feature map -> [N, size, size, 2] in image pixels."""
  n, h, w, _ = flow.shape
  if (h, w) == (size, size):
    return flow
  return jax.image.resize(flow, (n, size, size, 2), "linear") * jnp.asarray([size / w, size / h])


def pixel_grid(h: int, w: int) -> jnp.ndarray:
  """[H, W, 2] pixel coordinates (x, y) of the pixel centres."""
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing="ij")
  return jnp.stack([xx, yy], -1)


@jax.jit
def part_motion(flow: jnp.ndarray, masks: jnp.ndarray) -> dict[str, jnp.ndarray]:
  """Per part, the weighted least-squares affine map of the flow: x + flow(x) = A x + t.

  Args:
    flow: [N, H, W, 2] in pixels (image resolution). masks: [N, H, W, P] part weights in
      frame 1 (soft masks or one-hot labels).
  Returns a dict, per sample and part ([N, P] unless noted; NaN where a part has under 3
  pixels of weight):
    'displacement': [N, P, 2] weighted mean flow (dx, dy) in pixels;
    'affine': [N, P, 2, 3] [A | t], pixel coordinates (x, y) of frame 1 -> frame 2;
    'rotation': radians, positive from +x toward +y (clockwise on screen, y down);
    'scale': sqrt |det A|; 'centroid': [N, P, 2] the part's weighted centroid (x, y) in
    frame 1; 'weight': total mask weight (pixels).
  """
  n, h, w, _ = flow.shape
  xy = jnp.broadcast_to(pixel_grid(h, w), (n, h, w, 2))
  m = jnp.moveaxis(masks.astype(jnp.float32), -1, 1).reshape(n, -1, h * w)    # [N, P, HW]
  x = xy.reshape(n, 1, h * w, 2)
  y = (xy + flow).reshape(n, 1, h * w, 2)
  wsum = m.sum(-1)                                                          # [N, P]
  safe = jnp.maximum(wsum, 1e-9)[..., None]
  cx = (m[..., None] * x).sum(2) / safe                                     # [N, P, 2]
  cy = (m[..., None] * y).sum(2) / safe
  dx, dy = x - cx[:, :, None], y - cy[:, :, None]                           # [N, P, HW, 2]
  sxx = jnp.einsum("npk,npki,npkj->npij", m, dx, dx)                        # [N, P, 2, 2]
  syx = jnp.einsum("npk,npki,npkj->npij", m, dy, dx)
  eye = 1e-6 * jnp.eye(2) * (wsum[..., None, None] + 1.0)
  a = jnp.linalg.solve(sxx + eye, jnp.swapaxes(syx, -1, -2))                # A^T
  a = jnp.swapaxes(a, -1, -2)                                               # [N, P, 2, 2]
  t = cy - jnp.einsum("npij,npj->npi", a, cx)
  ok = wsum >= 3.0
  nan = lambda v: jnp.where(ok.reshape(ok.shape + (1,) * (v.ndim - 2)), v, jnp.nan)
  rot = jnp.arctan2(a[..., 1, 0] - a[..., 0, 1], a[..., 0, 0] + a[..., 1, 1])
  return {
      "displacement": nan(cy - cx),
      "affine": nan(jnp.concatenate([a, t[..., None]], -1)),
      "rotation": nan(rot),
      "scale": nan(jnp.sqrt(jnp.abs(jnp.linalg.det(a)))),
      "centroid": nan(cx),
      "weight": wsum,
  }


def centroid_shift(masks1: jnp.ndarray, masks2: jnp.ndarray) -> jnp.ndarray:
  """Today's measure: the shift of each part's mask centroid, [N, P, 2] (dx, dy) pixels."""
  n, h, w, p = masks1.shape
  xy = pixel_grid(h, w)
  c = [jnp.einsum("nhwp,hwi->npi", m, xy) / jnp.maximum(m.sum((1, 2)), 1e-9)[..., None]
       for m in (masks1, masks2)]
  return c[1] - c[0]


def sweep_features(G, ws: jnp.ndarray, features: str = FEATURES) -> jnp.ndarray:
  """What `dense_flow` matches for images `G.synthesis(ws)`: [N, R, R, C] at the image size.

  Args:
    G: a generator. ws: [N, num_ws, w_dim].
    features: 'image', a `G.synthesis_features` layer name, or several joined by '+'
      (e.g. 'image+L2_64'); layers smaller than the image are resized to it (linear).
  """
  out = []
  feats = None
  for name in features.split("+"):
    if name == "image":
      out.append(G.synthesis(ws))
      continue
    feats = G.synthesis_features(ws) if feats is None else feats
    if name not in feats:
      raise ValueError(f"features={features!r}: {name!r} is not 'image' nor a synthesis layer "
                       f"({', '.join(feats)})")
    f = feats[name]
    if f.shape[1] != G.resolution:
      f = jax.image.resize(f, (f.shape[0], G.resolution, G.resolution, f.shape[-1]), "linear")
    out.append(f)
  return jnp.concatenate(out, -1)


def flow_features(G, ws: jnp.ndarray, masks: jnp.ndarray, features: str) -> jnp.ndarray:
  """`sweep_features`, where the name 'masks' stands for the part weights `masks`
  [N, R, R, P'] of the images (at the image size): [N, R, R, C]."""
  names = features.split("+")
  rest = "+".join(n for n in names if n != "masks")
  f = [masks] if "masks" in names else []
  return jnp.concatenate(f + ([sweep_features(G, ws, rest)] if rest else []), -1)


def consecutive_motion(G, ws: jnp.ndarray, masks: jnp.ndarray, features: str = FEATURES,
                       **flow_kw) -> dict[str, jnp.ndarray]:
  """Flow and part motion between consecutive images of sweeps.

  Args:
    G: a generator. ws: [S, T, num_ws, w_dim] S sweeps of T steps.
    masks: [S, T, R, R, P] part masks (a segmenter's or the world's) of every image.
    features: see `sweep_features`; 'masks' (alone or joined by '+'): the masks themselves
      (the parts without the background, and the object). **flow_kw: `dense_flow` settings.
  Returns:
    'flow' [S, T-1, R, R, 2] and the `part_motion` fields with leading [S, T-1].
  """
  s, t = ws.shape[:2]
  m = masks.reshape((s * t,) + masks.shape[2:])
  f = flow_features(G, ws.reshape((s * t,) + ws.shape[2:]), with_object(m), features)
  f = f.reshape((s, t) + f.shape[1:])
  pair = lambda x: x.reshape((s * (t - 1),) + x.shape[2:])
  flow = dense_flow(pair(f[:, :-1]), pair(f[:, 1:]), **flow_kw)
  flow = upsample_flow(flow, masks.shape[2])
  out = {"flow": flow, **part_motion(flow, pair(masks[:, :-1]))}
  return {k: v.reshape((s, t - 1) + v.shape[1:]) for k, v in out.items()}


OBJECT = "object"   # the union of the parts (1 - background), measured like a part


def with_object(masks: jnp.ndarray) -> jnp.ndarray:
  """Background-first part weights [N, H, W, P] -> [N, H, W, P]: the parts without the
  background, then the object (1 - background weight)."""
  return jnp.concatenate([masks[..., 1:], 1.0 - masks[..., :1]], -1)


def sweep_motion(G, w: jnp.ndarray, masks_fn, features: str = FEATURES, **flow_kw) -> dict:
  """Part motion between consecutive images of sweeps (call under jit; batched over sweeps).

  Args:
    G: a generator. w: [B, T, w_dim] one w per image (broadcast over G's ws).
    masks_fn: ws [N, num_ws, w_dim] -> [N, r, r, P] background-first part weights of the
      images (a segmenter's probabilities, the world's masks); resized to the image.
    features, **flow_kw: see `sweep_features`, `dense_flow`.
  Returns:
    `part_motion`'s fields [B, T-1, P(, ...)] in pixels of the image, P = the parts without
    the background, then OBJECT; and 'centroid_last' [B, P, 2]: each part's centroid in
    the last image (for the centroid-shift baseline).
  """
  b, t, d = w.shape
  ws = jnp.broadcast_to(w.reshape(b * t, 1, d), (b * t, G.num_ws, d))
  m = with_object(masks_fn(ws).astype(jnp.float32))                      # [BT, r, r, P]
  if m.shape[1] != G.resolution:
    m = jax.image.resize(m, (m.shape[0], G.resolution, G.resolution, m.shape[-1]), "linear")
  f = flow_features(G, ws, m, features)                                  # [BT, R, R, C]
  f, m = f.reshape((b, t) + f.shape[1:]), m.reshape((b, t) + m.shape[1:])
  pair = lambda x: x.reshape((b * (t - 1),) + x.shape[2:])
  flow = dense_flow(pair(f[:, :-1]), pair(f[:, 1:]), **flow_kw)
  out = {k: v.reshape((b, t - 1) + v.shape[1:]) for k, v in part_motion(flow, pair(m[:, :-1])).items()}
  last = m[:, -1]                                                        # [B, R, R, P]
  out["centroid_last"] = (jnp.einsum("nhwp,hwi->npi", last, pixel_grid(G.resolution, G.resolution))
                          / jnp.maximum(last.sum((1, 2)), 1e-9)[..., None])
  return out


def sweep_totals(out: dict) -> dict[str, np.ndarray]:
  """Per sweep and part, the motion from the first to the last image.

  Args: `sweep_motion`'s output ([B, T-1, P] fields, numpy or jax).
  Returns numpy: 'displacement' [B, P, 2] (sum of the consecutive mean displacements,
  pixels), 'rotation' [B, P] (sum, radians), 'scale' [B, P] (product), 'centroid_shift'
  [B, P, 2] (the part's centroid, last minus first image); NaN where the part is missing
  (under 3 pixels of weight) in some image but the last.
  """
  d = np.asarray(out["displacement"], np.float64)
  return {"displacement": d.sum(1), "rotation": np.asarray(out["rotation"], np.float64).sum(1),
          "scale": np.prod(np.asarray(out["scale"], np.float64), axis=1),
          "centroid_shift": (np.asarray(out["centroid_last"], np.float64)
                             - np.asarray(out["centroid"], np.float64)[:, 0])}


POSE_FACTORS = ("pos_x", "pos_y", "rotation", "scale")


def true_pose_change(G, w: np.ndarray) -> dict[str, np.ndarray] | None:
  """The object's true motion from the first to the last image of sweeps, on a world whose
  factors include POSE_FACTORS (the built-in 'shapes'; None elsewhere).

  Args: w [B, T, w_dim]. Returns 'displacement' [B, 2] pixels (the pose centre's shift),
  'rotation' [B] radians, 'scale' [B] (ratio last / first), 'class_change' [B] (total
  variation between the class weights of the first and last image, 0..1: above ~0.1 the
  object's shape morphs, and an affine fit measures that deformation as well as the pose).
  """
  if not hasattr(G, "decode_factors") or not set(POSE_FACTORS) <= set(getattr(G, "factor_ranges", {})):
    return None
  ends = np.asarray(w)[:, [0, -1]]                                       # [B, 2, w_dim]
  b, d = ends.shape[0], ends.shape[-1]
  ws = jnp.broadcast_to(jnp.asarray(ends.reshape(2 * b, 1, d)), (2 * b, G.num_ws, d))
  f, cw = G.decode_factors(ws)
  f = {k: np.asarray(f[k], np.float64).reshape(b, 2) for k in POSE_FACTORS}
  cw = np.asarray(cw, np.float64).reshape(b, 2, -1)
  half = G.resolution / 2                                                # [-1, 1] -> pixels
  return {"displacement": np.stack([f["pos_x"][:, 1] - f["pos_x"][:, 0],
                                    f["pos_y"][:, 1] - f["pos_y"][:, 0]], -1) * half,
          "rotation": f["rotation"][:, 1] - f["rotation"][:, 0],
          "scale": f["scale"][:, 1] / f["scale"][:, 0],
          "class_change": 0.5 * np.abs(cw[:, 1] - cw[:, 0]).sum(-1)}


def pose_flow(pose1: dict, pose2: dict, resolution: int) -> jnp.ndarray:
  """The true flow [N, R, R, 2] (pixels) of an object posed by a similarity transform.

  An object point p (object coordinates) is drawn at u = t + s R(theta) p in image
  coordinates u in [-1, 1] (x right, y down; pixel i's centre at (i + 0.5) / R * 2 - 1),
  as the built-in 'shapes' world renders it. pose1, pose2: {'pos_x', 'pos_y',
  'rotation', 'scale'}: [N] each, the pose in frame 1 and frame 2.
  """
  u = (pixel_grid(resolution, resolution)[None] + 0.5) / resolution * 2 - 1      # [1, R, R, 2]
  g = lambda pose, k: jnp.asarray(pose[k], jnp.float32)[:, None, None]
  px, py = u[..., 0] - g(pose1, "pos_x"), u[..., 1] - g(pose1, "pos_y")
  c, s = jnp.cos(g(pose1, "rotation")), jnp.sin(g(pose1, "rotation"))
  ox, oy = (c * px + s * py) / g(pose1, "scale"), (-s * px + c * py) / g(pose1, "scale")
  c, s, k = jnp.cos(g(pose2, "rotation")), jnp.sin(g(pose2, "rotation")), g(pose2, "scale")
  x2 = g(pose2, "pos_x") + k * (c * ox - s * oy)
  y2 = g(pose2, "pos_y") + k * (s * ox + c * oy)
  return jnp.stack([x2 - u[..., 0], y2 - u[..., 1]], -1) * (resolution / 2)


def draw_arrows(img: np.ndarray, starts: np.ndarray, moves: np.ndarray, colours: np.ndarray,
                gain: float = 1.0) -> np.ndarray:
  """A copy of uint8 images with one arrow per part: from its centroid along its displacement.

  Args:
    img: [N, H, W, 3] uint8. starts, moves: [N, P, 2] (x, y) pixels (NaN rows are skipped).
    colours: [P, 3] uint8 per part. gain: arrow length per pixel of displacement.
  Returns:
    [N, H, W, 3] uint8.
  """
  out = np.array(img, copy=True)
  n, h, w, _ = out.shape
  for i in range(n):
    for p in range(starts.shape[1]):
      a, d = starts[i, p], moves[i, p] * gain
      if not (np.isfinite(a).all() and np.isfinite(d).all()):
        continue
      b = a + d
      length = float(np.hypot(*d))
      head = [] if length < 1e-6 else [b - 0.35 * length * _rot(d / length, s) for s in (0.5, -0.5)]
      for q in [a] + head:
        t = np.linspace(0.0, 1.0, int(2 * np.hypot(*(b - q))) + 2)[:, None]
        pts = np.rint(q + t * (b - q)).astype(int)
        ok = (pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)
        out[i, pts[ok, 1], pts[ok, 0]] = colours[p]
  return out


def _rot(u: np.ndarray, angle: float) -> np.ndarray:
  c, s = np.cos(angle), np.sin(angle)
  return np.array([c * u[0] - s * u[1], s * u[0] + c * u[1]])
