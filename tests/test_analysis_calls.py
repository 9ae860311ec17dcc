"""Calls: BH q-values against statsmodels, the GPD tail against scipy, calibration under
planted nulls, r-space nulls against their closed forms, and truth-based FDR/power."""
import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

import jax

from lis_jax import linking
from lis_jax.analysis import boundary, calls, nulls, truth
from lis_jax.quantify import selectivity

ROUNDOFF = 1e-12


def test_bh_qvalues_match_statsmodels_with_nans_left_out():
  rng = np.random.default_rng(0)
  p = rng.uniform(size=(30, 7)) ** 3
  p[rng.uniform(size=p.shape) < 0.1] = np.nan
  q = calls.bh_qvalues(p)
  ok = np.isfinite(p)
  np.testing.assert_allclose(q[ok], multipletests(p[ok], method="fdr_bh")[1], atol=ROUNDOFF)
  assert np.array_equal(np.isnan(q), ~ok)


def test_storey_qvalues_closed_form():
  p = np.array([0.001, 0.002, 0.01, 0.02, 0.03, 0.2, 0.7, 0.9])
  pi0 = calls.storey_pi0(p, 0.5)
  assert pi0 == pytest.approx(2 / (0.5 * 8))
  np.testing.assert_allclose(calls.storey_qvalues(p), pi0 * calls.bh_qvalues(p), atol=ROUNDOFF)
  assert calls.storey_pi0(np.linspace(0.01, 0.99, 8)) == 1.0  # 4 / 4 > 1 is capped


# Zhang-Stephens and scipy's MLE are different estimators of the same shape; on 4000 draws
# both have sd ~0.02 for xi in [0.1, 0.5] (measured over 20 seeds: |difference| <= 0.03).
SHAPE_TOL = 0.06


@pytest.mark.parametrize("xi", [0.1, 0.3, 0.5])
def test_gpd_fit_agrees_with_scipy_mle(xi):
  y = sps.genpareto.rvs(xi, scale=2.0, size=4000, random_state=np.random.default_rng(1))
  got_xi, got_scale = calls.gpd_fit(y)
  c, _, scale = sps.genpareto.fit(y, floc=0)
  assert got_xi == pytest.approx(c, abs=SHAPE_TOL) and got_xi == pytest.approx(xi, abs=SHAPE_TOL)
  assert got_scale == pytest.approx(scale, rel=0.1)


def test_gpd_fit_clamps_bounded_tails_to_exponential():
  y = sps.genpareto.rvs(-0.3, scale=1.0, size=2000, random_state=np.random.default_rng(2))
  xi, scale = calls.gpd_fit(y)
  assert xi == 0.0 and scale == pytest.approx(np.mean(y), rel=ROUNDOFF)


# p-values under a planted null: 40 x 50 x 52 tests; binomial sd of the share at 0.05 is
# 0.001; the tail fit on 50 of 200 draws measured 0.046-0.052 on |normal|, exponential,
# |t_3| and uniform nulls (the bound leaves that spread plus 3 sd).
CALIBRATION_TOL = 0.008


@pytest.mark.parametrize("dist", ["absnormal", "t3", "uniform"])
def test_tail_pvalues_are_calibrated_under_the_null(dist):
  rng = np.random.default_rng(3)
  draw = {"absnormal": lambda s: np.abs(rng.normal(size=s)),
          "t3": lambda s: np.abs(rng.standard_t(3, size=s)),
          "uniform": lambda s: rng.uniform(size=s)}[dist]
  ps = [calls.tail_pvalues(draw((50, 52)), draw((200, 52)), rng=rng) for _ in range(40)]
  ps = np.concatenate(ps)
  assert np.mean(ps <= 0.05) == pytest.approx(0.05, abs=CALIBRATION_TOL)
  assert np.all((ps > 0) & (ps <= 1))


def test_tail_pvalues_reach_below_the_permutation_floor():
  """|N(0,1)| null, 200 draws: the count's p stops at 1/201; the tail fit goes on, and stays
  conservative (the fitted shape is clamped at 0: an exponential tail is heavier than the
  normal's)."""
  rng = np.random.default_rng(4)
  null = np.abs(rng.normal(size=(200, 1)))
  p = calls.tail_pvalues(np.array([[3.5], [4.5]]), null)[:, 0]
  exact = 2 * sps.norm.sf([3.5, 4.5])
  assert p[1] < p[0] < 1 / 201
  assert np.all(p >= exact)


