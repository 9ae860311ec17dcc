"""Part metrics against closed forms, scikit-image and scipy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from skimage.color import rgb2gray
from skimage.filters.rank import entropy as sk_entropy
from skimage.measure import regionprops
from skimage.morphology import disk
from skimage.util import img_as_ubyte

from lis_jax.quantify import metrics

# float32 log2 sums over <= 81 terms vs skimage's float64.
ENTROPY_ATOL = 1e-5
# A disk of radius 5 holds 81 pixels, split 37 / 44 on a checkerboard: 1 - h2(37/81) = 5.4e-3.
CHECKER_BITS_TOL = 6e-3
# Moment centre of a pixelised ellipse vs its true centre (boundary pixels are in or out).
CENTRE_TOL_PX = 0.1
# Full axis lengths of a pixelised ellipse vs 2a, 2b.
AXIS_TOL_PX = 0.5
# Orientation of a pixelised ellipse with axes 50 x 20 px.
ANGLE_TOL_DEG = 0.5
# Same moment definition as regionprops, float32 vs float64.
REGIONPROPS_RTOL = 1e-4
# Luminance / colour of a flat patch: float32 weighted sums over the image's pixels.
FLAT_RTOL = 1e-4
# Brightness contrast / channel contrast of a striped part whose red channel clips on 42% of
# its interior: 0.246 / 0.286 = 0.86 (numpy on the same levels).
CLIPPED_CONTRAST_RATIO = 0.9

SIZE = 96


def _ellipse(cx, cy, a, b, phi_deg, size=SIZE):
  """Pixel-centre mask of an ellipse: semi-axes a (major) along phi from +x toward +y."""
  yy, xx = np.mgrid[:size, :size]
  p = np.radians(phi_deg)
  u = (xx - cx) * np.cos(p) + (yy - cy) * np.sin(p)
  v = -(xx - cx) * np.sin(p) + (yy - cy) * np.cos(p)
  return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _levels_to_img(levels):
  """8-bit levels -> a [-1, 1] image that to_levels maps back to exactly these levels."""
  return (np.asarray(levels, np.float32) + 0.5) / 127.5 - 1.0


def _angle_diff(a, b):
  return np.abs((np.asarray(a) - np.asarray(b) + 90.0) % 180.0 - 90.0)


def test_to_levels_round_trip():
  levels = np.arange(256, dtype=np.float32)[:, None].repeat(3, 1)
  np.testing.assert_array_equal(metrics.to_levels(jnp.asarray(_levels_to_img(levels))), levels)


def test_grey_levels_match_skimage():
  rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)
  np.testing.assert_array_equal(metrics.grey_levels(jnp.asarray(rgb)), img_as_ubyte(rgb2gray(rgb)))


def _grey_images():
  rng = np.random.default_rng(1)
  ramp = (np.outer(np.linspace(0, 1, 48), np.linspace(0, 1, 40)) * 255).astype(np.uint8)
  return {
      "uniform_noise": rng.integers(0, 256, (48, 40)).astype(np.uint8),
      "ramp": ramp,
      "five_levels": (rng.integers(0, 5, (48, 40)) * 60).astype(np.uint8),
      "blobs": (scipy.ndimage.gaussian_filter(rng.normal(size=(48, 40)), 3) > 0).astype(np.uint8) * 200,
  }


@pytest.mark.parametrize("name", sorted(_grey_images()))
def test_local_entropy_matches_skimage(name):
  grey = _grey_images()[name]
  want = sk_entropy(grey, disk(metrics.ENTROPY_RADIUS))
  got = np.asarray(metrics.local_entropy(jnp.asarray(grey)))
  np.testing.assert_allclose(got, want, atol=ENTROPY_ATOL)


def test_checkerboard_entropy_is_one_bit_and_flat_is_zero():
  yy, xx = np.mgrid[:40, :40]
  checker = np.where((yy + xx) % 2 == 0, 30, 220)
  ent = np.asarray(metrics.local_entropy(jnp.asarray(checker)))
  r = metrics.ENTROPY_RADIUS
  # Two equally likely levels would be exactly 1 bit; a disk holds k of the centre's parity
  # out of n, so the exact value is the binary entropy h2(k / n).
  footprint = disk(r).astype(bool)
  dy, dx = np.nonzero(footprint)
  n, k = footprint.sum(), np.sum((dy + dx) % 2 == 0)
  h2 = -(k / n) * np.log2(k / n) - (1 - k / n) * np.log2(1 - k / n)
  np.testing.assert_allclose(ent[r:-r, r:-r], h2, atol=ENTROPY_ATOL)
  np.testing.assert_allclose(ent[r:-r, r:-r], 1.0, atol=CHECKER_BITS_TOL)
  flat = np.asarray(metrics.local_entropy(jnp.full((40, 40), 77)))
  np.testing.assert_allclose(flat, 0.0, atol=ENTROPY_ATOL)


@pytest.mark.parametrize("phi", [0.0, 30.0, 90.0, 135.0, 172.0])
def test_ellipse_fit_recovers_drawn_ellipse(phi):
  cx, cy, a, b = 47.3, 50.6, 25.0, 10.0
  mask = _ellipse(cx, cy, a, b, phi)
  ell = metrics.component_ellipses(jnp.asarray(mask), max_components=2)
  ell = {k: np.asarray(v) for k, v in ell.items()}
  assert abs(ell["centre_x"][0] - cx) < CENTRE_TOL_PX
  assert abs(ell["centre_y"][0] - cy) < CENTRE_TOL_PX
  assert abs(ell["height"][0] - 2 * a) < AXIS_TOL_PX
  assert abs(ell["width"][0] - 2 * b) < AXIS_TOL_PX
  # OpenCV RotatedRect convention: 0 = major axis vertical, 90 = horizontal.
  assert _angle_diff(ell["angle"][0], (phi + 90.0) % 180.0) < ANGLE_TOL_DEG
  ecc = np.sqrt(1 - (ell["width"][0] / ell["height"][0]) ** 2)
  np.testing.assert_allclose(ell["eccentricity"][0], ecc, rtol=1e-5)
  assert abs(ell["eccentricity"][0] - np.sqrt(1 - b ** 2 / a ** 2)) < 0.01
  # The second slot is empty: one component only.
  assert ell["area"][1] == 0 and np.isnan(ell["centre_x"][1])

  props = regionprops(mask.astype(int))[0]
  np.testing.assert_allclose(ell["area"][0], props.area, rtol=REGIONPROPS_RTOL)
  np.testing.assert_allclose([ell["centre_y"][0], ell["centre_x"][0]], props.centroid,
                             rtol=REGIONPROPS_RTOL)
  np.testing.assert_allclose(ell["height"][0], props.axis_major_length, rtol=REGIONPROPS_RTOL)
  np.testing.assert_allclose(ell["width"][0], props.axis_minor_length, rtol=REGIONPROPS_RTOL)
  # regionprops' orientation is the major axis from the row axis: angle = 180 - it (mod 180).
  assert _angle_diff(ell["angle"][0], (180.0 - np.degrees(props.orientation)) % 180.0) < 1e-2


# The labelling paths: the backend's own (CPU: scipy through a host callback), the XLA loop
# (accelerators), and the host function itself.
LABELLERS = {"default": metrics.label_components, "xla": metrics.label_components_xla,
             "host": lambda m, c: metrics.label_components_host(np.asarray(m), c)}


@pytest.mark.parametrize("path", sorted(LABELLERS))
@pytest.mark.parametrize("connectivity", [4, 8])
def test_components_match_scipy_label(connectivity, path):
  rng = np.random.default_rng(2)
  mask = scipy.ndimage.gaussian_filter(rng.normal(size=(50, 60)), 1.5) > 0.3
  structure = scipy.ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
  want, n = scipy.ndimage.label(mask, structure)
  got = np.asarray(LABELLERS[path](jnp.asarray(mask), connectivity))
  assert n > 3
  assert np.all((got == mask.size) == ~mask)
  # Same partition: a bijection between scipy's labels and ours on the foreground.
  pairs = set(zip(want[mask].tolist(), got[mask].tolist()))
  assert len(pairs) == n == len(np.unique(got[mask]))
  # The largest components' areas, in order.
  ell = metrics.component_ellipses(jnp.asarray(mask), max_components=3, connectivity=connectivity)
  areas = np.sort(np.bincount(want[mask]))[::-1][:3]
  np.testing.assert_array_equal(np.asarray(ell["area"]), areas)


def _spiral(n: int) -> np.ndarray:
  """[n, n] a one-pixel-wide square spiral (walls 2 px apart): one component whose path
  from end to end is ~n^2 / 2 pixels long, with vertical and horizontal runs."""
  m = np.zeros((n, n), bool)
  y, x, dy, dx, length = n // 2, n // 2, 0, 1, 1
  while True:
    for _ in range(2):
      for _ in range(length):
        if not (0 <= y < n and 0 <= x < n):
          return m
        m[y, x] = True
        y, x = y + dy, x + dx
      dy, dx = dx, -dy
    length += 2


@pytest.mark.parametrize("path", sorted(LABELLERS))
@pytest.mark.parametrize("connectivity", [4, 8])
def test_components_of_long_winding_and_diagonal_shapes_match_scipy(connectivity, path):
  """Components the row runs do not span (a spiral, diagonal chains, nested rings) get the
  labels scipy's do, each the smallest flat index of its component."""
  n = 31
  diag = np.zeros((n, n), bool)
  diag[np.arange(n), np.arange(n)] = True   # 8-connected only
  diag[np.arange(n - 4), np.arange(4, n)] = True
  rings = np.zeros((n, n), bool)
  for r in (3, 7, 11, 15):
    rings[15 - r:16 + r, 15 - r] = rings[15 - r:16 + r, 15 + r] = True
    rings[15 - r, 15 - r:16 + r] = rings[15 + r, 15 - r:16 + r] = True
  structure = scipy.ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
  for mask in (_spiral(n), diag, rings, _spiral(n).T[::-1]):
    want, k = scipy.ndimage.label(mask, structure)
    got = np.asarray(LABELLERS[path](jnp.asarray(mask), connectivity))
    flat = np.arange(mask.size).reshape(mask.shape)
    smallest = {c: flat[want == c].min() for c in range(1, k + 1)}
    np.testing.assert_array_equal(got, np.where(mask, np.vectorize(lambda c: smallest.get(c, 0))(want),
                                                mask.size))


