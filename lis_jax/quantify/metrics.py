"""Per-image, per-part measurements of generated images, in JAX.

The reference analysis (kaschube-lab/LinkingInStyle@ce65809,
`src/feature_analysis_piepeline.py`) measures every segmented part of every sweep
image: its area, mean luminance, local texture entropy and, per connected component,
an ellipse fit. Here the same quantities are computed from masks on device, batched:

  area         number of mask pixels (sum of the mask for soft masks).
  luminance    mean of (0.299 R + 0.587 G + 0.114 B) / 3 over the part, on the
               0..255 scale of the 8-bit image (the reference's formula: 85 is the
               largest possible value, and its notebook divides changes by 85).
  entropy_*    mean / std / min / max over the part of the local Shannon entropy
               (bits) of the grey image in a disk of radius 5: for every pixel, the
               histogram of the 8-bit grey levels inside the disk (pixels outside the
               image are not counted), H = -sum p log2 p. This is the definition of
               `skimage.filters.rank.entropy(img_as_ubyte(rgb2gray(img)), disk(5))`,
               which the reference calls; grey = 0.2125 R + 0.7154 G + 0.0721 B,
               rounded to 8 bits as `img_as_ubyte` does.
  colour       mean R, G, B of the part in [0, 1].
  centre_x/y   centre of mass of the whole part (all its components), in pixels
               (x = column, y = row, pixel centres at integers).
  ell_*        an ellipse per connected component, from image moments: centre x/y,
               width (minor axis) and height (major axis) as full lengths
               4 sqrt(eigenvalue) of the pixel-coordinate covariance (the filled
               ellipse with the same second moments, as skimage.measure.regionprops
               defines axis lengths), angle in degrees in [0, 180) in OpenCV's
               RotatedRect convention that the reference's cv2.fitEllipse uses (the
               major axis points along (-sin a, cos a) in (x, y) image coordinates,
               y down: 0 = vertical, 90 = horizontal), eccentricity
               sqrt(1 - width^2 / height^2). The reference fits cv2.fitEllipse to each
               component's outer contour; a moment fit is the same ellipse for a filled
               ellipse and is stable for ragged segmentations.

Added beyond the reference (benchmarks/selectivity_results.md measures why):
  brightness   mean of (R + G + B) / 3 over the part, in [0, 1]: unlike the Rec. 601
               luma above, a hue change at constant brightness leaves it unchanged.
  contrast     coefficient of variation (std / mean) of the per-pixel brightness over
               the part's interior (the binary mask eroded by one pixel, or the mask
               itself where erosion leaves nothing): a texture measure that a colour or
               brightness change of the whole part leaves unchanged, and that an edge
               of a neighbouring part (a segmentation error) hardly touches.
  angle        orientation of the whole (soft) part from its second moments, in the
               ellipse convention below (not only its largest component).
  elongation   1 - minor / major axis of the whole part's second moments (0 for a disk or
               a square, 0.5 for a 2:1 ellipse): how well `angle` is defined. The moment
               axis of a near-round part is set by small shape details, so its change
               says little about a rotation (benchmarks/diagnose_selectivity.py
               --calibration: object angle vs rotation per start sample, r -0.29..0.50 for
               the mushroom and the house, 0.51-1.00 for the other classes).
  log_area     natural log of `area` (NaN for an absent part): a size is multiplicative,
               so its change is read as a log ratio, on which growing and shrinking by
               the same factor are equally large (a relative change is bounded at -1
               when shrinking and unbounded when growing).
  interior_brightness  brightness over the part's interior (the mask eroded by one pixel,
               as `contrast`; the mask itself where erosion leaves nothing): a part's
               colour read away from its boundary, whose pixels mix the neighbours'
               colours (soft edges, segmentation errors), so a background or
               neighbouring part's luminance change hardly moves it.
  channel_contrast  std / mean of the 8-bit levels of one colour channel over the part's
               interior (as `contrast`): the channel with the fewest saturated (0 or 255)
               interior pixels, the brightest of those that tie. A multiplicative texture
               (stripes, shading) has the same contrast in every channel that is not
               clipped, while the mean of the channels (`contrast`) loses the peaks of a
               channel that clips, so its contrast fell as a bright part brightened (the
               demo's seeds 0-2, segmenter masks: the body contrast's change regressed on
               the 20 true factor changes over units, per start sample, has a mean
               standardised weight of -0.19 to -0.23 on body_lum; channel_contrast's is
               below 0.06 on seed 0; tests/test_quantify_world.py pins it).
and an `object` pseudo-part (`with_object`): the union of all foreground parts, whose
size, position and orientation do not depend on how the parts are told apart.

Connected components are labelled by `label_components`: every foreground pixel ends
labelled by the smallest flat index of its component. On accelerators, in JAX: every
foreground pixel starts with its own flat index as label; a `lax.while_loop` alternates a
minimum over the 8 (or 4) neighbours, a minimum over each horizontal run of foreground
pixels (two cumulative minima) and pointer jumping (label <- label of the pixel the label
names) until nothing changes. (The runs' minimum carries a label across a whole row
segment in one sweep: on the demo world's masks the sweeps needed fell from up to 28 to 9,
and the batch's time by half.) On the CPU backend (`jax.lax.platform_dependent`) the same
labels come from scipy.ndimage.label through a host callback, all masks of a call at once:
on 2 CPU cores the loop cost ~1 ms per 64 x 64 mask (the demo's 8 masks per image: 8 ms of
the 23 ms an image's segment-and-measure took), scipy ~0.03 ms; the labels are integers, so
every metric is the same bit for bit (tests/test_quantify_metrics.py checks both paths
against scipy). The components' moments are then sums over those labels (in XLA a
`segment_sum`, whose scatter cost ~1.7 ms per demo image on CPU; on the CPU path, in the same
callback, float64 `np.bincount`s rounded once to float32: XLA's sums to the bit up to 64 x 64
px, `component_moments_host`) and the `max_components` largest are kept, sorted by area
(ties: the smaller smallest index first). Everything is jittable and vmapped over images.

Undefined values (a part absent from an image, a component slot with no component)
are NaN; `area` is then 0.

Images are the generator's [-1, 1] float images; they are first quantised to the 8-bit
levels a saved PNG has (the reference's `(x + 1) * 255 / 2`, clipped, truncated, as
`lis_jax.images.to_uint8`), because the reference measures saved PNGs.
"""
from __future__ import annotations