def test_loo_pvalues_on_the_null_are_calibrated():
  rng = np.random.default_rng(5)
  p = np.concatenate([calls.loo_pvalues(np.abs(rng.normal(size=(200, 52))), rng=rng) for _ in range(3)])
  assert np.mean(p <= 0.05) == pytest.approx(0.05, abs=CALIBRATION_TOL)


def test_proportion_ci_matches_scipy_exact():
  ci = sps.binomtest(7, 60).proportion_ci(0.95, method="exact")
  assert calls.proportion_ci(7, 60) == pytest.approx((ci.low, ci.high), abs=1e-10)
  assert calls.proportion_ci(0, 10)[0] == 0.0 and calls.proportion_ci(10, 10)[1] == 1.0
  f = calls.fraction(np.array([True, False, False, True]))
  assert (f["k"], f["n"], f["fraction"]) == (2, 4, 0.5)


def _linear_link(rng, d, w_dim):
  return linking.Link(params={"A": rng.normal(size=(d, w_dim)).astype(np.float32),
                              "b": rng.normal(size=(w_dim,)).astype(np.float32)}, kind="ols")


def test_rspace_null_moves_w_along_the_links_image_with_the_units_lengths():
  rng = np.random.default_rng(6)
  d, w_dim, s, r = 12, 5, 3, 40
  link = _linear_link(rng, d, w_dim)
  r0 = rng.uniform(size=(s, d)).astype(np.float32)
  ranges = np.array([1.0, 2.0, 3.0])
  w0, ends, lengths = nulls.rspace_ends(link, r0, ranges, r, jax.random.PRNGKey(0))
  assert ends.shape == (r, s, w_dim) and np.all(np.isin(np.round(lengths, 5), ranges))
  a = np.asarray(link.params["A"], np.float64)
  # w_end - w_start = shift @ A for every start sample: the same shift, through the link.
  shift = np.linalg.lstsq(a.T, (ends[:, 0] - w0[0]).T.astype(np.float64), rcond=None)[0].T  # [R, D]
  np.testing.assert_allclose(ends - w0[None], np.broadcast_to((shift @ a)[:, None], ends.shape), atol=1e-4)
  # The isotropic-w null is the switch's other side: w-space lengths from the units'.
  iso, iso_len = nulls.isotropic_w_ends(w0, np.array([2.0]), 5, jax.random.PRNGKey(1))
  np.testing.assert_allclose(np.linalg.norm(iso - w0[None], axis=-1), 2.0, rtol=1e-5)


def test_boundary_null_ends_use_the_paths_shift_norm_relu_and_link():
  rng = np.random.default_rng(7)
  d, w_dim, b = 10, 4, 3
  link = _linear_link(rng, d, w_dim)
  r = rng.uniform(size=(b, d)).astype(np.float32)
  shift = rng.normal(size=(b, d)).astype(np.float32)
  t = np.array([0.2, 0.5, 1.0])
  ends = nulls.boundary_ends(link, r, shift, t, jax.random.PRNGKey(2), np.array([4, 5, 6]), 7)
  assert ends.shape == (b, 7, w_dim)
  again = nulls.boundary_ends(link, r[1:], shift[1:], t[1:], jax.random.PRNGKey(2), np.array([5, 6]), 7)
  np.testing.assert_array_equal(ends[1:], again)  # per-search streams: batching does not matter
  dirs = nulls.unit_directions(jax.random.fold_in(jax.random.PRNGKey(2), 4), 7, d)
  want = link(np.maximum(r[0] - t[0] * np.linalg.norm(shift[0]) * dirs, 0).astype(np.float32))
  np.testing.assert_allclose(ends[0], np.asarray(want), rtol=1e-5, atol=1e-5)


def test_selectivity_calls_control_fdr_on_a_planted_population():
  """64 units x 3 x 13 concepts, 20 planted effects; the rest exchangeable with the null."""
  rng = np.random.default_rng(8)
  u, s, p_, m_, r = 64, 8, 3, len(selectivity.CONCEPT_METRICS), 200
  deltas = rng.normal(size=(u, s, p_, m_))
  null = rng.normal(size=(r, s, p_, m_))
  planted = np.zeros((u, p_, m_), bool)
  planted.reshape(-1)[rng.choice(planted.size, 20, replace=False)] = True
  deltas += 4.0 * planted[:, None]
  st = selectivity.shared_null_statistics(deltas, np.ones(u), null, np.ones(r), seed=0, n_boot=100,
                                          q_level=0.1)
  ok = np.isfinite(st["p_null"])
  np.testing.assert_allclose(st["q_null"][ok], multipletests(st["p_null"][ok], method="fdr_bh")[1],
                             atol=ROUNDOFF)
  assert np.all(st["selective"][planted])  # effect 4 sd / sqrt(8): all found
  assert np.sum(st["selective"] & ~planted) <= 3  # E[false] <= 0.1 x 20
  nc = selectivity.null_calls(null, np.ones(r), seed=0, q_level=0.1)
  assert nc["fpr"] == pytest.approx(0.05, abs=0.012) and np.sum(nc["selective"]) <= 2


