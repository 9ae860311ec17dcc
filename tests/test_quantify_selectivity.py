"""Selectivity statistics on synthetic data with known answers."""
import warnings

import numpy as np
import pytest

from lis_jax.quantify import metrics, selectivity

M = len(selectivity.CONCEPT_METRICS)
AREA = selectivity.CONCEPT_METRICS.index("area")
# 400 replications of a nominal 95% interval: the binomial sd of the coverage is 1.1%,
# and the percentile bootstrap under-covers a little at S = 30 (about 93-94%).
COVERAGE_RANGE = (0.89, 0.99)
# Fraction of null concepts flagged selective at alpha = 0.05 (binomial sd ~1% over 500).
FALSE_POSITIVE_MAX = 0.08


def test_sweep_changes_normalise_like_the_reference():
  names = list(selectivity.CONCEPT_SOURCES)
  first = np.zeros((2, len(names)))
  last = np.zeros((2, len(names)))
  first[:, names.index("area")] = [200.0, 0.0]
  last[:, names.index("area")] = [300.0, 50.0]
  first[:, names.index("luminance")] = 10.0
  last[:, names.index("luminance")] = 10.0 + metrics.MAX_LUMINANCE / 2
  first[:, names.index("angle")] = [170.0, 10.0]
  last[:, names.index("angle")] = [10.0, 170.0]
  first[:, names.index("centre_x")], last[:, names.index("centre_x")] = 5.0, 8.0
  first[:, names.index("centre_y")], last[:, names.index("centre_y")] = 1.0, 5.0
  d = selectivity.sweep_changes(first, last)
  assert d.shape == (2, M)
  np.testing.assert_allclose(d[:, AREA], [0.5, 50.0])  # relative; first = 0 divides by 1
  np.testing.assert_allclose(d[:, names.index("luminance")], 0.5)
  np.testing.assert_allclose(d[:, names.index("angle")], [20.0, -20.0])  # wrapped mod 180
  np.testing.assert_allclose(d[:, selectivity.CONCEPT_METRICS.index("motion")], 5.0)


def test_calibrated_angle_change_is_weighted_by_the_first_steps_elongation():
  src = selectivity.concept_sources("calibrated")
  names = list(src)
  first = np.zeros((3, len(names)))
  last = np.zeros((3, len(names)))
  first[:, names.index("angle")] = [170.0, 10.0, 40.0]
  last[:, names.index("angle")] = [10.0, 170.0, 70.0]
  first[:, names.index(selectivity.ANGLE_WEIGHT)] = [0.5, 1.0, 0.0]  # a disk (0) has no axis
  last[:, names.index(selectivity.ANGLE_WEIGHT)] = 0.9  # the first step's weight is used
  first[:, names.index("luminance")], last[:, names.index("luminance")] = 0.2, 0.5  # interior brightness: 0..1
  first[:, names.index("area")], last[:, names.index("area")] = np.log(200.0), np.log([400.0, 100.0, 200.0])
  # the last part is the object: its area change is twice the log ratio of its parts' spread
  first[:, names.index(selectivity.OBJECT_SIZE)], last[:, names.index(selectivity.OBJECT_SIZE)] = 10.0, 20.0
  d = selectivity.sweep_changes(first, last, src)
  assert d.shape == (3, M)  # the weight and the spread are not concepts
  np.testing.assert_allclose(d[:, selectivity.CONCEPT_METRICS.index("angle")], [10.0, -20.0, 0.0])
  np.testing.assert_allclose(d[:, selectivity.CONCEPT_METRICS.index("luminance")], 0.3)
  np.testing.assert_allclose(d[:, AREA], [np.log(2), -np.log(2), 2 * np.log(2)])  # doubling and halving: equal size


def test_part_spread_is_the_rms_distance_of_the_present_parts_centres_in_the_objects_column():
  nan = np.nan
  cx = np.array([[0.0, 6.0, nan, 3.0], [0.0, 6.0, 0.0, 2.0], [1.0, nan, nan, 1.0]])  # last column: the object
  cy = np.array([[0.0, 8.0, nan, 4.0], [0.0, 0.0, 6.0, 2.0], [1.0, nan, nan, 1.0]])
  sp = selectivity.part_spread(cx, cy)
  assert np.all(np.isnan(sp[:, :-1]))
  pts = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
  want = np.sqrt(np.mean(np.sum((pts - pts.mean(0)) ** 2, 1)))
  np.testing.assert_allclose(sp[:, -1], [5.0, want, nan])  # two parts 10 px apart; three; one part: undefined
  m = {k: np.zeros_like(cx) for k in metrics.SCALAR_METRICS}
  m.update(centre_x=cx, centre_y=cy, **{f"ell_{k}": np.zeros(cx.shape + (1,)) for k in metrics.ELLIPSE_FIELDS})
  src = selectivity.concept_sources("calibrated")
  v = selectivity.concept_values(m, src)
  np.testing.assert_allclose(v[..., list(src).index(selectivity.OBJECT_SIZE)], sp)