import functools
from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

from lis_jax import images

# Rec. 601 luma weights of the reference's luminance, divided by LUMA_DIVISOR there.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
LUMA_DIVISOR = 3.0
# Largest possible luminance on the reference's scale (255 / 3); its notebook divides
# luminance changes by this.
MAX_LUMINANCE = 255.0 / LUMA_DIVISOR
# skimage.color.rgb2gray weights (ITU-R BT.709), in 1/10000 so grey can be rounded in
# exact integer arithmetic.
GREY_WEIGHTS_1E4 = (2125, 7154, 721)
# Radius of the disk footprint of the reference's local entropy (skimage disk(5)).
ENTROPY_RADIUS = 5
# Sentinel grey level for pixels outside the image in the entropy windows (> 255).
_OUTSIDE = 256

# Names of the per-part scalar metrics, [N, P] each.
SCALAR_METRICS = ("area", "luminance", "entropy_mean", "entropy_std", "entropy_min",
                  "entropy_max", "colour_r", "colour_g", "colour_b", "centre_x", "centre_y",
                  "brightness", "contrast", "angle", "elongation", "interior_brightness", "log_area",
                  "channel_contrast")
# Name of the union-of-parts pseudo-part that `with_object` appends.
OBJECT_PART = "object"
# Names of the per-component ellipse fields, [N, P, K] each.
ELLIPSE_FIELDS = ("centre_x", "centre_y", "width", "height", "angle", "eccentricity", "area")


# ----------------------------------------------------------------------------- images