@pytest.mark.parametrize("connectivity", [4, 8])
def test_batched_labels_under_jit_and_vmap_match_each_mask_alone(connectivity):
  """The host path labels a whole vmapped batch in one call (masks mapped over images and
  over a trailing parts axis, as part_metrics does): each mask's labels are its own, the
  XLA loop's, and scipy's partition."""
  rng = np.random.default_rng(5)
  masks = scipy.ndimage.gaussian_filter(rng.normal(size=(3, 40, 50, 4)), (0, 1.5, 1.5, 0)) > 0.3
  per_mask = lambda f: jax.jit(jax.vmap(jax.vmap(lambda m: f(m, connectivity), in_axes=-1)))(jnp.asarray(masks))
  got = np.asarray(per_mask(metrics.label_components))   # [3, 4, 40, 50]
  np.testing.assert_array_equal(got, np.asarray(per_mask(metrics.label_components_xla)))
  structure = scipy.ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
  for i in range(3):
    for p in range(4):
      want, n = scipy.ndimage.label(masks[i, ..., p], structure)
      assert n > 1 and len(set(zip(want.ravel().tolist(), got[i, p].ravel().tolist()))) == n + 1


@pytest.mark.parametrize("sigma, level", [(0.5, 1.0), (2.0, 0.5)])   # many small specks; few blobs
def test_component_moments_host_equal_xla_to_the_bit(sigma, level):
  """The CPU path's moment sums (float64, rounded once) are XLA's float32 segment sums on
  64 x 64 masks, ties of equal area in the same order, empty slots zero; and the ellipses
  component_ellipses returns (the backend's path) are the XLA path's."""
  rng = np.random.default_rng(7)
  masks = scipy.ndimage.gaussian_filter(rng.normal(size=(6, 64, 64, 4)), (0, sigma, sigma, 0)) > level
  per_mask = lambda f: jax.jit(jax.vmap(jax.vmap(f, in_axes=-1)))(jnp.asarray(masks))
  want = np.asarray(per_mask(lambda m: metrics.component_moments_xla(m, 3)))   # [6, 4, 3, 6]
  got = metrics.component_moments_host(np.moveaxis(masks, -1, 1), 3)
  np.testing.assert_array_equal(got, want)
  areas = np.sort([np.bincount(scipy.ndimage.label(masks[0, ..., 0], np.ones((3, 3)))[0].ravel())[1:]])[0][::-1]
  np.testing.assert_array_equal(got[0, 0, :, 0], np.pad(areas[:3], (0, max(0, 3 - areas.size))))
  xla = per_mask(lambda m: _xla_ellipses(m, 3))
  ell = per_mask(lambda m: metrics.component_ellipses(m, 3))
  for k in metrics.ELLIPSE_FIELDS:
    np.testing.assert_array_equal(np.asarray(ell[k]), np.asarray(xla[k]))