# Simulated at the demo's sizes: 56 pairs of 2 searches, 16 null paths each. Each search's
# p is an exact permutation p, so the share of (draw, pair, concept) tests with p <= 0.05 is
# 0.05 in expectation whatever the tails (binomial sd ~0.002; the draws share null paths);
# bound: the issue's [0.03, 0.07].
def test_boundary_null_paths_are_calibrated_and_bh_controls_the_family():
  rng = np.random.default_rng(9)
  pairs = [(o, t) for o in range(8) for t in range(8) if o != t]
  origin = np.repeat([o for o, _ in pairs], 2)
  target = np.repeat([t for _, t in pairs], 2)
  b = origin.size
  scale = rng.uniform(0.5, 2.0, size=(b, 1, 1, 1))  # searches' nulls differ in scale
  heavy = boundary.null_path_calls(rng.standard_t(4, size=(b, 16, 4, 13)) * scale, origin, target, seed=0)
  assert 0.03 <= heavy["fpr"] <= 0.07  # uncorrected p stays calibrated with heavy (t_4) tails
  null = rng.normal(size=(b, 16, 4, 13)) * scale
  res = boundary.null_path_calls(null, origin, target, seed=0, alpha=0.05, q_level=0.1)
  assert 0.03 <= res["fpr"] <= 0.07
  # BH on a complete null: P(any call) <= 0.1 per table; of 16 tables <= 3 with probability 0.93.
  assert res["fwer"] <= 3 / 16
  deltas = rng.normal(size=(b, 4, 13))
  deltas[origin == 3, 1, 2] += 20.0  # pair 3 -> * changes one concept a lot
  prs, st = boundary.pair_statistics(deltas, null, origin, target, seed=0, n_boot=100)
  called = np.argwhere(st["selective"])
  assert all(prs[i][0] == 3 and (pp, mm) == (1, 2) for i, pp, mm in called)
  # Power is limited by the null paths: a search's p is at best uniform on (0, 1 / 16] with
  # 15 other paths, so Fisher over 2 searches rarely reaches BH's 0.1 x 7 / 2912.
  assert len(called) >= 1


def test_truth_labels_and_rates_closed_form():
  names = ["scale", "body_lum", "body_width"]
  concepts = {"scale": ("object", "area"), "body_lum": ("body", "luminance")}
  parts, metrics = ["body", "object"], ["area", "luminance"]
  t = np.array([[0.01, 0.5, 0.01],   # scale null (its confounder too), body_lum selective
                [0.01, 0.02, 0.3],   # scale small but body_width moves the object's area: undecided
                [0.6, 0.2, 0.0]])    # scale selective, body_lum undecided
  lab = truth.labels(t, names, concepts, parts, metrics,
                     confounders={("object", "area"): ("body_width",)})
  assert lab[:, 1, 0].tolist() == [0, -1, 1]  # object area
  assert lab[:, 0, 1].tolist() == [1, 0, -1]  # body luminance
  assert lab[:, 0, 0].tolist() == [-1, -1, -1]  # body area: no factor
  called = np.zeros_like(lab, bool)
  called[0, 1, 0] = called[2, 1, 0] = called[0, 0, 1] = True  # one false, two right
  called[2, 0, 1] = True  # on an undecided pair: not counted
  r = truth.rates(called, lab)
  assert r["fdr"] == pytest.approx(1 / 3) and r["power"] == pytest.approx(2 / 2)
  assert (r["n_true_null"], r["n_true_selective"]) == (2, 2)


def test_min_effect_pvalues_match_scipy_t_test_at_zero():
  """delta0 = 0: twice the one-sided p is scipy's two-sided one-sample t-test."""
  rng = np.random.default_rng(11)
  x = rng.normal(0.3, 1.0, size=(8, 40))
  x[0, :5] = np.nan  # missing samples are left out
  p = calls.min_effect_pvalues(x, 0.0)
  want = sps.ttest_1samp(x, 0.0, nan_policy="omit").pvalue
  np.testing.assert_allclose(2 * p, np.asarray(want), atol=1e-10)
  assert np.isnan(calls.min_effect_pvalues(np.array([[1.0], [np.nan], [np.nan]]), 0.0)).all()  # n < 3