def to_levels(img: jax.Array) -> jax.Array:
  """[-1, 1] float image -> its 8-bit levels as saved to PNG (float32 integers 0..255).

  Args:
    img: [..., 3] generator output, nominal range [-1, 1].
  Returns:
    [..., 3] float32 with integer values in [0, 255] (`(x + 1) * 255/2`, clipped,
    truncated, as the reference's tune_units.py saves images).
  """
  return images.to_uint8(img).astype(jnp.float32)


def grey_levels(levels: jax.Array) -> jax.Array:
  """8-bit RGB levels -> 8-bit grey levels, as img_as_ubyte(rgb2gray(uint8 image)).

  Args:
    levels: [..., 3] integer-valued float or int array in [0, 255].
  Returns:
    [...] int32 in [0, 255]: rint(0.2125 R + 0.7154 G + 0.0721 B), ties to even (as
    numpy's rint), computed exactly in integers.
  """
  q = levels.astype(jnp.int32) @ jnp.asarray(GREY_WEIGHTS_1E4, jnp.int32)  # grey * 1e4
  base, rem = q // 10000, q % 10000
  round_up = (rem > 5000) | ((rem == 5000) & (base % 2 == 1))
  return jnp.clip(base + round_up.astype(jnp.int32), 0, 255)


def luminance_image(levels: jax.Array) -> jax.Array:
  """8-bit RGB levels [..., 3] -> the reference's luminance [...] in [0, 85]."""
  return levels @ jnp.asarray(LUMA_WEIGHTS, levels.dtype) / LUMA_DIVISOR


@functools.lru_cache(maxsize=None)
def disk_offsets(radius: int) -> np.ndarray:
  """Offsets (dy, dx) of skimage.morphology.disk(radius): dy^2 + dx^2 <= radius^2."""
  r = np.arange(-radius, radius + 1)
  dy, dx = np.meshgrid(r, r, indexing="ij")
  inside = dy ** 2 + dx ** 2 <= radius ** 2
  return np.stack([dy[inside], dx[inside]], axis=-1)  # [K, 2]


@functools.lru_cache(maxsize=None)
def _window_index(h: int, w: int, radius: int) -> np.ndarray:
  """Flat indices into the (radius-)padded image of every pixel's disk window: [H, W, K]."""
  offsets = disk_offsets(radius)  # [K, 2]
  rows = np.arange(h)[:, None, None] + radius + offsets[:, 0]
  cols = np.arange(w)[None, :, None] + radius + offsets[:, 1]
  return (rows * (w + 2 * radius) + cols).astype(np.int32)


def local_entropy(grey: jax.Array, radius: int = ENTROPY_RADIUS) -> jax.Array:
  """Local Shannon entropy (bits) of an 8-bit grey image in a disk footprint.

  Same definition as skimage.filters.rank.entropy(grey.astype(uint8), disk(radius)):
  per pixel, the histogram of grey levels over the footprint pixels that lie inside
  the image, H = -sum_v p_v log2 p_v. Computed by sorting each window and summing
  c log2 c over runs of equal values: H = log2 n - (1/n) sum_runs c log2 c.

  Args:
    grey: [H, W] integer grey levels in [0, 255] (any int or integer-valued dtype).
    radius: disk radius in pixels.
  Returns:
    [H, W] float32 entropy in bits.
  """
  h, w = grey.shape
  padded = jnp.pad(grey.astype(jnp.int32), radius, constant_values=_OUTSIDE)
  windows = padded.reshape(-1)[_window_index(h, w, radius)]  # [H, W, K]
  s = jnp.sort(windows, axis=-1)
  k = jnp.arange(s.shape[-1])
  inside = s < _OUTSIDE
  pop = jnp.sum(inside, axis=-1).astype(jnp.float32)  # [H, W]
  prev_differs = jnp.concatenate([jnp.ones_like(s[..., :1], bool), s[..., 1:] != s[..., :-1]], -1)
  next_differs = jnp.concatenate([s[..., 1:] != s[..., :-1], jnp.ones_like(s[..., :1], bool)], -1)
  run_start = jax.lax.cummax(jnp.where(prev_differs, k, 0), axis=s.ndim - 1)
  run_len = (k - run_start + 1).astype(jnp.float32)
  c_log_c = jnp.where(next_differs & inside, run_len * jnp.log2(run_len), 0.0)
  return jnp.log2(pop) - jnp.sum(c_log_c, axis=-1) / pop