def _xla_ellipses(mask, k):
  """component_ellipses through the XLA path whatever the backend."""
  _, _, x0, y0 = metrics._coords(*mask.shape)
  top = metrics.component_moments_xla(mask, k)
  return metrics._ellipse_from_moments(*(top[:, i] for i in range(6)), x0, y0)


def test_two_discs_are_two_components_largest_first():
  mask = _ellipse(20, 20, 8, 8, 0) | _ellipse(65, 70, 15, 12, 40)
  ell = metrics.component_ellipses(jnp.asarray(mask), max_components=3)
  np.testing.assert_allclose(np.asarray(ell["centre_x"][:2]), [65, 20], atol=CENTRE_TOL_PX)
  np.testing.assert_allclose(np.asarray(ell["centre_y"][:2]), [70, 20], atol=CENTRE_TOL_PX)
  assert float(ell["area"][2]) == 0


def test_flat_patch_luminance_colour_and_empty_part():
  rgb = np.array([200.0, 120.0, 40.0])
  levels = np.zeros((32, 32, 3)) + np.array([10.0, 30.0, 250.0])
  patch = np.zeros((32, 32), bool)
  patch[4:20, 10:30] = True
  levels[patch] = rgb
  masks = np.stack([patch, np.zeros_like(patch)], -1).astype(np.float32)
  out = metrics.part_metrics(jnp.asarray(_levels_to_img(levels))[None], jnp.asarray(masks)[None])
  out = {k: np.asarray(v)[0] for k, v in out.items()}
  want_lum = rgb @ np.array(metrics.LUMA_WEIGHTS) / 3.0
  np.testing.assert_allclose(out["luminance"][0], want_lum, rtol=FLAT_RTOL)
  np.testing.assert_allclose([out["colour_r"][0], out["colour_g"][0], out["colour_b"][0]],
                             rgb / 255.0, rtol=FLAT_RTOL)
  assert out["area"][0] == patch.sum()
  np.testing.assert_allclose([out["centre_x"][0], out["centre_y"][0]], [19.5, 11.5], rtol=FLAT_RTOL)
  # Two levels in the image: entropy 0 inside the patch, at most 1 bit anywhere.
  assert out["entropy_min"][0] < ENTROPY_ATOL and out["entropy_max"][0] <= 1.0 + ENTROPY_ATOL
  # The empty part: area 0, everything else undefined.
  assert out["area"][1] == 0
  for k in ("luminance", "entropy_mean", "entropy_max", "centre_x", "ell_centre_x"):
    assert np.all(np.isnan(out[k][1])), k


