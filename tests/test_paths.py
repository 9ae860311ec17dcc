"""The paths' analyses (lis_jax.analysis.paths) against closed forms, scikit-learn,
statsmodels, scipy and the built-in world's truth."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lis_jax import generators
from lis_jax.analysis import paths

# float32 softmax / einsum against float64 numpy: relative error about 1e-6 on these sizes
# (measured 2.4e-7 max on p, 9.5e-7 on the projections); 1e-5 leaves room for other CPU kernels.
F32_TOL = 1e-5


def test_t_grid_continues_past_one_in_steps_of_the_same_size():
  np.testing.assert_allclose(paths.t_grid(5, 2), [0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5], atol=1e-7)
  np.testing.assert_allclose(paths.t_grid(11, 0), np.linspace(0, 1, 11), atol=1e-7)


def _linear_world(rng, b=6, d=5, c=3, w_dim=4):
  """A linear classifier and link: logits = x A + bias, w = x L (x = relu(r - t s))."""
  a = rng.normal(size=(d, c))
  bias = rng.normal(size=c)
  lin = rng.normal(size=(d, w_dim))
  r = rng.uniform(3, 4, size=(b, d))          # r - t s > 0 for t <= 2: relu is the identity
  s = rng.uniform(-1, 1, size=(b, d))
  head = lambda x: x @ jnp.asarray(a, jnp.float32) + jnp.asarray(bias, jnp.float32)
  image_fn = lambda rs: (jax.nn.relu(rs) @ jnp.asarray(lin, jnp.float32), jax.nn.relu(rs), head(jax.nn.relu(rs)))
  return a, bias, lin, r, s, head, image_fn


def _frame(rng, b, d, n_pc=2):
  q, _ = np.linalg.qr(rng.normal(size=(d, n_pc)))
  return {"mean": np.tile(rng.normal(size=d), (b, 1)), "components": np.tile(q.T, (b, 1, 1)),
          "origin_mean": np.tile(rng.normal(size=d), (b, 1)), "axis": np.tile(rng.normal(size=d), (b, 1))}


def test_readout_matches_the_closed_form_of_a_linear_classifier_on_a_straight_path():
  rng = np.random.default_rng(0)
  a, bias, lin, r, s, head, image_fn = _linear_world(rng)
  b, d = r.shape
  origin, target = np.array([0, 1, 2, 0, 1, 2]), np.array([1, 2, 0, 2, 0, 1])
  ts = paths.t_grid(6, 3)
  fr, fw = _frame(rng, b, d), _frame(rng, b, lin.shape[1])
  f32 = lambda t: jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), t)
  out = jax.jit(lambda *x: paths.readout(image_fn, head, *x))(
      *f32((r, s)), jnp.asarray(origin), jnp.asarray(target), jnp.asarray(ts), f32(fr), f32(fw))
  x = r[:, None] - ts[None, :, None] * s[:, None]          # [B, T, D] the path (no relu needed)
  logits = x @ a + bias
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(out["p_target"], np.take_along_axis(p, target[:, None, None], 2)[..., 0],
                             rtol=F32_TOL, atol=F32_TOL)
  np.testing.assert_allclose(out["p_origin"], np.take_along_axis(p, origin[:, None, None], 2)[..., 0],
                             rtol=F32_TOL, atol=F32_TOL)
  np.testing.assert_allclose(out["p_target_r"], out["p_target"], rtol=F32_TOL, atol=F32_TOL)
  np.testing.assert_array_equal(out["pred"], logits.argmax(-1))
  # Projections: PCs of x and of w = x L; progress is affine in t along a straight path.
  np.testing.assert_allclose(out["pc_r"], np.einsum("btd,bkd->btk", x - fr["mean"][:, None], fr["components"]),
                             rtol=F32_TOL, atol=1e-4)
  np.testing.assert_allclose(out["pc_w"], np.einsum("btd,bkd->btk", x @ lin - fw["mean"][:, None], fw["components"]),
                             rtol=F32_TOL, atol=1e-4)
  prog = np.einsum("btd,bd->bt", x - fr["origin_mean"][:, None], fr["axis"])
  np.testing.assert_allclose(out["prog_r"], prog, rtol=F32_TOL, atol=1e-4)
  np.testing.assert_allclose(out["prog_img"], prog, rtol=F32_TOL, atol=1e-4)


def test_two_class_logistic_path_crosses_one_half_where_the_closed_form_says():
  """p(target)(t) = sigmoid(u + v t) on a two-class linear head: p = 1/2 at t* = -u / v."""
  u, v = -2.0, 3.0
  ts = paths.t_grid(401, 0)
  p = 1 / (1 + np.exp(-(u + v * ts)))
  t50 = paths.first_above(p[None], ts)[0]
  # linear interpolation of a sigmoid between grid points 1/400 apart: error < 1e-4 here
  assert abs(t50 - (-u / v)) < 1e-4
  assert np.isnan(paths.first_above(np.full((1, 5), 0.2), ts[:5])[0])
  assert paths.first_above(np.full((1, 5), 0.9), ts[:5])[0] == 0.0


def test_probability_summary_reads_t_one_and_past_it():
  ts = paths.t_grid(3, 2)   # 0, .5, 1, 1.5, 2
  p_t = np.array([[0.0, 0.25, 0.75, 0.9, 0.95], [0.0, 0.0, 0.4, 0.3, 0.2]])
  pred = np.array([[0, 0, 1, 1, 1], [0, 0, 0, 0, 0]])
  s = paths.probability_summary(p_t, 1 - p_t, pred, np.array([1, 1]), ts)
  assert s["p_target_at_1"] == pytest.approx(0.575)
  assert s["reach50"] == 0.5 and s["t50_median"] == pytest.approx(0.75)  # 0.5 + 0.5 * (0.25 / 0.5)
  assert s["past_holds"] == 0.5 and s["past_still_target"] == 1.0 and s["t_end"] == 2.0


def test_pca_matches_scikit_learn():
  from sklearn.decomposition import PCA
  rng = np.random.default_rng(1)
  x = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12)) + 5
  mean, comps, evr = paths.pca(x, 2)
  ref = PCA(2).fit(x)
  np.testing.assert_allclose(mean, ref.mean_, rtol=1e-12)
  np.testing.assert_allclose(np.abs(np.sum(comps * ref.components_, 1)), 1.0, atol=1e-9)  # same axes up to sign
  np.testing.assert_allclose(evr, ref.explained_variance_ratio_, rtol=1e-9)


def test_pair_frames_put_the_class_means_at_progress_zero_and_one():
  rng = np.random.default_rng(2)
  x = np.concatenate([rng.normal(0, 1, (50, 6)), rng.normal(3, 1, (60, 6)), rng.normal(-2, 1, (40, 6))])
  cls = np.repeat([0, 1, 2], [50, 60, 40])
  f = paths.pair_frames(x, cls, [(0, 1), (1, 0), (2, 0)])
  mu = {c: x[cls == c].mean(0) for c in range(3)}
  for i, (o, t) in enumerate([(0, 1), (1, 0), (2, 0)]):
    for c, want in ((o, 0.0), (t, 1.0)):
      assert float((mu[c] - f["origin_mean"][i]) @ f["axis"][i]) == pytest.approx(want, abs=1e-5)
  np.testing.assert_allclose(f["components"][0], f["components"][1])  # one fit per unordered pair
  from sklearn.decomposition import PCA
  both = x[(cls == 0) | (cls == 1)]
  ref = PCA(2).fit(both)   # the pooled-scatter covariance is the union's own
  np.testing.assert_allclose(f["mean"][0], ref.mean_, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.abs(np.sum(f["components"][0] * ref.components_, 1)), 1.0, atol=1e-6)
  np.testing.assert_allclose(f["explained"][0], ref.explained_variance_ratio_, rtol=1e-5)


def test_relevant_units_count_as_the_reference_does():
  """transition_relevant_units.py: argsort(|r - r_shifted|)[::-1][:10] per search, counted."""
  rng = np.random.default_rng(3)
  r = rng.uniform(0, 2, (40, 64))
  s = rng.normal(size=(40, 64))
  eff = paths.effective_shifts(r, s)
  np.testing.assert_allclose(eff, r - np.where(r - s > 0, r - s, 0), atol=F32_TOL)  # float32 of values < 4
  top = paths.relevant_units(eff, 10)
  ref = np.stack([np.argsort(np.abs(e))[::-1][:10] for e in eff])
  np.testing.assert_array_equal(top, ref)
  counts = paths.unit_counts(top, 64)[0]
  np.testing.assert_array_equal(counts, np.bincount(ref.reshape(-1), minlength=64))
  by = paths.unit_counts(top, 64, np.arange(40) % 3, 3)
  np.testing.assert_array_equal(by.sum(0), counts)
  np.testing.assert_array_equal(by[1], np.bincount(ref[1::3].reshape(-1), minlength=64))


def test_recurrence_finds_planted_units_and_bonferroni_holds_on_random_ones():
  rng = np.random.default_rng(4)
  d, b, k = 64, 40, 5
  eff = rng.normal(size=(b, d))
  eff[:, [7, 21]] += 10.0   # two units every search shifts most
  rec = paths.recurrence(paths.unit_counts(paths.relevant_units(eff, k), d)[0], b, k, d)
  assert set(np.flatnonzero(rec["p_adj"] <= 0.05)) == {7, 21}
  assert rec["expected"] == pytest.approx(b * k / d)
  # Random searches: any call in at most alpha of the families (Bonferroni), 400 families.
  any_call = [np.any(paths.recurrence(paths.unit_counts(paths.relevant_units(rng.normal(size=(b, d)), k), d)[0],
                                      b, k, d)["p_adj"] <= 0.05) for _ in range(400)]
  assert np.mean(any_call) <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / 400)


def test_wilson_interval_matches_statsmodels():
  from statsmodels.stats.proportion import proportion_confint
  k, n = np.array([0, 3, 17, 50, 64]), np.array([10, 10, 64, 64, 64])
  lo, hi = paths.wilson(k, n, 0.95)
  ref = np.array([proportion_confint(a, m, alpha=0.05, method="wilson") for a, m in zip(k, n)])
  np.testing.assert_allclose(lo, ref[:, 0], atol=1e-12)
  np.testing.assert_allclose(hi, ref[:, 1], atol=1e-12)
  lo90, _ = paths.wilson(np.array([5]), np.array([20]), 0.9)
  assert lo90[0] == pytest.approx(proportion_confint(5, 20, alpha=0.1, method="wilson")[0], abs=1e-12)


def test_one_sided_mcnemar_matches_scipy_and_statsmodels():
  from scipy.stats import binomtest
  from statsmodels.stats.contingency_tables import mcnemar
  rng = np.random.default_rng(5)
  real = rng.uniform(size=(6, 40)) < np.array([0.9, 0.6, 0.5, 0.3, 0.1, 0.0])[:, None]
  null = rng.uniform(size=(6, 40)) < 0.2
  p = paths.mcnemar_greater(real, null)
  for i in range(6):
    b, c = int(np.sum(real[i] & ~null[i])), int(np.sum(~real[i] & null[i]))
    want = binomtest(b, b + c, 0.5, alternative="greater").pvalue if b + c else 1.0
    assert p[i] == pytest.approx(want, rel=1e-9)
    if b > c:  # the two-sided exact test is twice the one-sided tail (when below 1)
      table = [[np.sum(real[i] & null[i]), b], [c, np.sum(~real[i] & ~null[i])]]
      assert min(2 * p[i], 1.0) == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-9)


def test_transfer_statistics_counts_rates_and_calls():
  real = np.array([[1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]], bool)
  null = np.zeros_like(real)
  valid = np.ones_like(real)
  valid[2, 4:] = False
  st = paths.transfer_statistics(real, null, valid, q_level=0.1)
  np.testing.assert_array_equal(st["n"], [8, 8, 4])
  np.testing.assert_allclose(st["rate"], [1.0, 1 / 8, 0.5])
  assert st["p"][0] == pytest.approx(0.5 ** 8) and st["transfers"].tolist() == [True, False, False]


@pytest.fixture(scope="module")
def world():
  return generators.load("shapes")


def test_the_true_class_difference_transfers_on_the_built_in_world_and_a_random_one_does_not(world):
  """The planted case: 'r' is w (shifted to be positive, so relu is the identity) and the link
  its inverse shift; each training latent's perfect counterfactual is the same z drawn for
  the target class, so the pair's mean shift is the classes' true mean difference in w. On
  new latents of the origin class it must make the world's own class (the argmax of its class
  weights) the target, and a random shift of the same norm must not."""
  G = world
  offset = 50.0
  link = lambda r: r - offset
  predict = jax.jit(lambda rs: G.decode_factors(generators.broadcast_ws(link(jax.nn.relu(rs)), G.num_ws))[1]
                    .argmax(-1))
  pairs = [(0, 3), (5, 1), (2, 6)]
  n_train, n_new = 16, 48
  z = jax.random.normal(jax.random.PRNGKey(0), (n_train, G.z_dim))
  zn = jax.random.normal(jax.random.PRNGKey(1), (n_new, G.z_dim))
  w = lambda zz, c: np.asarray(G.mapping(zz, jnp.full((zz.shape[0],), c), psi=0.7))[:, 0]
  r = np.concatenate([w(z, o) for o, _ in pairs]) + offset
  r_cf = np.concatenate([w(z, t) for _, t in pairs]) + offset
  origin = np.repeat([o for o, _ in pairs], n_train)
  target = np.repeat([t for _, t in pairs], n_train)
  eff = paths.effective_shifts(r, r - r_cf)                       # = r - r_cf (all positive)
  shift, n_used = paths.mean_shifts(eff, origin, target, np.ones(origin.size, bool), pairs)
  assert n_used.tolist() == [n_train] * 3
  r_new = np.stack([w(zn, o) for o, _ in pairs]) + offset           # [P, S, w_dim]
  dirs = np.stack([np.asarray(jax.random.normal(jax.random.PRNGKey(10 + i), (n_new, G.w_dim))) for i in range(3)])
  dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
  x = paths.transfer_inputs(r_new, shift, dirs)
  pred = paths.classify_rows(predict, x, 40)                        # 288 rows: 8 batches, last padded
  assert pred.shape == (2, 3, n_new)
  tgt = np.array([t for _, t in pairs])[:, None]
  assert np.all(predict(jnp.asarray(r_new.reshape(-1, G.w_dim))) == np.repeat([o for o, _ in pairs], n_new))
  st = paths.transfer_statistics(pred[0] == tgt, pred[1] == tgt, np.ones((3, n_new), bool))
  assert np.all(st["rate"] >= 0.9), st["rate"]
  assert np.all(st["rate_null"] <= 0.1), st["rate_null"]
  assert np.all(st["transfers"]) and np.all(st["ci_low"] > st["null_high"])


def test_the_paths_plots_render(tmp_path):
  from PIL import Image
  from lis_jax import plots
  rng = np.random.default_rng(6)
  ts = paths.t_grid(5, 2)
  p = rng.uniform(size=(10, ts.size))
  figs = {
      "probs": plots.path_probabilities(ts, {"image": {"p_target": p, "p_origin": 1 - p},
                                             "r": {"p_target": p, "p_origin": 1 - p}}),
      "traj": plots.path_trajectories([{"title": "a > b, r", "cloud": rng.normal(size=(40, 2)),
                                        "cloud_origin": np.arange(40) < 20, "one": 4,
                                        "lines": {"r path": rng.normal(size=(2, ts.size, 2)),
                                                  "re-encoded r": rng.normal(size=(2, ts.size, 2))}}] * 3),
      "units": plots.relevant_units([5, 9, 2], [12, 7, 3], 1.5, [True, True, False], "units"),
      "transfer": plots.transfer_rates(["a > b", "b > a"], np.array([0.9, 0.2]), np.array([0.8, 0.1]),
                                       np.array([0.95, 0.35]), np.array([0.0, 0.1]), np.array([0.0, 0.03]),
                                       np.array([0.1, 0.25]), [True, False])}
  for name, fig in figs.items():
    png = plots.save(fig, str(tmp_path), name)
    assert Image.open(tmp_path / f"{name}.png").size[0] <= plots.FIG_WIDTH * plots.DPI + 50
    assert png == (tmp_path / f"{name}.png").read_bytes()