# At the null's boundary |mu| = delta0 the rejection rate at 0.05 is 0.05 (the far side adds
# P(T < -t - 2 delta0 sqrt(n) / sd) ~ 1e-4 here); 40000 tests: binomial sd 0.0011, bound 4 sd.
LEVEL_TOL = 0.0045


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_min_effect_pvalues_have_their_level_on_the_boundary_and_less_inside(sign):
  rng = np.random.default_rng(12)
  delta0 = 0.5
  edge = calls.min_effect_pvalues(rng.normal(sign * delta0, 1.0, size=(8, 40000)), delta0)
  assert np.mean(edge <= 0.05) == pytest.approx(0.05, abs=LEVEL_TOL)
  inside = calls.min_effect_pvalues(rng.normal(0.0, 1.0, size=(8, 40000)), delta0)
  assert np.mean(inside <= 0.05) < 0.01  # |mu| well inside the null: rarely called
  far = calls.min_effect_pvalues(rng.normal(sign * 3.0, 1.0, size=(8, 1000)), delta0)
  assert np.mean(far <= 0.05) > 0.99  # 2.5 sd beyond delta0 with 8 samples: t ~ 7


def test_changes_call_finds_planted_changes_that_random_directions_match():
  """Units that move a concept as much as random directions do: 'selective' (beyond the
  random directions) has nothing to find, 'changes' (beyond min_effect x the null's RMS)
  finds the units whose change is large and consistent and leaves the still ones."""
  rng = np.random.default_rng(13)
  u, s, p_, m_, r = 64, 8, 2, len(selectivity.CONCEPT_METRICS), 200
  dir_u = rng.normal(size=(u, 1, p_, m_))  # each unit's (and null direction's) own mean change
  still = np.zeros((u, p_, m_), bool)
  still.reshape(-1)[rng.choice(still.size, 300, replace=False)] = True
  dir_u[:, 0][still] = 0.0
  deltas = dir_u + 0.1 * rng.normal(size=(u, s, p_, m_))
  null = rng.normal(size=(r, 1, p_, m_)) + 0.1 * rng.normal(size=(r, s, p_, m_))
  st = selectivity.shared_null_statistics(deltas, np.ones(u), null, np.ones(r), seed=0, n_boot=50,
                                          q_level=0.1, min_effect=0.5, average="mean")
  ok = np.isfinite(st["p_change"])
  np.testing.assert_allclose(st["q_change"][ok], multipletests(st["p_change"][ok], method="fdr_bh")[1],
                             atol=ROUNDOFF)
  assert np.sum(st["selective"]) <= 3  # the units are random directions: BH finds (almost) nothing
  big = np.abs(dir_u[:, 0]) > 1.0  # twice min_effect x null RMS (~1): t ~ 14 with 8 samples
  assert np.all(st["changes"][big])
  assert not np.any(st["changes"][still])  # truly no change: never called
  small = (np.abs(dir_u[:, 0]) < 0.4) & ~still  # below min_effect x RMS: not a change of interest
  assert np.mean(st["changes"][small]) < 0.05


def test_oracle_beyond_random_calls_nothing_when_items_are_random_directions():
  rng = np.random.default_rng(14)
  names = ["a", "b", "c"]
  null = rng.normal(size=(200, 3))
  same = truth.oracle_beyond_random(rng.normal(size=(128, 3)), null, names, ["a", "b"])
  assert same["n_tests"] == 256 and same["n_calls"] == 0
  items = rng.normal(size=(128, 3))
  items[:10, 0] = 8.0  # 8 sd beyond the null: the GPD tail gives p far below BH's 0.1 x 10 / 256
  far = truth.oracle_beyond_random(items, null, names, ["a", "b"])
  assert far["n_calls"] >= 10 and far["min_p"] < 1e-4


def test_precision_within_se_counts_units_within_the_kth_units_standard_error():
  # Closed form: 4 units x 4 starts; |means| 1.0, 0.9, 0.5, 0.49 with per-unit SDs known.
  per_start = np.array([[1.0, 1.0, 1.0, 1.0],
                        [0.8, 1.0, 0.8, 1.0],    # mean 0.9, sd 0.11547, se 0.057735
                        [0.3, 0.7, 0.3, 0.7],    # mean 0.5, sd 0.23094, se 0.11547
                        [-0.49, -0.49, -0.49, -0.49]])  # |mean| 0.49: within 0.5 - se
  sd = np.std(per_start[2], ddof=1) / 2.0
  assert sd == pytest.approx(0.11547, abs=1e-5)
  # k = 3: the 3rd is unit 2 (0.5, se 0.115): unit 3 (0.49) counts, so a call listing 3 over 2 is right.
  assert truth.precision_within_se([0, 1, 3], per_start, 3) == (1.0, 4)
  # k = 2: the 2nd is unit 1 (0.9, se 0.058): units 2 and 3 are far below it.
  assert truth.precision_within_se([0, 2], per_start, 2) == (0.5, 2)
  assert truth.precision_within_se([], per_start, 2) == (None, 2)


