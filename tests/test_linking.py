"""Linking fits agree with scikit-learn; metrics agree with sklearn.metrics; save/load round trip."""
import jax
import numpy as np
import pytest
from sklearn import linear_model, metrics

from lis_jax import errors, linking

# The agreement bar for OLS/Ridge coefficients and the ElasticNet objective.
REL_TOL = 1e-4


def _problem(seed, n=300, d=20, k=5):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, size=d) + rng.normal(size=d)
  a = rng.normal(size=(d, k))
  y = x @ a + rng.normal(size=k) + 0.3 * rng.normal(size=(n, k))
  return x, y


def _rel(a, b):
  return np.max(np.abs(a - b)) / np.max(np.abs(b))


@pytest.mark.parametrize("float64", [False, True])
@pytest.mark.parametrize("kind,solver,sk", [
    ("ols", "lstsq", linear_model.LinearRegression()),
    ("ols", "cholesky", linear_model.LinearRegression()),
    ("ridge", "cholesky", linear_model.Ridge(alpha=3.0)),
])
def test_linear_fit_matches_sklearn(kind, solver, sk, float64):
  x, y = _problem(0)
  # Cholesky's default jitter (1e-6 of the mean eigenvalue) is off: exact normal equations.
  p = linking.fit_linear(x, y, kind, alpha=3.0, solver=solver, float64=float64, jitter=0.0)
  sk.fit(x, y)
  assert _rel(p["A"], sk.coef_.T) < REL_TOL
  assert _rel(p["b"], sk.intercept_) < REL_TOL


@pytest.mark.parametrize("alpha,l1_ratio", [(0.05, 0.5), (0.2, 0.9)])
def test_elasticnet_objective_matches_sklearn(alpha, l1_ratio):
  x, y = _problem(1)
  sk = linear_model.ElasticNet(alpha=alpha, l1_ratio=l1_ratio, tol=1e-10, max_iter=100000).fit(x, y)
  p = linking.fit_linear(x, y, "elasticnet", alpha=alpha, l1_ratio=l1_ratio, float64=True,
                         tol=1e-10, max_iter=20000)
  ours = linking.elasticnet_objective(x, y, p["A"], p["b"], alpha, l1_ratio)
  ref = linking.elasticnet_objective(x, y, sk.coef_.T, sk.intercept_, alpha, l1_ratio)
  assert abs(ours - ref) / ref < REL_TOL
  assert (p["A"] == 0).any(), "the L1 penalty should zero some coefficients"


def test_regression_metrics_match_sklearn():
  rng = np.random.default_rng(2)
  t = rng.normal(size=(50, 4))
  p = t + 0.5 * rng.normal(size=(50, 4))
  m = linking.regression_metrics(t, p)
  np.testing.assert_allclose(m["r2"], metrics.r2_score(t, p), rtol=1e-12)
  np.testing.assert_allclose(m["r2_per_dim"], metrics.r2_score(t, p, multioutput="raw_values"), rtol=1e-12)
  np.testing.assert_allclose(m["r2_variance_weighted"],
                             metrics.r2_score(t, p, multioutput="variance_weighted"), rtol=1e-12)
  np.testing.assert_allclose(m["mse"], metrics.mean_squared_error(t, p), rtol=1e-12)


def test_cycle_metrics_closed_form():
  rng = np.random.default_rng(3)
  r = rng.normal(size=(10, 6))
  m = linking.cycle_metrics(r, 2 * r + 1)   # an affine copy correlates perfectly
  assert m["corr_per_sample_mean"] == pytest.approx(1.0)
  assert m["corr_per_unit_mean"] == pytest.approx(1.0)


def test_mlp_fits_a_linear_map():
  x, y = _problem(4, n=512, d=8, k=3)
  params = linking.fit_mlp(x, y, jax.random.PRNGKey(0), hidden=(32,), epochs=150, batch_size=64,
                           learning_rate=3e-3)
  pred = np.asarray(linking.Link(params=params, kind="mlp")(x))
  # The noise floor is R^2 ~0.99 here; an MLP that learnt the map must clear 0.9.
  assert linking.regression_metrics(y, pred)["r2"] > 0.9