# ----------------------------------------------------------------------------- components


def _shift_cols(x: jax.Array, s: int) -> jax.Array:
  """[H, W] x shifted s columns right (s < 0: left), False / 0 shifted in."""
  pad = jnp.zeros_like(x[:, :abs(s)])
  return jnp.concatenate([pad, x[:, :-s]], 1) if s > 0 else jnp.concatenate([x[:, -s:], pad], 1)


def label_components(mask: jax.Array, connectivity: int = 8) -> jax.Array:
  """Labels the connected components of a binary image (jittable, vmappable).

  On the CPU backend through scipy.ndimage.label on the host (`label_components_host`),
  elsewhere in XLA (`label_components_xla`): the same labels.

  Args:
    mask: [H, W] bool foreground.
    connectivity: 8 (default; as contours are traced) or 4.
  Returns:
    [H, W] int32: for foreground pixels, the smallest flat index (row * W + col) of
    the pixel's component; for background pixels, H * W.
  """
  if connectivity not in (4, 8):
    raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
  out = jax.ShapeDtypeStruct(mask.shape, jnp.int32)
  host = lambda m: jax.pure_callback(functools.partial(label_components_host, connectivity=connectivity),
                                     out, m, vmap_method="expand_dims")
  return jax.lax.platform_dependent(
      mask, cpu=host, default=functools.partial(label_components_xla, connectivity=connectivity))


def label_components_host(mask: np.ndarray, connectivity: int = 8) -> np.ndarray:
  """`label_components` in NumPy / scipy, for masks [..., H, W] (any leading axes).

  scipy.ndimage.label labels all masks in one call (a structure that connects nothing
  across the leading axis); each component's smallest flat index in the whole stack is
  its first pixel, minus its mask's offset that is the smallest index in its mask.
  """
  m = np.asarray(mask, bool)
  h, w = m.shape[-2:]
  lab, first = _label_stack(m, connectivity)
  out = np.full(lab.shape, h * w, np.int64)
  fg = np.flatnonzero(lab)
  out[fg] = first[lab[fg]] - fg // (h * w) * (h * w)   # a mask's own flat index
  return out.reshape(m.shape).astype(np.int32)


def _label_stack(m: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
  """scipy.ndimage.label of masks [..., H, W], none connected to another: labels [M * H * W]
  (0 background, 1..n) over the stack flattened, and each label's first flat index [n + 1]."""
  from scipy import ndimage  # noqa: PLC0415  (local: only the CPU path needs it)
  h, w = m.shape[-2:]
  structure = np.zeros((3, 3, 3), bool)
  structure[1] = ndimage.generate_binary_structure(2, 2 if connectivity == 8 else 1)
  lab, n = ndimage.label(m.reshape(-1, h, w), structure)
  lab = lab.reshape(-1)
  fg = np.flatnonzero(lab)
  first = np.full(n + 1, lab.size, np.int64)
  np.minimum.at(first, lab[fg], fg)
  return lab, first


def label_components_xla(mask: jax.Array, connectivity: int = 8) -> jax.Array:
  """`label_components` in XLA (a `lax.while_loop`; module docstring): [H, W] bool -> [H, W] int32."""
  if connectivity not in (4, 8):
    raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
  h, w = mask.shape
  background = h * w
  shifts = [(-1, 0), (1, 0), (0, -1), (0, 1)]
  if connectivity == 8:
    shifts += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
  init = jnp.where(mask, jnp.arange(h * w, dtype=jnp.int32).reshape(h, w), background)
  # Run ids along each row, counted from the left and from the right: a run's labels are
  # offset by (w - id) * (background + 1), so a cumulative minimum never reaches into an
  # earlier run (its offsets are larger) and, the offset removed, is the run's minimum so far.
  off = (background + 1) * (w - jnp.cumsum(mask & ~_shift_cols(mask, 1), axis=1, dtype=jnp.int32))
  off_r = (background + 1) * (w - jnp.flip(jnp.cumsum(jnp.flip(mask & ~_shift_cols(mask, -1), 1),
                                                       axis=1, dtype=jnp.int32), 1))

  def run_min(lab):   # the minimum label of each horizontal run of foreground pixels
    fwd = jax.lax.cummin(off + lab, axis=1) - off
    bwd = jax.lax.cummin(off_r + lab, axis=1, reverse=True) - off_r
    return jnp.where(mask, jnp.minimum(fwd, bwd), background)

  def sweep(lab):
    padded = jnp.pad(lab, 1, constant_values=background)
    for dy, dx in shifts:
      lab = jnp.minimum(lab, padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w])
    lab = run_min(jnp.where(mask, lab, background))
    # pointer jumping: a label names a pixel of the same component
    flat = jnp.append(lab.reshape(-1), background)
    return jnp.where(mask, flat[lab], background)

  def cond(state):
    lab, prev = state
    return jnp.any(lab != prev)

  def body(state):
    lab, _ = state
    return sweep(lab), lab

  lab, _ = jax.lax.while_loop(cond, body, (sweep(init), init))
  return lab


