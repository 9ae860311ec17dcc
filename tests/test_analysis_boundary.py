"""Decision-boundary math: bisection against constructed classifiers, pair statistics, validation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lis_jax.analysis import boundary
from lis_jax.quantify import selectivity

N_GRID, N_ITER = 5, 12
WIDTH = (1.0 / (N_GRID - 1)) / 2 ** N_ITER  # the bracket every crossing is known to
PARTS = ("body", "top")
METRICS = selectivity.CONCEPT_METRICS


def _piecewise(a, b, origin, other, target):
  """A classifier along the path: origin below t = a, `other` on [a, b), target from b on."""
  def predict(t, rows):
    return jnp.where(t < a[rows], origin[rows], jnp.where(t < b[rows], other[rows], target[rows]))
  return predict


def test_bisection_finds_the_constructed_crossings():
  a = jnp.array([0.3, 0.1234567, 0.0, 0.6, 0.25])
  b = jnp.array([0.55, 0.1234567, 0.4, 2.0, 0.25])   # search 3 never reaches the target
  origin = jnp.array([0, 1, 2, 3, 4])
  other = jnp.array([5, 5, 5, 5, 5])
  target = jnp.array([6, 6, 6, 6, 6])
  res = jax.jit(lambda o, t: boundary.crossings(_piecewise(a, b, origin, other, target), o, t,
                                               n_grid=N_GRID, n_iter=N_ITER))(origin, target)
  t_leave, t_reach = np.asarray(res["t_leave"]), np.asarray(res["t_reach"])
  # The first t known to satisfy the condition, at most one bracket width past the truth.
  for got, want in ((t_leave, a), (t_reach, b)):
    ok = np.asarray(want) <= 1
    assert np.all(got[ok] >= np.asarray(want)[ok])
    assert np.all(got[ok] - np.asarray(want)[ok] <= WIDTH)
  assert t_leave[2] == 0.0  # already off the origin class at t = 0: nothing to bisect
  assert t_leave[4] == 0.25 and t_reach[4] == 0.25  # a crossing on a grid point is found exactly
  assert np.isnan(t_reach[3]) and not bool(res["reach_found"][3])
  assert np.all(np.asarray(res["leave_found"]))
  np.testing.assert_array_equal(np.asarray(res["pred_grid"])[0], [0, 0, 5, 6, 6])  # t = 0, .25, .5, .75, 1


def test_crossing_of_a_linear_classifier_on_the_linked_path():
  """Linear link, linear two-class classifier on w: the logit margin is linear in t (closed form)."""
  rng = np.random.default_rng(0)
  d, w_dim, b_n = 6, 4, 8
  A, bias = rng.normal(size=(d, w_dim)), rng.normal(size=w_dim)
  link = lambda r: r @ A + bias
  r = jnp.asarray(rng.uniform(5, 6, size=(b_n, d)))
  shift = jnp.asarray(rng.uniform(-4, 4, size=(b_n, d)))  # r - t shift > 0: relu inactive on the path
  c = rng.normal(size=w_dim)  # margin (class 1 - class 0 logit) = w . c + offset[search]
  margin = lambda t: np.asarray(boundary.path_w(link, r, shift, jnp.full(b_n, t))) @ c
  m0, m1 = margin(0.0), margin(1.0) - margin(0.0)
  t_star = np.concatenate([rng.uniform(0.05, 0.95, b_n - 2), [1.5, -0.5]])  # the last two never cross
  offset = jnp.asarray(-(m0 + t_star * m1))  # margin(t) = m1 (t - t_star)
  origin = np.where(m1 > 0, 0, 1)  # margin < 0 before t_star: class 0 when m1 > 0
  predict = lambda t, rows: (boundary.path_w(link, r[rows], shift[rows], t) @ c + offset[rows] > 0).astype(jnp.int32)
  res = boundary.crossings(predict, jnp.asarray(origin), jnp.asarray(1 - origin), n_grid=N_GRID, n_iter=N_ITER)
  got = np.asarray(res["t_reach"])
  inside = slice(0, b_n - 2)
  assert np.all(np.abs(got[inside] - t_star[inside]) <= WIDTH + 1e-5)  # + float32 margin round-off
  np.testing.assert_array_equal(np.asarray(res["t_leave"])[inside], got[inside])  # two classes
  assert np.isnan(got[-2])  # never reached
  assert np.asarray(res["t_leave"])[-1] == 0.0 and got[-1] == 0.0  # already the target at t = 0


def test_path_points_and_crossing_t():
  t_leave, t_reach = np.array([0.2, 0.3, np.nan]), np.array([0.4, np.nan, np.nan])
  np.testing.assert_array_equal(boundary.crossing_t(t_leave, t_reach), [0.4, 0.3, 1.0])
  pts = boundary.path_points(t_leave, t_reach, 3)
  np.testing.assert_array_equal(pts, [[0, 0.5, 1, 0.2, 0.4], [0, 0.5, 1, 0.3, 0.3], [0, 0.5, 1, 1, 1]])


def test_null_paths_have_the_same_length_and_do_not_depend_on_batching():
  rng = np.random.default_rng(1)
  start, end = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
  key = jax.random.PRNGKey(3)
  ids = np.arange(10, 16)
  ends = boundary.null_ends(start, end, key, ids, draws=3)
  np.testing.assert_allclose(np.linalg.norm(ends - start[:, None], axis=-1),
                             np.repeat(np.linalg.norm(end - start, axis=-1)[:, None], 3, 1), rtol=1e-5)
  np.testing.assert_allclose(boundary.null_ends(start[2:4], end[2:4], key, ids[2:4], 3), ends[2:4], rtol=1e-6)


def _planted_searches(rng, n_per=10):
  """Two pairs; pair (0, 1) moves body area, pair (1, 0) moves top luminance; null is noise."""
  origin = np.repeat([0, 1], n_per)
  target = 1 - origin
  deltas = rng.normal(0, 0.1, size=(2 * n_per, len(PARTS), len(METRICS)))
  null = rng.normal(0, 0.1, size=(2 * n_per, 16, len(PARTS), len(METRICS)))  # 16 null paths each
  area, lum = METRICS.index("area"), METRICS.index("luminance")
  deltas[:n_per, 0, area] += 1.0
  deltas[n_per:, 1, lum] -= 0.5
  return origin, target, deltas, null


def test_pair_statistics_rank_the_planted_concepts():
  origin, target, deltas, null = _planted_searches(np.random.default_rng(2))
  pairs, stats = boundary.pair_statistics(deltas, null, origin, target, seed=0, n_boot=300)
  assert pairs == [(0, 1), (1, 0)]
  top = boundary.top_concepts(stats, PARTS, METRICS, k=2)
  assert (top[0][0]["part"], top[0][0]["metric"]) == ("body", "area") and top[0][0]["selective"]
  assert (top[1][0]["part"], top[1][0]["metric"]) == ("top", "luminance") and top[1][0]["mean"] < 0
  assert top[0][0]["ci_low"] <= 1.0 <= top[0][0]["ci_high"] + 0.1


def test_validation_against_planted_truth():
  origin, target, deltas, null = _planted_searches(np.random.default_rng(3))
  _, stats = boundary.pair_statistics(deltas, null, origin, target, seed=0, n_boot=300)
  factor_concepts = {"scale": ("body", "area"), "top_lum": ("top", "luminance"),
                     "pos_x": ("body", "centre_x"), "body_lum": ("body", "luminance")}
  n = origin.size
  # The truth: pair (0, 1) changes scale, pair (1, 0) top_lum; the rest barely move.
  truth = {"scale": np.where(origin == 0, 0.3, 0.0), "top_lum": np.where(origin == 1, -0.2, 0.0),
           "pos_x": np.full(n, 0.01), "body_lum": np.full(n, 0.02)}
  res = boundary.validate(stats, truth, origin, target, list(PARTS), list(METRICS), factor_concepts)
  assert res["share_right_top"] == 1.0 and res["chance"] == 0.25
  assert [p["top_true"] for p in res["per_pair"]] == ["scale", "top_lum"]
  # A wrong truth map (swap the concepts) gets no pair right.
  swapped = {"scale": ("top", "luminance"), "top_lum": ("body", "area"),
             "pos_x": ("body", "centre_x"), "body_lum": ("body", "luminance")}
  assert boundary.validate(stats, truth, origin, target, list(PARTS), list(METRICS), swapped)["share_right_top"] == 0.0


def test_factor_changes_wrap_hues():
  d = boundary.factor_changes({"hue": np.array([0.9]), "x": np.array([0.0])},
                              {"hue": np.array([0.1]), "x": np.array([0.5])},
                              {"hue": (0.0, 1.0), "x": (-1.0, 1.0)}, circular=("hue",))
  assert d["hue"][0] == pytest.approx(0.2) and d["x"][0] == pytest.approx(0.25)


def test_shifted_unit_relation():
  top_units = np.array([[1, 2], [2, 3], [4, 5], [4, 6]])
  origin, target = np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0])
  pair_top = [[{"part": "body", "metric": "area"}], [{"part": "top", "metric": "luminance"}]]
  sel = {1: {("body", "area")}, 2: set(), 3: {("body", "area")}, 4: {("top", "luminance")},
         5: set(), 6: {("top", "luminance"), ("body", "area")}, 7: set()}
  res = boundary.shifted_unit_relation(top_units, origin, target, pair_top, sel)
  assert [p["units"] for p in res["per_pair"]] == [[1, 2, 3], [4, 5, 6]]
  assert [p["selective_share"] for p in res["per_pair"]] == pytest.approx([2 / 3, 2 / 3])
  assert res["baseline"] == pytest.approx(np.mean([3 / 7, 2 / 7]))


def test_first_copies_marks_repeated_points():
  t = np.array([[0.0, 1.0, 0.3, 0.3], [0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.2, 0.4]])
  np.testing.assert_array_equal(boundary.first_copies(t), [[0, 1, 2, 2], [0, 1, 1, 1], [0, 1, 2, 3]])


def test_validation_on_the_null_paths_scale_and_fidelity():
  """The truth is put on the effect's scale (the null paths' RMS of the true change), and a
  factor whose concept does not follow it on the null paths is left out."""
  rng = np.random.default_rng(4)
  origin, target, deltas, null = _planted_searches(rng)
  _, stats = boundary.pair_statistics(deltas, null, origin, target, seed=0, n_boot=100)
  b, r = null.shape[:2]
  p_area, p_lum = (PARTS.index("body"), METRICS.index("area")), (PARTS.index("top"), METRICS.index("luminance"))
  # The null paths' true changes: scale follows body area exactly; top_lum is pure noise
  # against top luminance (its concept does not measure it on random paths).
  null_truth = {"scale": null[:, :, p_area[0], p_area[1]] * 0.5,
                "top_lum": rng.normal(size=(b, r)) * 0.1}
  fc = {"scale": ("body", "area"), "top_lum": ("top", "luminance")}
  fid = boundary.concept_fidelity(null, null_truth, list(PARTS), list(METRICS), fc)
  assert fid["scale"] == pytest.approx(1.0) and abs(fid["top_lum"]) < 0.2
  truth = {"scale": np.where(origin == 0, 0.3, 0.0), "top_lum": np.where(origin == 1, -0.2, 0.0)}
  res = boundary.validate(stats, truth, origin, target, list(PARTS), list(METRICS), fc,
                          null_truth=null_truth, null_deltas=null)
  assert res["left_out"] == ["top_lum"] and res["factors"] == ["scale"] and res["chance"] == 1.0
  # Without the measured null paths nothing is left out; the scale is still the null's.
  res = boundary.validate(stats, truth, origin, target, list(PARTS), list(METRICS), fc, null_truth=null_truth)
  assert res["left_out"] == [] and res["truth_scale"] == "null paths"
  # Dividing by the null RMS reorders factors whose random paths move them unequally: the
  # raw truth (0.3 vs 0.2 of range) favours scale, but scale's null paths move it 10x as far.
  big = {"scale": null_truth["scale"] * 0 + 3.0, "top_lum": null_truth["top_lum"] * 0 + 0.1}
  const = {"scale": np.full(origin.size, 0.3), "top_lum": np.full(origin.size, 0.2)}
  fc2 = {**fc, "pos_x": ("body", "centre_x")}
  const["pos_x"] = np.full(origin.size, 0.0)
  big["pos_x"] = np.full((b, r), 1.0)
  raw = boundary.validate(stats, const, origin, target, list(PARTS), list(METRICS), fc2)
  scaled = boundary.validate(stats, const, origin, target, list(PARTS), list(METRICS), fc2, null_truth=big)
  assert all(p["top_true"] == "scale" for p in raw["per_pair"])
  assert all(p["top_true"] == "top_lum" for p in scaled["per_pair"])


def test_validation_admits_a_factor_whose_concept_is_more_than_half_its_variance():
  """The fidelity bar is R^2 = 1/2 (r = sqrt(1/2)): planted true changes t = x + e on the null
  paths, with var(e) = k var(x), have r = 1 / sqrt(1 + k) with the concept x (closed form):
  k = 0.5 (r 0.816) is compared, k = 1.5 (r 0.632, the earlier bar 0.5 admitted it) is left out."""
  rng = np.random.default_rng(5)
  origin, target, deltas, null = _planted_searches(rng, n_per=40)
  _, stats = boundary.pair_statistics(deltas, null, origin, target, seed=0, n_boot=100)
  p_area, p_lum = (PARTS.index("body"), METRICS.index("area")), (PARTS.index("top"), METRICS.index("luminance"))
  x_area, x_lum = null[:, :, p_area[0], p_area[1]], null[:, :, p_lum[0], p_lum[1]]
  null_truth = {"scale": x_area + rng.normal(size=x_area.shape) * 0.1 * 0.5 ** 0.5,
                "top_lum": x_lum + rng.normal(size=x_lum.shape) * 0.1 * 1.5 ** 0.5}
  fc = {"scale": ("body", "area"), "top_lum": ("top", "luminance")}
  fid = boundary.concept_fidelity(null, null_truth, list(PARTS), list(METRICS), fc)
  # 1280 paths each: the sampling sd of r is about (1 - r^2) / sqrt(1280) < 0.02
  assert fid["scale"] == pytest.approx(1 / 1.5 ** 0.5, abs=0.05)
  assert fid["top_lum"] == pytest.approx(1 / 2.5 ** 0.5, abs=0.05)
  truth = {"scale": np.where(origin == 0, 0.3, 0.0), "top_lum": np.where(origin == 1, -0.2, 0.0)}
  res = boundary.validate(stats, truth, origin, target, list(PARTS), list(METRICS), fc,
                          null_truth=null_truth, null_deltas=null)
  assert boundary.MIN_FIDELITY == pytest.approx(0.5 ** 0.5)
  assert res["factors"] == ["scale"] and res["left_out"] == ["top_lum"]
  old = boundary.validate(stats, truth, origin, target, list(PARTS), list(METRICS), fc,
                          null_truth=null_truth, null_deltas=null, min_fidelity=0.5)
  assert old["factors"] == ["scale", "top_lum"] and old["left_out"] == []
