"""lis_jax.flows: exact inverse and log-determinant, NLL on a planted conditional Gaussian,
the closed-form baseline against scipy, resumable training."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from lis_jax import flows, linking

# float32 round trip through 3 blocks of affine / triangular-solve layers on O(1) data.
INVERSE_TOL = 1e-5
# float32 log-determinants of a 6-dim Jacobian: relative rounding ~1e-6 of terms ~10.
LOGDET_TOL = 1e-4
# The bar: the flow's held-out NLL reaches the planted entropy within 5%.
ENTROPY_REL_TOL = 0.05
# scipy computes in float64, the baseline in float32 (NLLs ~10 nats).
SCIPY_TOL = 1e-4

_forward = jax.jit(lambda flow, w, r: flow.forward(w, r))
_inverse = jax.jit(lambda flow, v, r: flow.inverse(v, r))
_inverse_logdet = jax.jit(lambda flow, v, r: flow.module.apply({"params": flow.params}, v, r, reverse=True)[1])
_nll = jax.jit(lambda model, w, r: model.nll(w, r))

SMALL = dict(n_blocks=3, hidden=16, depth=1, embed_dim=4, embed_hidden=8)


def _perturbed_flow(learned_mixing: bool, scale: float = 0.1, with_base: bool = False
                    ) -> tuple[flows.Flow, jax.Array, jax.Array]:
  """A small flow whose every parameter is moved off its (identity-like) init; optionally
  on top of a Gaussian baseline (a random linear link and covariance)."""
  module = flows.ConditionalFlow(**SMALL, learned_mixing=learned_mixing)
  w = jax.random.normal(jax.random.PRNGKey(0), (32, 6))
  r = jax.random.normal(jax.random.PRNGKey(1), (32, 5))
  params = flows.init_params(module, jax.random.PRNGKey(2), w, r)
  leaves, treedef = jax.tree_util.tree_flatten(params)
  rng = np.random.default_rng(10)
  leaves = [np.asarray(l) + scale * rng.normal(size=l.shape).astype(np.float32) for l in leaves]
  spec = flows._spec_tuple({**SMALL, "learned_mixing": learned_mixing})
  base = None
  if with_base:
    link = linking.Link(params={"A": rng.normal(size=(5, 6)).astype(np.float32),
                                "b": rng.normal(size=6).astype(np.float32)})
    chol = np.tril(rng.normal(size=(6, 6)) * 0.2, -1) + np.diag(rng.uniform(0.5, 2, size=6))
    base = flows.GaussianBaseline(link=link, chol=jnp.asarray(chol, jnp.float32))
  return flows.Flow(params=jax.tree_util.tree_unflatten(treedef, leaves), spec=spec, base=base), w, r


@pytest.mark.parametrize("learned_mixing,with_base", [(True, False), (False, False), (True, True)])
def test_inverse_undoes_forward(learned_mixing, with_base):
  flow, w, r = _perturbed_flow(learned_mixing, with_base=with_base)
  v, logdet = _forward(flow, w, r)
  assert float(jnp.abs(v - w).max()) > 0.1  # the flow is not the identity
  np.testing.assert_allclose(_inverse(flow, v, r), w, atol=INVERSE_TOL, rtol=0)
  if not with_base:   # The module's inverse log-det is minus the forward one.
    np.testing.assert_allclose(_inverse_logdet(flow, v, r), -logdet, atol=LOGDET_TOL, rtol=0)


@pytest.mark.parametrize("learned_mixing,with_base", [(True, False), (False, False), (True, True)])
def test_logdet_equals_slogdet_of_jacobian(learned_mixing, with_base):
  flow, w, r = _perturbed_flow(learned_mixing, with_base=with_base)
  _, logdet = _forward(flow, w, r)
  jac = jax.jit(jax.vmap(jax.jacfwd(lambda a, b: flow.forward(a[None], b[None])[0][0])))(w, r)  # [N, 6, 6]
  sign, ref = jnp.linalg.slogdet(jac)
  assert np.all(np.asarray(sign) != 0)
  np.testing.assert_allclose(logdet, ref, atol=LOGDET_TOL, rtol=0)


def _planted(n: int, seed: int):
  """w = r A + b + eps, eps ~ N(0, Sigma): p(w | r) is a Gaussian of known entropy."""
  rng = np.random.default_rng(0)
  d, D = 4, 3
  A, b = rng.normal(size=(D, d)), rng.normal(size=d)
  chol = np.tril(rng.normal(size=(d, d)) * 0.3, -1) + np.diag([1.0, 0.8, 1.2, 0.6])
  g = np.random.default_rng(seed)
  r = g.normal(size=(n, D))
  w = r @ A + b + g.normal(size=(n, d)) @ chol.T
  entropy = 0.5 * np.linalg.slogdet(2 * np.pi * np.e * chol @ chol.T)[1]
  return w.astype(np.float32), r.astype(np.float32), entropy


def test_nll_reaches_planted_entropy():
  w, r, entropy = _planted(2048, seed=1)
  w_test, r_test, _ = _planted(2048, seed=2)
  module = flows.ConditionalFlow(n_blocks=4, hidden=32, depth=1, embed_dim=8, embed_hidden=32)
  spec = flows.TrainSpec(epochs=24, batch_size=128, learning_rate=3e-3, warmup_steps=20)
  flow, losses = flows.train(module, w, r, jax.random.PRNGKey(0), spec)
  assert losses[-1] < losses[0] - 0.5, losses
  test_nll = float(_nll(flow, w_test, r_test).mean())
  assert abs(test_nll - entropy) / entropy < ENTROPY_REL_TOL, (test_nll, entropy)
  # A trained flow also inverts exactly.
  v, _ = _forward(flow, w_test, r_test)
  np.testing.assert_allclose(_inverse(flow, v, r_test), w_test, atol=INVERSE_TOL * 10, rtol=0)


def test_baseline_nll_matches_scipy():
  rng = np.random.default_rng(3)
  r = rng.normal(size=(300, 5)).astype(np.float32)
  w = (r @ rng.normal(size=(5, 4)) + rng.normal(size=(300, 4)) @ rng.normal(size=(4, 4))).astype(np.float32)
  link = linking.Link(params=linking.fit_linear(r, w, "ols"), kind="ols")
  base = flows.fit_baseline(link, r, w, jitter=0.0)
  mean = np.asarray(link(r), np.float64)
  res = w - mean
  cov = res.T @ res / len(res)
  ref = -scipy.stats.multivariate_normal(np.zeros(4), cov).logpdf(res)
  np.testing.assert_allclose(_nll(base, w, r), ref, atol=SCIPY_TOL, rtol=SCIPY_TOL)
  # Its inverse undoes its forward.
  v, _ = _forward(base, w, r)
  np.testing.assert_allclose(_inverse(base, v, r), w, atol=INVERSE_TOL * 10, rtol=0)


class _Killed(Exception):
  pass


def test_training_resumes_to_the_clean_result(tmp_path):
  w, r, _ = _planted(512, seed=4)
  module = flows.ConditionalFlow(**SMALL)
  spec = flows.TrainSpec(epochs=4, batch_size=64, save_every=2)
  key = jax.random.PRNGKey(5)
  clean, clean_losses = flows.train(module, w, r, key, spec)

  def kill(epoch):
    if epoch == 2:
      raise _Killed
  state = str(tmp_path / "state")
  with pytest.raises(_Killed):
    flows.train(module, w, r, key, spec, state_dir=state, after_save=kill)
  resumed, losses = flows.train(module, w, r, key, spec, state_dir=state)
  assert losses == clean_losses
  for a, b in zip(jax.tree_util.tree_leaves(resumed.params), jax.tree_util.tree_leaves(clean.params)):
    np.testing.assert_array_equal(a, b)
  # A saved flow loads back to the same function.
  flows.save(str(tmp_path / "flow"), resumed)
  loaded = flows.load(str(tmp_path / "flow"))
  np.testing.assert_array_equal(_nll(loaded, w, r), _nll(resumed, w, r))


# ----------------------------------------------------------------------------- fit warnings


def _linear_case(n_train: int, r_dim: int, w_dim: int, n_test: int = 60, seed: int = 0):
  """w = r B / sqrt(r_dim) + 0.5 noise; an OLS link and its Gaussian baseline fitted on the
  first n_train pairs. Returns (held-out baseline NLL, reference NLL, warnings)."""
  rng = np.random.default_rng(seed)
  n = n_train + n_test
  r = rng.normal(size=(n, r_dim)).astype(np.float32)
  w = (r @ rng.normal(size=(r_dim, w_dim)) / np.sqrt(r_dim)
       + 0.5 * rng.normal(size=(n, w_dim))).astype(np.float32)
  tr, te = slice(0, n_train), slice(n_train, n)
  link = linking.Link(params=linking.fit_linear(r[tr], w[tr], "ols"), kind="ols")
  base = flows.fit_baseline(link, r[tr], w[tr])
  nll = float(np.mean(_nll(base, w[te], r[te])))
  ref = flows.reference_nll(w[tr], w[te])
  return nll, ref, flows.fit_warnings(n_train, r_dim, w_dim, {"baseline": nll}, ref)


def test_reference_nll_is_a_diagonal_gaussian_per_scipy():
  rng = np.random.default_rng(4)
  w_train, w_test = rng.normal(2, 3, size=(200, 5)), rng.normal(2, 3, size=(40, 5))
  mu, sd = w_train.mean(0), w_train.std(0)
  ref = -np.mean(scipy.stats.norm(mu, sd).logpdf(w_test).sum(-1))
  assert flows.reference_nll(w_train, w_test) == pytest.approx(ref, rel=1e-5)   # eps 1e-6 of var


def test_underdetermined_link_warns_and_says_what_to_change():
  # The small config: 129 unknowns per w dimension (128 + intercept), 108 pairs.
  nll, ref, warnings = _linear_case(108, 128, 16)
  assert nll > 1e9 and ref < 100, (nll, ref)   # degenerate, as the 6.7e12
  assert any("129 unknowns" in w and "108 training pairs" in w and "paired_data.n_per_class" in w
             for w in warnings), warnings
  assert any("implausibly" in w and "baseline" in w for w in warnings), warnings


def test_singular_residual_covariance_and_flow_size_warn():
  warnings = flows.fit_warnings(n_train=60, r_dim=40, w_dim=64, nll={})
  assert len(warnings) == 2, warnings
  assert "rank at most 19" in warnings[0] and "the flow is trained on 60 pairs" in warnings[1]
  bad = flows.fit_warnings(n_train=1000, r_dim=4, w_dim=2, nll={"flow": float("nan")})
  assert len(bad) == 1 and "flow is nan" in bad[0], bad


@pytest.mark.parametrize("n_train,r_dim,w_dim", [(600, 8, 4), (300, 20, 8)])
def test_well_determined_fit_does_not_warn(n_train, r_dim, w_dim):
  nll, ref, warnings = _linear_case(n_train, r_dim, w_dim)
  assert warnings == [] and nll < ref, (nll, ref, warnings)   # r explains part of w


@pytest.mark.parametrize("damage", ["truncate_meta", "empty_meta", "no_params", "checksum_mismatch"])
def test_damaged_flow_checkpoint_is_removed_to_be_recomputed(tmp_path, damage):
  import os
  import shutil
  flow, w, r = _perturbed_flow(learned_mixing=True)
  ckpt = tmp_path / "flow"
  flows.save(str(ckpt), flow)
  loaded = flows.load_or_none(str(ckpt))
  np.testing.assert_array_equal(_nll(loaded, w, r), _nll(flow, w, r))   # intact: loaded
  meta = ckpt / "meta.json"
  if damage == "truncate_meta":
    meta.write_bytes(meta.read_bytes()[:len(meta.read_bytes()) // 2])
  elif damage == "empty_meta":
    meta.write_bytes(b"")
  elif damage == "no_params":
    shutil.rmtree(ckpt / "params")
  else:   # a changed weight: the restored params no longer hash to params_sha256
    import json
    m = json.loads(meta.read_text())
    m["params_sha256"] = "0" * 64
    meta.write_text(json.dumps(m))
  logged = []
  assert flows.load_or_none(str(ckpt), log=logged.append) is None
  assert not os.path.exists(ckpt) and len(logged) == 1 and "recomputing it" in logged[0], logged
  assert flows.load_or_none(str(tmp_path / "absent")) is None
  flows.save(str(ckpt), flow)   # an intact flow of another kind of base is refused, not removed
  with pytest.raises(flows.io.CheckpointError, match="Gaussian base"):
    flows.load_or_none(str(ckpt), base=flows.GaussianBaseline(link=None, chol=jnp.eye(6)))
  assert ckpt.exists()


def test_damaged_flow_is_a_corrupt_file_for_the_runner(tmp_path):
  """`load` (what later stages call) reports damage as CorruptFileError on meta.json, which
  the runner answers by running the owning stage again (pipeline.remove_corrupt removes
  the whole checkpoint directory for a meta.json)."""
  flow, _, _ = _perturbed_flow(learned_mixing=False)
  ckpt = tmp_path / "flow"
  flows.save(str(ckpt), flow)
  (ckpt / "meta.json").write_bytes((ckpt / "meta.json").read_bytes()[:20])
  with pytest.raises(flows.io.CorruptFileError) as e:
    flows.load(str(ckpt))
  assert e.value.path == str(ckpt / "meta.json")