def _loo_reference(null, **kwargs):
  """loo_pvalues as it was: one tail_pvalues call per left-out row."""
  null = np.asarray(null, np.float64)
  out = np.empty(null.shape)
  for i in range(null.shape[0]):
    out[i] = calls.tail_pvalues(null[i:i + 1], np.delete(null, i, axis=0), **kwargs)[0]
  return out


def _loo_inputs():
  """Nulls that reach every branch: ties, missing draws, nearly empty columns, heavy tails."""
  rng = np.random.default_rng(11)
  normal = rng.normal(size=(200, 12))
  heavy = np.abs(rng.standard_t(1.5, size=(200, 12)))  # beyond the top draws: the GPD tail
  tied = np.round(rng.exponential(size=(200, 12)), 1)  # many exact ties, in the tail too
  tied[:, 0] = 2.0  # a constant column: no tail fit (its top draws are all equal)
  tied[:, 1] = rng.integers(0, 3, size=200)
  clip = rng.exponential(size=200)  # its top 20 tied: with n_tail 19, leaving out the 21st
  tied[:, 2] = np.minimum(clip, np.sort(clip)[-20])  # (not a tied one) leaves no tail to fit
  holes = rng.normal(size=(200, 14)) ** 3
  holes[rng.uniform(size=holes.shape) < 0.15] = np.nan
  for f, k in enumerate([0, 1, 2, 3, 11, 12, 40]):  # columns with k finite draws
    holes[k:, f] = np.nan
  holes[5, 7], holes[9, 8], holes[3, 9] = np.inf, -np.inf, np.inf  # non-finite = missing
  return {"normal": normal, "heavy": heavy, "tied": tied, "holes": holes}


@pytest.mark.parametrize("name", ["normal", "heavy", "tied", "holes"])
@pytest.mark.parametrize("kwargs", [{}, {"min_exceed": 0}, {"min_exceed": 30, "tail_fraction": 0.1}])
def test_loo_pvalues_equal_the_per_row_loop_bit_for_bit(name, kwargs):
  null = _loo_inputs()[name]
  np.testing.assert_array_equal(calls.loo_pvalues(null, **kwargs), _loo_reference(null, **kwargs))
  rng_new, rng_old = np.random.default_rng(3), np.random.default_rng(3)
  got = calls.loo_pvalues(null, rng=rng_new, **kwargs)
  np.testing.assert_array_equal(got, _loo_reference(null, rng=rng_old, **kwargs))
  assert rng_new.uniform() == rng_old.uniform()  # the same draws were taken from the stream
  if name == "heavy" and not kwargs:
    assert np.nanmin(got) < 1 / 200  # the GPD tail was used (the counts stop at 1 / 200)


def test_loo_pvalues_draw_like_one_uniform_call_per_entry():
  # loo_pvalues draws all its uniforms at once where the loop drew them one at a time.
  a, b = np.random.default_rng(7), np.random.default_rng(7)
  np.testing.assert_array_equal(a.uniform(size=1000), [b.uniform(size=1)[0] for _ in range(1000)])
  assert a.uniform() == b.uniform()
  # A column with fewer than two draws draws nothing.
  null = np.full((5, 3), np.nan)
  null[0, 1] = 1.0
  rng = np.random.default_rng(1)
  assert np.all(np.isnan(calls.loo_pvalues(null, rng=rng)))
  assert rng.uniform() == np.random.default_rng(1).uniform()


def test_gpd_sf_is_scipys_genpareto_sf_to_the_bit():
  # The tail p's survival function without scipy.stats' argument handling (calls.gpd_sf).
  rng = np.random.default_rng(5)
  for _ in range(300):
    xi = float(rng.choice([0.0, rng.uniform(0.0, 2.0), rng.uniform(0.0, 1e-6)]))
    sigma = float(rng.lognormal(0.0, 2.0))
    y = np.maximum(rng.normal(size=7) * 3.0 * sigma, 0.0)
    np.testing.assert_array_equal(calls.gpd_sf(y, xi, sigma), sps.genpareto.sf(y, xi, scale=sigma))