def test_bootstrap_interval_covers_the_true_mean():
  rng = np.random.default_rng(0)
  true_mean, reps, s = 1.3, 400, 30
  x = rng.normal(true_mean, 2.0, size=(s, reps))  # reps independent data sets side by side
  mean, lo, hi = selectivity.bootstrap_ci(x, rng=np.random.default_rng(1), n_boot=1000)
  np.testing.assert_allclose(mean, x.mean(0))
  coverage = np.mean((lo <= true_mean) & (true_mean <= hi))
  assert COVERAGE_RANGE[0] <= coverage <= COVERAGE_RANGE[1], coverage
  # Interval width ~ 2 * 1.96 * sd / sqrt(S) (normal theory) within 15%.
  np.testing.assert_allclose(np.mean(hi - lo), 2 * 1.96 * 2.0 / np.sqrt(s), rtol=0.15)


def test_bootstrap_ignores_missing_samples():
  x = np.array([[1.0, np.nan], [3.0, np.nan], [np.nan, np.nan], [5.0, 2.0]])
  mean, lo, hi = selectivity.bootstrap_ci(x, rng=np.random.default_rng(0), n_boot=200)
  np.testing.assert_allclose(mean, [3.0, 2.0])
  assert 1.0 <= lo[0] <= hi[0] <= 5.0 and lo[1] == hi[1] == 2.0


def test_null_pvalue_is_uniform_under_the_null_and_small_for_a_shift():
  rng = np.random.default_rng(2)
  s, draws, n = 20, 3, 300
  null = rng.normal(size=(s * draws, n))
  obs = rng.normal(size=(s, n)).mean(0)
  p = selectivity.null_pvalue(obs, null, s, rng=np.random.default_rng(3), n_boot=500)
  assert 0.02 <= np.mean(p < 0.05) <= 0.09  # about alpha under the null
  p_shift = selectivity.null_pvalue(obs + 1.5, null, s, rng=np.random.default_rng(3), n_boot=500)
  assert np.all(p_shift < 0.01)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_planted_selective_unit_ranks_first(sign):
  rng = np.random.default_rng(4)
  u, s, p, draws = 12, 16, 3, 2
  deltas = rng.normal(size=(u, s, p, M))
  null = rng.normal(size=(u, s * draws, p, M))
  planted_unit, planted_part = 7, 1
  deltas[planted_unit, :, planted_part, AREA] += sign * 1.5
  stats = selectivity.unit_statistics(deltas, null, seed=0, n_boot=500)
  assert stats["rank"][planted_unit, planted_part, AREA] == 1
  assert stats["selective"][planted_unit, planted_part, AREA]
  assert np.sign(stats["effect"][planted_unit, planted_part, AREA]) == sign
  others = np.ones((u, p, M), bool)
  others[planted_unit, planted_part, AREA] = False
  assert np.mean(stats["selective"][others]) < FALSE_POSITIVE_MAX
  # Ranks are a permutation of 1..U for every concept.
  np.testing.assert_array_equal(np.sort(stats["rank"], axis=0)[:, 0, 0], np.arange(1, u + 1))

  rows = selectivity.table_rows(stats, units=np.arange(100, 100 + u), part_names=["bg", "cap", "stem"])
  assert len(rows) == u * p * M
  top = selectivity.top_units(rows, k=3)
  assert top[("cap", "area")][0]["unit"] == 100 + planted_unit


def test_write_csv_round_trip(tmp_path):
  rows = [{"unit": 1, "part": "cap", "metric": "area", "mean": 0.25, "selective": True}]
  path = tmp_path / "t.csv"
  selectivity.write_csv(str(path), rows, ["unit", "part", "metric", "mean", "selective"])
  assert path.read_text().splitlines() == ["unit,part,metric,mean,selective", "1,cap,area,0.25,True"]


# ----------------------------------------------------------------------------- the built-in world

ALPHA = 0.05
# Random directions of the null. Given one null draw, a sweep's chance to beat it is
# Beta(6, 114)-distributed per concept (mean alpha, sd 0.02); with 60 random sweeps the
# rate over all concepts fell in 0.039-0.055 for three seeds of the directions.
NULL_DRAWS = 119
FAKE_SWEEPS = 60  # random-direction "units" the false-positive rate is measured on
START_SAMPLES = 4
# Sweep lengths in w like the demo's units (their |w_last - w_first| spans 3.2-10.1).
SWEEP_LENGTHS = (3.5, 5.0, 6.5, 8.0)