def _ellipse_from_moments(m00, sx, sy, sxx, syy, sxy, x0, y0):
  """Ellipse fields from raw moment sums (coordinates relative to (x0, y0))."""
  safe = jnp.where(m00 > 0, m00, 1.0)
  mx, my = sx / safe, sy / safe
  cxx = jnp.maximum(sxx / safe - mx * mx, 0.0)
  cyy = jnp.maximum(syy / safe - my * my, 0.0)
  cxy = sxy / safe - mx * my
  half_tr = 0.5 * (cxx + cyy)
  root = jnp.sqrt(0.25 * (cxx - cyy) ** 2 + cxy ** 2)
  lam_major = half_tr + root
  lam_minor = jnp.maximum(half_tr - root, 0.0)
  height = 4.0 * jnp.sqrt(lam_major)
  width = 4.0 * jnp.sqrt(lam_minor)
  phi = 0.5 * jnp.degrees(jnp.arctan2(2.0 * cxy, cxx - cyy))  # major axis from +x, toward +y
  angle = jnp.mod(phi + 90.0, 180.0)
  ecc = jnp.sqrt(jnp.clip(1.0 - (width / jnp.where(height > 0, height, 1.0)) ** 2, 0.0, 1.0))
  ecc = jnp.where(height > 0, ecc, 0.0)
  nan = jnp.nan
  ok = m00 > 0
  return {
      "centre_x": jnp.where(ok, mx + x0, nan),
      "centre_y": jnp.where(ok, my + y0, nan),
      "width": jnp.where(ok, width, nan),
      "height": jnp.where(ok, height, nan),
      "angle": jnp.where(ok, angle, nan),
      "eccentricity": jnp.where(ok, ecc, nan),
      "area": m00,
  }


def _coords(h, w):
  """Pixel coordinates relative to the image centre (smaller sums in float32)."""
  y0, x0 = (h - 1) / 2.0, (w - 1) / 2.0
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - y0,
                        jnp.arange(w, dtype=jnp.float32) - x0, indexing="ij")
  return xx, yy, x0, y0


def component_ellipses(mask: jax.Array, max_components: int, connectivity: int = 8):
  """Moment ellipses of the `max_components` largest connected components of a mask.

  Args:
    mask: [H, W] bool.
    max_components: K, how many components to keep (largest area first).
    connectivity: 8 or 4.
  Returns:
    dict of ELLIPSE_FIELDS -> [K]; slots without a component have area 0 and NaN fields.
  """
  h, w = mask.shape
  _, _, x0, y0 = _coords(h, w)
  out = jax.ShapeDtypeStruct((max_components, 6), jnp.float32)
  host = lambda m: jax.pure_callback(functools.partial(component_moments_host, max_components=max_components,
                                                       connectivity=connectivity), out, m, vmap_method="expand_dims")
  top = jax.lax.platform_dependent(mask, cpu=host, default=functools.partial(
      component_moments_xla, max_components=max_components, connectivity=connectivity))  # [K, 6]
  return _ellipse_from_moments(*(top[:, i] for i in range(6)), x0, y0)


