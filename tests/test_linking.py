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