def _world_changes(G, w_start, ends, sources):
  """Concept changes from w_start [S, w_dim] to ends [D, S, w_dim] with the world's true masks."""
  import jax
  import jax.numpy as jnp

  from lis_jax import generators

  w = np.concatenate([w_start, ends.reshape(-1, w_start.shape[-1])])
  ws = generators.broadcast_ws(jnp.asarray(w), G.num_ws)
  true = G.ground_truth(ws)["masks"]
  masks = metrics.with_object(jax.nn.one_hot(jnp.argmax(true, -1), true.shape[-1])[..., 1:])
  m = metrics.part_metrics(G.synthesis(ws), masks, max_components=1, entropy=False)
  v = selectivity.concept_values({k: np.asarray(x) for k, x in m.items()}, sources)
  s = w_start.shape[0]
  end = v[s:].reshape(ends.shape[0], s, *v.shape[1:])
  return selectivity.sweep_changes(np.broadcast_to(v[:s], end.shape).copy(), end, sources)


def test_selective_fires_at_about_alpha_on_random_direction_sweeps():
  """Sweeps along random directions (one direction for all start samples, as a unit's sweep
  is) are flagged at a rate within [alpha / 2, 2 alpha] by the shared-direction null, and
  far above it by the old null that drew one direction per start sample."""
  import jax

  from lis_jax import generators
  from lis_jax.quantify import segment

  G = generators.load("shapes")
  key = jax.random.PRNGKey(11)
  w_start = np.asarray(segment.sample_ws(G, np.arange(G.num_classes), START_SAMPLES, 0.7, key)[:, 0])
  rng = np.random.default_rng(12)
  n = NULL_DRAWS + FAKE_SWEEPS
  d = rng.normal(size=(n, G.w_dim))
  d /= np.linalg.norm(d, axis=-1, keepdims=True)
  length = rng.choice(SWEEP_LENGTHS, n)
  ends = (w_start[None] + length[:, None, None] * d[:, None]).astype(np.float32)
  changes = _world_changes(G, w_start, ends, selectivity.concept_sources("calibrated"))
  null, fake = changes[:NULL_DRAWS], changes[NULL_DRAWS:]
  st = selectivity.shared_null_statistics(fake, length[NULL_DRAWS:], null, length[:NULL_DRAWS],
                                          seed=0, n_boot=200, alpha=ALPHA, q_level=None)
  ok = np.isfinite(st["p_null"])
  rate = st["selective"][ok].mean()
  assert ALPHA / 2 <= rate <= 2 * ALPHA, rate  # uncorrected p <= alpha
  # With BH over the family (the default call, q <= 0.1) a complete null gives a false
  # call with probability <= 0.1, so at most a handful of the pairs.
  st_q = selectivity.shared_null_statistics(fake, length[NULL_DRAWS:], null, length[:NULL_DRAWS],
                                            seed=0, n_boot=200, q_level=0.1)
  assert np.sum(st_q["selective"][ok]) <= 0.01 * ok.sum()
  # The null's own leave-one-out estimate agrees.
  loo = selectivity.null_false_positive_rate(null, length[:NULL_DRAWS], seed=0, n_boot=200, alpha=ALPHA)
  assert ALPHA / 2 <= loo <= 2 * ALPHA, loo
  # The old null (an independent direction per start sample) ignores that a unit's samples
  # share one direction: its intervals are too narrow and it flags far too many.
  old_null = null[(np.arange(FAKE_SWEEPS)[:, None] * START_SAMPLES + np.arange(START_SAMPLES)) % NULL_DRAWS,
                  np.arange(START_SAMPLES)[None]]  # [F, S, P, M]
  old = selectivity.unit_statistics(fake, old_null, seed=0, n_boot=200, alpha=ALPHA)
  assert old["selective"][ok].mean() > 2 * ALPHA


def test_fast_nanmedian_and_hodges_lehmann_match_their_definitions():
  rng = np.random.default_rng(21)
  x = rng.normal(size=(8, 6, 5))
  x[rng.uniform(size=x.shape) < 0.25] = np.nan
  x[:, 0, 0] = np.nan  # an all-missing column stays NaN
  with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning):
    want = np.nanmedian(x, axis=0)
  np.testing.assert_allclose(selectivity._average(x, "median", 0), want, equal_nan=True, atol=1e-15)
  hl = selectivity._average(x, "hl", 0)
  for a in range(1, 6):
    for b in range(5):
      v = x[:, a, b][np.isfinite(x[:, a, b])]
      walsh = [(v[i] + v[j]) / 2 for i in range(v.size) for j in range(i, v.size)]
      assert hl[a, b] == pytest.approx(np.median(walsh), abs=1e-15)
  assert np.isnan(hl[0, 0])