# ----------------------------------------------------------------------------- metrics


def component_moments_xla(mask: jax.Array, max_components: int, connectivity: int = 8) -> jax.Array:
  """[H, W] bool -> [K, 6] raw moment sums (area, x, y, xx, yy, xy; coordinates from the
  image centre, `_coords`) of the K largest components, largest first (ties: the smaller
  smallest flat index first); empty slots 0. In XLA: `label_components`, a segment_sum, top_k."""
  h, w = mask.shape
  lab = label_components(mask, connectivity).reshape(-1)
  xx, yy, _, _ = _coords(h, w)
  xx, yy = xx.reshape(-1), yy.reshape(-1)
  one = mask.reshape(-1).astype(jnp.float32)
  sums = jax.ops.segment_sum(
      jnp.stack([one, one * xx, one * yy, one * xx * xx, one * yy * yy, one * xx * yy], -1),
      lab, num_segments=h * w + 1)[:h * w]  # [H*W, 6]; row = component's smallest index
  _, order = jax.lax.top_k(sums[:, 0], max_components)
  return sums[order]


def component_moments_host(mask: np.ndarray, max_components: int, connectivity: int = 8) -> np.ndarray:
  """`component_moments_xla` in NumPy for masks [..., H, W] -> [..., K, 6] float32 (the CPU path).

  The sums are accumulated in float64 and rounded to float32 once: on images up to 64 x 64
  px every term and partial sum is a multiple of 1/4 below 2^22, exact in float32 in any
  order, so these are XLA's float32 segment sums to the bit; on larger images they are the
  correctly rounded sums (XLA's differ from them in the last bits).
  """
  m = np.asarray(mask, bool)
  h, w = m.shape[-2:]
  k = max_components
  lab, first = _label_stack(m, connectivity)   # labels 1..n over the stack
  n_masks = lab.size // (h * w)
  yy, xx = np.mgrid[:h, :w]
  xx, yy = xx.reshape(-1) - (w - 1) / 2.0, yy.reshape(-1) - (h - 1) / 2.0
  fg = np.flatnonzero(lab)
  seg, x, y = lab[fg], xx[fg % (h * w)], yy[fg % (h * w)]
  sums = np.stack([np.bincount(seg, weights=v, minlength=first.size)
                   for v in (np.ones_like(x), x, y, x * x, y * y, x * y)], -1)[1:]   # [n, 6]
  owner, root = first[1:] // (h * w), first[1:] % (h * w)
  order = np.lexsort((root, -sums[:, 0], owner))   # by mask; largest area, then smallest root
  owner = owner[order]
  slot = np.arange(order.size) - np.searchsorted(owner, owner)   # rank within its mask
  keep = slot < k
  top = np.zeros((n_masks, k, 6))   # empty slots: zero sums
  top[owner[keep], slot[keep]] = sums[order[keep]]
  return top.astype(np.float32).reshape(m.shape[:-2] + (k, 6))


def with_object(masks: jax.Array) -> jax.Array:
  """Part masks [..., P] -> [..., P + 1]: appends the union of the parts (OBJECT_PART).

  The masks must be foreground parts only (background dropped); soft masks are summed
  and clipped to 1.
  """
  return jnp.concatenate([masks, jnp.clip(jnp.sum(masks, -1, keepdims=True), 0.0, 1.0)], -1)


def erode(binary: jax.Array) -> jax.Array:
  """[H, W, P] bool masks eroded by one pixel (3 x 3 square; outside the image counts as off)."""
  h, w = binary.shape[:2]
  padded = jnp.pad(binary, ((1, 1), (1, 1), (0, 0)), constant_values=False)
  out = binary
  for dy in (-1, 0, 1):
    for dx in (-1, 0, 1):
      out = out & padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
  return out