@pytest.mark.parametrize("kind", ["ols", "mlp"])
def test_save_load_round_trip(tmp_path, kind):
  x, y = _problem(5, n=64, d=4, k=2)
  if kind == "mlp":
    params = linking.fit_mlp(x, y, jax.random.PRNGKey(1), hidden=(8, 8), epochs=1)
  else:
    params = linking.fit_linear(x, y)
  link = linking.Link(params=params, kind=kind)
  linking.save(str(tmp_path / "m"), link)
  back = linking.load(str(tmp_path / "m"))
  np.testing.assert_array_equal(np.asarray(back(x)), np.asarray(link(x)))


def test_nan_input_is_reported():
  x, y = _problem(6, n=40, d=3, k=2)
  x[3, 1] = np.nan
  from ml_collections import ConfigDict
  cfg = ConfigDict(dict(kind="ols", alpha=1.0, l1_ratio=0.5, float64=False, solver="lstsq",
                        jitter=1e-6, max_iter=10, tol=1e-6))
  with pytest.raises(errors.PipelineError, match="NaN"):
    linking.fit(cfg, x, y, jax.random.PRNGKey(0))


# ----------------------------------------------------------------------------- ill-conditioned fits

# Predictions (of the float64 params) held to scikit-learn's float64 fit (issue 20's bar).
# Measured on _ill_conditioned below: 0 (ols: the same LAPACK gelsd solve), 4e-10 (ridge);
# the old N-dependent cutoff: 0.38. 7 orders of magnitude left for other BLAS kernels.
PRED_REL_TOL = 1e-3


def _ill_conditioned(seed, n=3000, d=256, k=64, low=1e-4):
  """float32 r [2n, d] whose centred singular values span 1 .. `low` (a random rotation of a
  scaled latent z) around a mean 10x their spread; w [2n, k] depends on every latent
  direction equally, so dropping a small direction loses real signal. First n: train."""
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(2 * n, d))
  rot = np.linalg.qr(rng.normal(size=(d, d)))[0]
  r = (z * np.geomspace(1.0, low, d)) @ rot + 10 * rng.normal(size=d)
  w = z @ rng.normal(size=(d, k)) / np.sqrt(d) + 0.01 * rng.normal(size=(2 * n, k))
  return r.astype(np.float32), w.astype(np.float32)


def _pred_rel(pred, ref):
  """Relative distance of predictions [N, k]: ||pred - ref|| / ||ref - mean(ref)||."""
  ref = np.asarray(ref, np.float64)
  return np.linalg.norm(np.asarray(pred, np.float64) - ref) / np.linalg.norm(ref - ref.mean(0))


@pytest.mark.parametrize("kind,sk", [("ols", linear_model.LinearRegression()),
                                     ("ridge", linear_model.Ridge(alpha=1e-6))])
def test_ill_conditioned_predictions_match_sklearn_float64(kind, sk):
  r, w = _ill_conditioned(0)
  n = r.shape[0] // 2
  p, info = linking.fit_linear_info(r[:n], w[:n], kind, alpha=1e-6, float64=True)
  x_test = r[n:].astype(np.float64)
  sk.fit(r[:n].astype(np.float64), w[:n].astype(np.float64))
  assert _pred_rel(x_test @ p["A"] + p["b"], sk.predict(x_test)) < PRED_REL_TOL
  assert info["rank"] == r.shape[1] and info["condition_number"] > 1e3


def test_n_dependent_rcond_drops_real_directions():
  """The cutoff the issue found (float32 eps x max(N, D)) fails the bar above: the test
  can tell a stable fit from the old one."""
  r, w = _ill_conditioned(0)
  n = r.shape[0] // 2
  old = linking.fit_linear(r[:n], w[:n], rcond=np.finfo(np.float32).eps * n, float64=True)
  x_test = r[n:].astype(np.float64)
  ref = linear_model.LinearRegression().fit(r[:n].astype(np.float64), w[:n].astype(np.float64))
  assert _pred_rel(x_test @ old["A"] + old["b"], ref.predict(x_test)) > 10 * PRED_REL_TOL


# r perturbed by float32 rounding (a relative 1e-7: what another summation order leaves)
# when w follows r linearly (its small directions carry little of w): held-out predictions
# moved by 2.7e-6 relative (measured), the coefficients by 7.6e-3 (cond 1e5).
PERTURBED_PRED_TOL = 1e-4


