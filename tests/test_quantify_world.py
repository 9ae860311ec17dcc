"""Part metrics against the built-in world's known factors (true masks): the facts the
selectivity diagnosis rests on (benchmarks/selectivity_results.md). Each test changes one
factor of rendered images (one z coordinate, psi = 1, so no other factor moves) and
compares the metric's change with the factor's."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lis_jax import generators
from lis_jax.generators import shapes
from lis_jax.quantify import metrics

N = 8  # images, one per class
BODY, TOP, OBJECT = 0, 1, 3  # part columns: body, top, extra, object
# A hue-only change: the world's colours are luminance + a chroma wave whose three RGB
# components sum to 0, so the mean RGB moves only by 8-bit rounding (and rare clipping).
HUE_BRIGHTNESS_TOL = 0.005
# The reference's Rec. 601 luminance (/ 85) moves with hue by up to CHROMA * 0.41 = 0.12;
# over these images its mean |change| is several times this.
HUE_LUMA_MIN_MEAN = 0.05
# Contrast (std / mean brightness) barely moves with the part's luminance (8-bit levels,
# clipping of the stripes' peaks); the reference's entropy moves by tenths of a bit.
LUM_CONTRAST_TOL = 0.04
# The contrast of the least-saturated channel (channel_contrast) does not lose the stripes'
# clipped peaks: its largest |change| with body_lum here is 0.003 (8-bit levels) against the
# brightness contrast's 0.033.
LUM_CHANNEL_CONTRAST_TOL = 0.01
# The object's size from its parts' spread (selectivity.part_spread, twice the log ratio):
# over these 8 images its mean change with scale is 0.215 against 2 log(scale ratio) 0.226
# (single images are off by up to 0.08: the centres of parts a few pixels apart at 64 px);
# a body or top width change moves it by a mean 0.015 / 0.011 against the object log
# area's 0.085 / 0.064.
SPREAD_SCALE_MEAN_TOL = 0.03
SPREAD_WIDTH_RATIO = 0.3
LUM_ENTROPY_MIN_MAX = 0.3
# A background luminance change reaches a part's mean brightness through its edge pixels;
# over the interior the mean |change| is 0.35 of the whole part's (measured here: 0.0058 vs
# 0.0165; thin parts, where erosion leaves nothing, fall back to the whole mask).
BG_INTERIOR_RATIO = 0.5
# Object area vs scale^2: pixelisation of the outline at 64 px.
AREA_RTOL = 0.04
# Object centre vs position: a pure translation, up to pixelisation.
CENTRE_TOL_PX = 0.5
# Whole-object orientation vs rotation: objects are not exact ellipses, so part shapes
# shift the moment axis a little as the pixel grid turns under them.
ANGLE_TOL_DEG = 3.0


@pytest.fixture(scope="module")
def world():
  return generators.load("shapes")


def _one_factor_change(G, name, delta=1.5):
  """Metrics (true masks + object) and factors of N images before and after a z step in `name`."""
  rng = np.random.default_rng(0)
  base = rng.normal(size=(N, G.z_dim)).astype(np.float32) * 0.5
  after = base.copy()
  after[:, shapes.FACTOR_NAMES.index(name)] += delta
  cls = np.tile(np.arange(N) % G.num_classes, 2)
  ws = G.mapping(jnp.asarray(np.concatenate([base, after])), jnp.asarray(cls), psi=1.0)
  factors, _ = G.decode_factors(ws)
  true = G.ground_truth(ws)["masks"]
  masks = metrics.with_object(jax.nn.one_hot(jnp.argmax(true, -1), true.shape[-1])[..., 1:])
  m = metrics.part_metrics(G.synthesis(ws), masks, max_components=1)
  m = {k: np.asarray(v) for k, v in m.items()}
  before = {k: v[:N] for k, v in m.items()}
  later = {k: v[N:] for k, v in m.items()}
  f = {k: (np.asarray(v[:N]), np.asarray(v[N:])) for k, v in factors.items()}
  return before, later, f


def test_brightness_ignores_hue_where_the_reference_luminance_does_not(world):
  before, after, _ = _one_factor_change(world, "body_hue")
  d_bright = after["brightness"][:, BODY] - before["brightness"][:, BODY]
  d_luma = (after["luminance"][:, BODY] - before["luminance"][:, BODY]) / metrics.MAX_LUMINANCE
  assert np.max(np.abs(d_bright)) < HUE_BRIGHTNESS_TOL
  assert np.mean(np.abs(d_luma)) > HUE_LUMA_MIN_MEAN


def test_brightness_follows_the_luminance_factor(world):
  before, after, f = _one_factor_change(world, "top_lum")
  d_bright = after["brightness"][:, TOP] - before["brightness"][:, TOP]
  d_lum = f["top_lum"][1] - f["top_lum"][0]
  assert np.all(d_bright > 0) and np.corrcoef(d_bright, d_lum)[0, 1] > 0.9


def test_contrast_follows_stripes_and_ignores_luminance(world):
  before, after, _ = _one_factor_change(world, "stripe_contrast")
  assert np.all(after["contrast"][:, BODY] > before["contrast"][:, BODY])
  before, after, _ = _one_factor_change(world, "body_lum")
  assert np.max(np.abs(after["contrast"][:, BODY] - before["contrast"][:, BODY])) < LUM_CONTRAST_TOL
  # The reference's texture measure, local entropy, moves with the luminance alone.
  d_ent = after["entropy_mean"][:, BODY] - before["entropy_mean"][:, BODY]
  assert np.max(np.abs(d_ent)) > LUM_ENTROPY_MIN_MAX


def test_object_area_scales_with_scale_squared(world):
  before, after, f = _one_factor_change(world, "scale")
  want = (f["scale"][1] / f["scale"][0]) ** 2
  np.testing.assert_allclose(after["area"][:, OBJECT] / before["area"][:, OBJECT], want, rtol=AREA_RTOL)


def test_object_centre_moves_with_position(world):
  before, after, f = _one_factor_change(world, "pos_x")
  px_per_unit = world.resolution / 2  # positions are in image half-widths
  want = (f["pos_x"][1] - f["pos_x"][0]) * px_per_unit
  np.testing.assert_allclose(after["centre_x"][:, OBJECT] - before["centre_x"][:, OBJECT], want,
                             atol=CENTRE_TOL_PX)


def test_object_angle_turns_with_rotation(world):
  before, after, f = _one_factor_change(world, "rotation")
  want = np.degrees(f["rotation"][1] - f["rotation"][0])
  got = (after["angle"][:, OBJECT] - before["angle"][:, OBJECT] + 90.0) % 180.0 - 90.0
  np.testing.assert_allclose(got, want, atol=ANGLE_TOL_DEG)


def test_interior_brightness_ignores_the_background_where_the_whole_part_does_not(world):
  before, after, _ = _one_factor_change(world, "bg_lum")
  d_in = np.abs(after["interior_brightness"][:, :3] - before["interior_brightness"][:, :3])
  d_whole = np.abs(after["brightness"][:, :3] - before["brightness"][:, :3])
  assert np.nanmean(d_in) < BG_INTERIOR_RATIO * np.nanmean(d_whole)


def test_channel_contrast_follows_stripes_and_not_the_clipping_of_bright_parts(world):
  before, after, _ = _one_factor_change(world, "stripe_contrast")
  assert np.all(after["channel_contrast"][:, BODY] > before["channel_contrast"][:, BODY])
  before, after, _ = _one_factor_change(world, "body_lum")
  d_chan = np.abs(after["channel_contrast"][:, BODY] - before["channel_contrast"][:, BODY])
  d_bright = np.abs(after["contrast"][:, BODY] - before["contrast"][:, BODY])
  assert np.max(d_chan) < LUM_CHANNEL_CONTRAST_TOL < np.max(d_bright)


def test_object_size_from_the_parts_spread_follows_scale_and_not_the_parts_widths(world):
  from lis_jax.quantify import selectivity

  def size_change(before, after):
    sp = [selectivity.part_spread(m["centre_x"], m["centre_y"])[:, OBJECT] for m in (before, after)]
    return 2.0 * np.log(sp[1] / sp[0])

  before, after, f = _one_factor_change(world, "scale")
  want = 2.0 * np.log(f["scale"][1] / f["scale"][0])
  assert abs(np.mean(size_change(before, after)) - np.mean(want)) < SPREAD_SCALE_MEAN_TOL
  for name in ("body_width", "top_width"):
    before, after, _ = _one_factor_change(world, name)
    d_area = np.abs(after["log_area"][:, OBJECT] - before["log_area"][:, OBJECT])
    assert np.mean(np.abs(size_change(before, after))) < SPREAD_WIDTH_RATIO * np.mean(d_area), name