def _channel_contrast(levels: jax.Array, interior: jax.Array, n_in: jax.Array) -> jax.Array:
  """`channel_contrast`: std / mean of one colour channel's 8-bit levels over each part's
  interior, the channel with the fewest saturated (0 or 255) interior pixels (ties: the
  brightest, whose levels are finest relative to its mean).

  Args:
    levels: [H, W, 3] 8-bit levels; interior: [H, W, P] float 0/1; n_in: [P] its sums.
  Returns:
    [P] (NaN for an empty interior).
  """
  n = jnp.maximum(n_in, 1.0)
  mean = jnp.einsum("hwc,hwp->cp", levels, interior) / n  # [3, P]
  var = jnp.maximum(jnp.einsum("hwc,hwp->cp", levels ** 2, interior) / n - mean ** 2, 0.0)
  saturated = ((levels <= 0.0) | (levels >= 255.0)).astype(jnp.float32)
  share = jnp.einsum("hwc,hwp->cp", saturated, interior) / n  # [3, P]
  fewest = share <= jnp.min(share, axis=0, keepdims=True)
  best = jnp.argmax(jnp.where(fewest, mean, -1.0), axis=0)  # [P]: fewest saturated, then brightest
  pick = lambda x: jnp.take_along_axis(x, best[None], axis=0)[0]
  cv = jnp.sqrt(pick(var)) / jnp.maximum(pick(mean), 1.0)
  return jnp.where(n_in > 0, cv, jnp.nan)


def image_part_metrics(img: jax.Array, masks: jax.Array, *, max_components: int = 3,
                       threshold: float = 0.5, connectivity: int = 8,
                       entropy_radius: int = ENTROPY_RADIUS,
                       entropy: bool = True) -> Dict[str, jax.Array]:
  """All part metrics of one image (see the module docstring for definitions).

  Args:
    img: [H, W, 3] float image in [-1, 1].
    masks: [H, W, P] part masks, binary or soft in [0, 1]. Soft masks weight area,
      luminance, entropy mean/std, colour and centre; min/max entropy and connected
      components use mask > threshold.
    max_components: K ellipse slots per part (largest components first).
    threshold: binarisation threshold for components and entropy min/max.
    connectivity: 8 or 4 for components.
    entropy_radius: disk radius of the local entropy.
    entropy: False skips the local entropy (the costliest metric): entropy_* are NaN.
  Returns:
    dict: SCALAR_METRICS -> [P]; 'ell_<field>' for ELLIPSE_FIELDS -> [P, K].
  """
  h, w, _ = img.shape
  levels = to_levels(img.astype(jnp.float32))  # [H, W, 3]
  lum = luminance_image(levels)  # [H, W]
  if entropy:
    ent = local_entropy(grey_levels(levels), entropy_radius)  # [H, W]
  else:
    ent = jnp.full((h, w), jnp.nan, jnp.float32)
  m = masks.astype(jnp.float32)  # [H, W, P]
  binary = m > threshold

  area = jnp.sum(m, axis=(0, 1))  # [P]
  ok = area > 0
  safe = jnp.where(ok, area, 1.0)

  def wmean(x):  # x [H, W] -> [P]
    return jnp.where(ok, jnp.einsum("hw,hwp->p", x, m) / safe, jnp.nan)

  ent_mean = wmean(ent)
  ent_var = jnp.maximum(wmean(ent * ent) - ent_mean ** 2, 0.0)
  any_bin = jnp.any(binary, axis=(0, 1))
  ent_min = jnp.where(any_bin, jnp.min(jnp.where(binary, ent[..., None], jnp.inf), (0, 1)), jnp.nan)
  ent_max = jnp.where(any_bin, jnp.max(jnp.where(binary, ent[..., None], -jnp.inf), (0, 1)), jnp.nan)
  xx, yy, x0, y0 = _coords(h, w)
  bright = jnp.mean(levels, -1) / 255.0  # [H, W]
  interior = erode(binary)
  interior = jnp.where(jnp.any(interior, axis=(0, 1)), interior, binary).astype(jnp.float32)
  n_in = jnp.sum(interior, axis=(0, 1))  # [P]
  in_mean = jnp.einsum("hw,hwp->p", bright, interior) / jnp.maximum(n_in, 1.0)
  in_var = jnp.maximum(jnp.einsum("hw,hwp->p", bright ** 2, interior) / jnp.maximum(n_in, 1.0)
                       - in_mean ** 2, 0.0)
  contrast = jnp.where(n_in > 0, jnp.sqrt(in_var) / jnp.maximum(in_mean, 1.0 / 255.0), jnp.nan)
  channel_contrast = _channel_contrast(levels, interior, n_in)
  whole = _ellipse_from_moments(area, jnp.einsum("hw,hwp->p", xx, m), jnp.einsum("hw,hwp->p", yy, m),
                                jnp.einsum("hw,hwp->p", xx * xx, m), jnp.einsum("hw,hwp->p", yy * yy, m),
                                jnp.einsum("hw,hwp->p", xx * yy, m), x0, y0)
  out = {
      "area": area,
      "luminance": wmean(lum),
      "entropy_mean": ent_mean,
      "entropy_std": jnp.sqrt(ent_var),
      "entropy_min": ent_min,
      "entropy_max": ent_max,
      "colour_r": wmean(levels[..., 0] / 255.0),
      "colour_g": wmean(levels[..., 1] / 255.0),
      "colour_b": wmean(levels[..., 2] / 255.0),
      "centre_x": wmean(xx) + x0,
      "centre_y": wmean(yy) + y0,
      "brightness": wmean(bright),
      "contrast": contrast,
      "angle": whole["angle"],
      "elongation": 1.0 - whole["width"] / jnp.where(whole["height"] > 0, whole["height"], jnp.nan),
      "interior_brightness": jnp.where(n_in > 0, in_mean, jnp.nan),
      "log_area": jnp.where(ok, jnp.log(safe), jnp.nan),
      "channel_contrast": channel_contrast,
  }
  ell = jax.vmap(lambda b: component_ellipses(b, max_components, connectivity),
                 in_axes=-1)(binary)  # fields [P, K]
  out.update({f"ell_{k}": v for k, v in ell.items()})
  return out