def test_soft_masks_weight_the_measures():
  rng = np.random.default_rng(3)
  levels = rng.integers(0, 256, (32, 32, 3)).astype(np.float32)
  soft = rng.uniform(size=(32, 32)).astype(np.float32)
  masks = np.stack([soft, 1 - soft], -1)
  out = metrics.part_metrics(jnp.asarray(_levels_to_img(levels))[None], jnp.asarray(masks)[None])
  lum = levels @ np.array(metrics.LUMA_WEIGHTS) / 3.0
  np.testing.assert_allclose(float(out["area"][0, 0]), soft.sum(), rtol=1e-5)
  np.testing.assert_allclose(float(out["luminance"][0, 0]), (lum * soft).sum() / soft.sum(), rtol=1e-5)


def test_part_metrics_batch_equals_single_and_rejects_bad_shapes():
  rng = np.random.default_rng(4)
  imgs = rng.uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
  masks = (scipy.ndimage.gaussian_filter(rng.normal(size=(3, 32, 32, 2)), (0, 2, 2, 0)) > 0)
  masks = masks.astype(np.float32)
  batch = metrics.part_metrics(jnp.asarray(imgs), jnp.asarray(masks))
  one = metrics.part_metrics(jnp.asarray(imgs[1:2]), jnp.asarray(masks[1:2]))
  for k in batch:
    np.testing.assert_allclose(np.asarray(batch[k][1]), np.asarray(one[k][0]), rtol=1e-6, err_msg=k)
  with pytest.raises(ValueError, match="masks"):
    metrics.part_metrics(jnp.asarray(imgs), jnp.asarray(masks[:, :16]))