def test_predictions_move_by_float_noise_only_coefficients_may_not():
  rng = np.random.default_rng(1)
  n, d = 2000, 128
  rot = np.linalg.qr(rng.normal(size=(d, d)))[0]
  r = (rng.normal(size=(2 * n, d)) * np.geomspace(1.0, 1e-5, d)) @ rot + rng.normal(size=d)
  w = (r @ rng.normal(size=(d, 16)) + 0.01 * rng.normal(size=(2 * n, 16))).astype(np.float32)
  r = r.astype(np.float32)
  r2 = (r * (1 + 1e-7 * rng.normal(size=r.shape))).astype(np.float32)
  (pa, ia), (pb, _) = (linking.fit_linear_info(x[:n], w[:n], float64=True) for x in (r, r2))
  x_test = r[n:].astype(np.float64)
  assert _pred_rel(x_test @ pb["A"] + pb["b"], x_test @ pa["A"] + pa["b"]) < PERTURBED_PRED_TOL
  assert _rel(pb["A"], pa["A"]) > 10 * PERTURBED_PRED_TOL   # why A is not compared
  assert not ia["identifiable"] and ia["condition_number"] > linking.COND_IDENTIFIABLE
  assert any("not identifiable" in s for s in ia["warnings"])


def test_well_conditioned_fit_has_no_warnings():
  x, y = _problem(0)
  _, info = linking.fit_linear_info(x, y)
  assert info["identifiable"] and not info["underdetermined"] and info["warnings"] == []
  np.testing.assert_allclose(info["condition_number"], np.linalg.cond(x - x.mean(0)), rtol=1e-8)


def test_underdetermined_link_warns_and_says_what_to_change(capsys):
  """More unknowns (D + 1 per output) than pairs: issue 26's case (129 unknowns, 108 pairs)."""
  x, y = _problem(7, n=108, d=128, k=3)
  from ml_collections import ConfigDict
  cfg = ConfigDict(dict(kind="ols", alpha=1.0, l1_ratio=0.5, float64=False, solver="lstsq",
                        jitter=1e-6, max_iter=10, tol=1e-6))
  link, info = linking.fit_info(cfg, x, y, jax.random.PRNGKey(0))
  assert info["underdetermined"] and info["unknowns"] == 129 and info["n_train"] == 108
  assert info["rank"] == 107   # centred: N - 1 directions
  out = capsys.readouterr().out
  assert "[link] warning: the ols link is underdetermined: 129 unknowns" in out
  assert "paired_data.n_per_class" in out
  # the minimum-norm solution interpolates its train pairs
  np.testing.assert_allclose(np.asarray(link(x)), y, atol=1e-3 * np.abs(y).max())
  assert np.allclose(link.params["A"], np.linalg.pinv(x - x.mean(0)) @ (y - y.mean(0)), atol=1e-4)


def test_link_stage_reports_an_underdetermined_fit(tmp_path, capsys):
  """Issue 26: 13 unknowns per w dim (12 units + intercept) on 10 train pairs: the stage logs
  the warning, and metrics.json's `fit` (what the report's summary and section show) says so."""
  import os
  from ml_collections import ConfigDict
  from lis_jax import pipeline
  from lis_jax.stages import link as link_stage
  cfg = ConfigDict({
      "generator": "tests.tiny_models:generator", "classifier": "tests.tiny_models:classifier",
      "stages": ("paired_data", "link"), "classes": "0,4", "psi": 0.7, "seed": 0,
      "paired_data": dict(n_per_class=6, keep_only_correct=False, batch_size=4, shard_size=6),
      "link": dict(cycle_samples=0, holdout_fraction=0.2)})
  pipeline.run(cfg, str(tmp_path))
  assert "[link] warning: the ols link is underdetermined: 13 unknowns" in capsys.readouterr().out

  class Ctx:   # what summary() reads of the run context
    def out_dir(self, name):
      return os.path.join(str(tmp_path), name)

    def result(self, name):
      return link_stage.load(str(tmp_path))

  s = link_stage.summary(Ctx())
  assert s["underdetermined"] and s["unknowns"] == 13 and s["rank"] == 9   # centred: 10 - 1
  assert any("paired_data.n_per_class" in w for w in s["warnings"])