@pytest.mark.parametrize("n_samples", [1, 2, 7, 16])
def test_resampled_hodges_lehmann_is_the_median_of_each_resamples_walsh_averages(n_samples):
  # By definition, resample by resample: the median of the resample's own Walsh averages
  # (x_i + x_j) / 2, i <= j over its positions, missing values left out.
  rng = np.random.default_rng(n_samples)
  x = rng.normal(size=(n_samples, 9))
  x[:, 1] = np.round(x[:, 1], 0)  # ties
  x[rng.uniform(size=x.shape) < 0.3] = np.nan
  x[:, 0] = np.nan  # never present
  idx = rng.integers(0, n_samples, size=(40, n_samples))
  got = selectivity._resampled_hl(x, idx)
  assert got.shape == (40, 9)
  for b in range(40):
    for f in range(9):
      v = x[idx[b], f]
      walsh = [(v[i] + v[j]) / 2 for i in range(v.size) for j in range(i, v.size)
               if np.isfinite(v[i]) and np.isfinite(v[j])]
      if walsh:
        assert got[b, f] == np.median(walsh)
      else:
        assert np.isnan(got[b, f])


def test_start_scaled_puts_every_start_sample_on_its_nulls_rms():
  rng = np.random.default_rng(0)
  gain = np.array([1.0, 10.0, 0.1])[None, :, None, None]  # three start samples, different scales
  null = rng.normal(size=(500, 3, 2, M)) * gain
  units = rng.normal(size=(4, 3, 2, M)) * gain
  su, sn = selectivity.start_scaled(units, null)
  np.testing.assert_allclose(np.sqrt(np.mean(sn ** 2, axis=0)), 1.0, rtol=1e-12)
  np.testing.assert_allclose(su * np.sqrt(np.mean(null ** 2, axis=0))[None], units, rtol=1e-12)
  zero = np.zeros_like(null)  # a concept that never moves has no scale: NaN, not inf
  assert np.all(np.isnan(selectivity.start_scaled(units, zero)[0]))


def test_fast_nanpercentile_equals_numpys_bit_for_bit():
  rng = np.random.default_rng(4)
  x = np.round(rng.normal(size=(1000, 40)), 1)  # ties
  x[:, 5:10] = rng.normal(size=(1000, 5))
  x[:, 10] = 3.0
  x[:, 11] = np.nan  # all missing
  x[:, 12:22][rng.uniform(size=(1000, 10)) < 0.3] = np.nan  # partly missing
  x[:7, 22] = np.nan
  x[0, 23], x[1, 24], x[2, 24] = np.inf, -np.inf, np.inf
  qs = [[2.5, 97.5], [0.0, 100.0], [5.0, 50.0, 95.0], [0.5, 99.5]]
  for cols in (slice(None), slice(0, 11), slice(11, 12), slice(12, 22)):  # mixed, clean, empty, holes
    for q in qs:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = np.nanpercentile(x[:, cols], q, axis=0)
        got = selectivity._nanpercentile_cols(x[:, cols], q)
      np.testing.assert_array_equal(got, want)


def _bootstrap_reference(x, *, rng, n_boot=1000, level=0.95, average="mean"):
  """bootstrap_ci as it was: np.nanpercentile over every column."""
  s = x.shape[0]
  flat = x.reshape(s, -1).astype(np.float64)
  if average in ("median", "hl"):
    boots = selectivity._average(flat[rng.integers(0, s, size=(n_boot, s))], average, 1)
  else:
    boots = selectivity._resampled_means(selectivity._resample_counts(rng, n_boot, s, s), flat)
  q = 100 * (1 - level) / 2
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    mean = selectivity._average(flat, average, 0)
    low, high = np.nanpercentile(boots, [q, 100 - q], axis=0)
  shape = x.shape[1:]
  return mean.reshape(shape), low.reshape(shape), high.reshape(shape)


@pytest.mark.parametrize("average", ["mean", "median", "hl"])
def test_bootstrap_ci_equals_the_nanpercentile_version_bit_for_bit(average):
  data = np.random.default_rng(9)
  x = data.normal(size=(8, 4, 13))
  xt = np.round(x, 1)
  xt[data.uniform(size=x.shape) < 0.4] = np.nan  # partly missing resamples
  xt[:, 0, 0] = np.nan  # never present
  xt[1:, 0, 1] = np.nan  # one sample
  for arr, level in ((x, 0.95), (xt, 0.95), (xt, 0.9)):
    rng_new, rng_old = np.random.default_rng(5), np.random.default_rng(5)
    with warnings.catch_warnings():
      warnings.simplefilter("error", RuntimeWarning)  # all-NaN columns stay quiet
      got = selectivity.bootstrap_ci(arr, rng=rng_new, n_boot=300, level=level, average=average)
    want = _bootstrap_reference(arr, rng=rng_old, n_boot=300, level=level, average=average)
    for g, w in zip(got, want):
      np.testing.assert_array_equal(g, w)
    assert rng_new.uniform() == rng_old.uniform()