def test_elongation_and_interior_brightness_against_regionprops_and_a_drawn_rim():
  """elongation = 1 - minor / major axis (regionprops' axis lengths); interior_brightness
  reads the part's eroded mask only (a dark 1 px rim, scipy's binary erosion, is left out);
  log_area = log(pixel count)."""
  mask = _ellipse(47.3, 50.6, 25.0, 10.0, 30.0)
  disk_mask = _ellipse(47.3, 50.6, 20.0, 20.0, 0.0)
  inner = scipy.ndimage.binary_erosion(mask, structure=np.ones((3, 3)), border_value=0)
  img = np.full((SIZE, SIZE, 3), -1.0, np.float32)
  img[mask] = 0.0  # rim: level 127
  img[inner] = 1.0  # interior: level 255
  masks = np.stack([mask, disk_mask], -1).astype(np.float32)
  m = {k: np.asarray(v) for k, v in metrics.image_part_metrics(jnp.asarray(img), jnp.asarray(masks),
                                                               entropy=False).items()}
  props = regionprops(mask.astype(int))[0]
  np.testing.assert_allclose(m["elongation"][0], 1 - props.axis_minor_length / props.axis_major_length,
                             rtol=REGIONPROPS_RTOL)
  assert abs(m["elongation"][0] - (1 - 10.0 / 25.0)) < 0.01
  assert m["elongation"][1] < 0.01  # a disk has no axis
  np.testing.assert_allclose(m["interior_brightness"][0], 1.0, rtol=FLAT_RTOL)
  np.testing.assert_allclose(m["log_area"], np.log(masks.sum((0, 1))), rtol=FLAT_RTOL)
  want_whole = (127 * (mask.sum() - inner.sum()) + 255 * inner.sum()) / mask.sum() / 255
  np.testing.assert_allclose(m["brightness"][0], want_whole, rtol=FLAT_RTOL)


def test_channel_contrast_reads_the_least_saturated_channel_of_the_interior():
  """channel_contrast = std / mean of the levels of the channel with the fewest 0 / 255 pixels
  over the eroded mask (scipy's binary erosion); a channel that clips at the stripes' peaks
  flattens the brightness's contrast but not this one."""
  mask = _ellipse(47.3, 50.6, 30.0, 18.0, 10.0)
  inner = scipy.ndimage.binary_erosion(mask, structure=np.ones((3, 3)), border_value=0)
  xx = np.mgrid[:SIZE, :SIZE][1]
  stripes = 1.0 + 0.4 * np.sin(xx / 3.0)  # multiplicative texture
  levels = np.zeros((SIZE, SIZE, 3))
  levels[..., 0] = np.clip(np.floor(230.0 * stripes), 0, 255)  # clips at the peaks
  levels[..., 1] = np.floor(120.0 * stripes)  # never clips
  levels[..., 2] = np.floor(60.0 * stripes)  # never clips, darker
  levels[~mask] = 255.0  # a saturated rim outside the part
  masks = np.stack([mask, np.zeros_like(mask)], -1).astype(np.float32)
  m = {k: np.asarray(v) for k, v in metrics.image_part_metrics(jnp.asarray(_levels_to_img(levels)),
                                                               jnp.asarray(masks), entropy=False).items()}
  g = levels[..., 1][inner]
  np.testing.assert_allclose(m["channel_contrast"][0], g.std() / g.mean(), rtol=REGIONPROPS_RTOL)
  bright = levels.mean(-1)[inner]
  # The red channel is 255 on 42% of the interior: the brightness's contrast is 0.246 against
  # the unclipped channels' 0.286.
  assert m["contrast"][0] < CLIPPED_CONTRAST_RATIO * m["channel_contrast"][0]
  np.testing.assert_allclose(m["contrast"][0], bright.std() / bright.mean(), rtol=REGIONPROPS_RTOL)
  assert np.isnan(m["channel_contrast"][1])  # an empty part