@functools.partial(jax.jit, static_argnames=("max_components", "threshold", "connectivity",
                                             "entropy_radius", "entropy"))
def part_metrics(imgs: jax.Array, masks: jax.Array, *, max_components: int = 3,
                 threshold: float = 0.5, connectivity: int = 8,
                 entropy_radius: int = ENTROPY_RADIUS, entropy: bool = True) -> Dict[str, jax.Array]:
  """`image_part_metrics` vmapped over a batch and jitted.

  Args:
    imgs: [N, H, W, 3] float images in [-1, 1].
    masks: [N, H, W, P] part masks (binary or soft in [0, 1]).
    (other arguments as in image_part_metrics)
  Returns:
    dict: SCALAR_METRICS -> [N, P]; 'ell_<field>' -> [N, P, K].
  """
  if imgs.ndim != 4 or imgs.shape[-1] != 3 or masks.ndim != 4 or masks.shape[:3] != imgs.shape[:3]:
    raise ValueError(f"expected imgs [N, H, W, 3] and masks [N, H, W, P], got {imgs.shape} "
                     f"and {masks.shape}")
  fn = functools.partial(image_part_metrics, max_components=max_components, threshold=threshold,
                         connectivity=connectivity, entropy_radius=entropy_radius, entropy=entropy)
  return jax.vmap(fn)(imgs, masks)


def labels_to_masks(labels: jax.Array, num_parts: int) -> jax.Array:
  """Integer label maps [..., H, W] (0 = background) -> one-hot part masks [..., H, W, P].

  Part p (0-based) of the masks is label p + 1; the background is dropped.
  """
  return jax.nn.one_hot(labels - 1, num_parts, dtype=jnp.float32)
