"""Pipeline stage functions against direct one-sample computations and closed forms."""
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lis_jax import context, errors, generators, images, io, linking, pipeline, spec  # noqa: E402
from lis_jax.stages import counterfactual as counterfactuals  # noqa: E402
from lis_jax.stages import paired_data, sweep as sweeps  # noqa: E402
from tests import tiny_models  # noqa: E402

# Batched vs one-sample evaluation of the same float32 network: only summation order differs.
F32_TOL = dict(rtol=1e-5, atol=1e-6)
# uint8 images of float32 values that agree to ~1e-6 can still truncate to neighbours.
UINT8_TOL = 1


@pytest.fixture(scope="module")
def models():
  """Tiny G and clf, and an OLS link fitted on 200 of their pairs."""
  G = tiny_models.generator()
  clf = tiny_models.classifier()
  ws, r, _ = paired_data._generate(G, clf, jax.random.PRNGKey(0), jnp.arange(200) % 5,
                                   jnp.arange(200), psi=0.7)
  link = linking.Link(params=linking.fit_linear(np.asarray(r), np.asarray(ws[:, 0])), kind="ols")
  return G, clf, link, np.asarray(r)


# ----------------------------------------------------------------------------- paired data


def test_generate_matches_one_sample_at_a_time(models):
  G, clf, _, _ = models
  key = jax.random.PRNGKey(3)
  cls = jnp.array([1, 1, 4, 2], jnp.int32)
  index = jnp.array([0, 5, 2, 7], jnp.int32)
  ws, r, logits = paired_data._generate(G, clf, key, cls, index, psi=0.7)
  for i in range(4):
    z = jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, cls[i]), index[i]), (G.z_dim,))
    ws_i = G.mapping(z[None], cls[i:i + 1], psi=0.7)
    r_i = clf.features(clf.preprocess(G.synthesis(ws_i)))
    np.testing.assert_allclose(ws[i], ws_i[0], **F32_TOL)
    np.testing.assert_allclose(r[i], r_i[0], **F32_TOL)
    np.testing.assert_allclose(logits[i], clf.head(r_i)[0], **F32_TOL)


def _config(**over):
  cfg = ConfigDict({
      "generator": "tests.tiny_models:generator", "classifier": "tests.tiny_models:classifier",
      "stages": ("paired_data",), "classes": "0,4", "psi": 0.7, "seed": 0,
      "paired_data": dict(n_per_class=5, keep_only_correct=True, store_all_ws=True, batch_size=4,
                          shard_size=6, max_tries_factor=40.0),
  })
  cfg.update_from_flattened_dict(over)
  return cfg


def test_paired_data_keeps_first_correct_samples_of_each_stream(tmp_path, models):
  G, clf, _, _ = models
  cfg = _config()
  pipeline.run(cfg, str(tmp_path))
  data = paired_data.load(str(tmp_path))
  data = {k: getattr(data, k) for k in ("cls", "seed_index", "logits", "w", "ws")}
  key = context.stream_key(cfg.seed, "paired_data")
  for c in (0, 4):
    stream = np.arange(200, dtype=np.int32)
    _, _, logits = paired_data._generate(G, clf, key, jnp.full((200,), c, jnp.int32), stream, psi=0.7)
    first_correct = stream[np.asarray(logits).argmax(-1) == c][:5]
    got = data["seed_index"][data["cls"] == c]
    np.testing.assert_array_equal(got, first_correct)
  assert (data["logits"].argmax(-1) == data["cls"]).all()
  np.testing.assert_array_equal(data["w"], data["ws"][:, 0])


def test_paired_data_gives_up_with_a_clear_message(tmp_path):
  cfg = _config(**{"paired_data.max_tries_factor": 1.0, "paired_data.n_per_class": 50,
                   "paired_data.shard_size": 50, "classes": "3"})
  with pytest.raises(errors.PipelineError, match="keep_only_correct=False"):
    pipeline.run(cfg, str(tmp_path))


# ----------------------------------------------------------------------------- sweeps


def test_unit_trajectories_closed_form():
  r = np.arange(12, dtype=np.float32).reshape(3, 4)
  units = np.array([2, 0], np.int32)
  values = np.array([[10, 11], [20, 21]], np.float32)
  traj = np.asarray(sweeps.unit_trajectories(r, units, values))
  want = np.broadcast_to(r[None, :, None, :], (2, 3, 2, 4)).copy()
  want[0, :, :, 2] = [10, 11]
  want[1, :, :, 0] = [20, 21]
  np.testing.assert_array_equal(traj, want)


@pytest.mark.parametrize("mode", ["minmax", "std"])
def test_sweep_values(mode):
  r = np.random.default_rng(1).normal(size=(40, 5))
  units = np.array([4, 1])
  values, _ = sweeps.sweep_values(r, units, 3, mode, k_std=2.0)
  x = r[:, units]
  lo, hi = ((x.min(0), x.max(0)) if mode == "minmax"
            else (x.mean(0) - 2 * x.std(0), x.mean(0) + 2 * x.std(0)))
  np.testing.assert_allclose(values, np.stack([lo, (lo + hi) / 2, hi], 1), rtol=1e-6)


def test_sweep_block_matches_direct_computation(models):
  G, clf, link, _ = models
  rng = np.random.default_rng(2)
  r_start = np.abs(rng.normal(size=(2, clf.feature_dim))).astype(np.float32)
  units = np.array([3, 7, 0], np.int32)
  values = rng.normal(size=(3, 4)).astype(np.float32)
  cls = np.array([1, 2], np.int32)
  out = sweeps._sweep_block(G, clf, link, r_start, units, values, cls, batch_size=5,
                            reclassify=True, mesh=None)
  for u in range(3):
    for s in range(2):
      r = np.repeat(r_start[s][None], 4, 0)
      r[:, units[u]] = values[u]
      w = r @ link.params["A"] + link.params["b"]
      img = G.synthesis(generators.broadcast_ws(jnp.asarray(w), G.num_ws))
      rp = clf.features(clf.preprocess(img))
      np.testing.assert_allclose(out["w"][u, s], w, **F32_TOL)
      diff = np.abs(out["img"][u, s].astype(int) - np.asarray(images.to_uint8(img), int))
      assert diff.max() <= UINT8_TOL
      np.testing.assert_allclose(out["r_prime_unit"][u, s], rp[:, units[u]], **F32_TOL)
      np.testing.assert_allclose(out["r_prime"][u, s], rp, **F32_TOL)
      probs = jax.nn.softmax(clf.head(out["r_prime"][u, s]))   # the head amplifies r' noise
      np.testing.assert_allclose(out["p_cls"][u, s], probs[:, cls[s]], **F32_TOL)


# ----------------------------------------------------------------------------- counterfactuals

# lr 0.01 suits the tiny classifier's steep head (0.5 suits ResNet50's).
SEARCH = dict(lr=0.01, w_origin=0.6, w_cos=10.0, mode="reference")


def _searches(models, n=6):
  G, clf, link, _ = models
  rng = np.random.default_rng(4)
  r = np.abs(rng.normal(size=(n, clf.feature_dim))).astype(np.float32)
  origin = np.asarray(clf.head(r)).argmax(-1).astype(np.int32)
  target = ((origin + 1 + np.arange(n) % 3) % clf.num_classes).astype(np.int32)
  shift0 = counterfactuals.initial_shift(jax.random.PRNGKey(0), jnp.arange(n), clf.feature_dim)
  return r, origin, target, np.asarray(shift0)


def _reference_loop(models, r, origin, target, shift, max_steps, w_origin=0.6, w_cos=10.0, lr=0.01):
  """The reference's one-search loop: SGD step, then the image check, until success or the cap."""
  G, clf, link, _ = models
  loss = lambda s: counterfactuals.search_loss(G, clf, link, r[None], s[None], origin[None],
                                               target[None], w_origin=w_origin, w_cos=w_cos,
                                               mode="reference")[0]
  grad = jax.jit(jax.grad(loss))
  pred = jax.jit(lambda s: counterfactuals.image_logits(G, clf, link, (r - s)[None])[0].argmax())
  for step in range(1, max_steps + 1):
    shift = shift - lr * grad(shift)
    if int(pred(shift)) == target:
      return shift, step, True
  return shift, max_steps, False


def test_batched_search_equals_reference_loop(models):
  G, clf, link, _ = models
  r, origin, target, shift0 = _searches(models)
  res = counterfactuals._search(G, clf, link, r, origin, target, shift0, np.ones(6, bool),
                                max_steps=20, check_every=1, **SEARCH)
  assert 2 <= res["success"].sum() < 6, "the test needs both outcomes (and <= 4 left running)"
  for i in range(6):
    s, steps, ok = _reference_loop(models, r[i], origin[i], target[i], shift0[i], 20)
    assert bool(res["success"][i]) == ok and int(res["steps"][i]) == steps
    np.testing.assert_allclose(res["shift"][i], s, **F32_TOL)


@pytest.mark.parametrize("mode", ["reference", "image"])
def test_compacted_search_equals_full(models, mode):
  G, clf, link, _ = models
  r, origin, target, shift0 = _searches(models)
  args = (G, clf, link, r, origin, target, shift0, np.ones(6, bool))
  kw = dict(SEARCH, max_steps=12, check_every=2, mode=mode)
  full = counterfactuals._search(*args, compact_rows=0, **kw)
  comp = counterfactuals._search(*args, compact_rows=4, **kw)
  assert 0 < (~np.asarray(full["success"])).sum() <= 4, "the compacted branch must run"
  np.testing.assert_array_equal(comp["steps"], full["steps"])
  np.testing.assert_array_equal(comp["success"], full["success"])
  np.testing.assert_allclose(comp["shift"], full["shift"], **F32_TOL)


def test_check_every_k_stops_at_multiples_of_k(models):
  G, clf, link, _ = models
  r, origin, target, shift0 = _searches(models)
  res = counterfactuals._search(G, clf, link, r, origin, target, shift0, np.ones(6, bool),
                                max_steps=60, check_every=7, **SEARCH)
  steps = np.asarray(res["steps"])
  ok = np.asarray(res["success"])
  assert (steps[ok] % 7 == 0).all() and (steps[~ok] == 60).all()


def test_inactive_rows_do_not_move(models):
  G, clf, link, _ = models
  r, origin, target, shift0 = _searches(models)
  active = np.array([True, False] * 3)
  res = counterfactuals._search(G, clf, link, r, origin, target, shift0, active,
                                max_steps=10, check_every=1, **SEARCH)
  np.testing.assert_array_equal(res["shift"][~active], shift0[~active])
  assert (np.asarray(res["steps"])[~active] == 0).all()


def test_image_mode_gradient_matches_finite_differences(models):
  G, clf, link, _ = models
  r, origin, target, shift0 = _searches(models, n=1)
  with jax.enable_x64(True):
    G, clf, link, r, shift0 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64),
                                                     (G, clf, link, r, shift0))
    f = jax.jit(lambda s: counterfactuals.search_loss(G, clf, link, r, s, origin, target, w_origin=0.6,
                                                      w_cos=10.0, mode="image").sum())
    g = jax.grad(f)(shift0)
    eps = 1e-5
    for d in (0, 5):
      e = jnp.zeros_like(g).at[0, d].set(eps)
      fd = (f(shift0 + e) - f(shift0 - e)) / (2 * eps)
      # Central differences in float64: error O(eps^2) plus roundoff ~1e-10 / eps.
      assert float(g[0, d]) == pytest.approx(float(fd), rel=1e-4, abs=1e-6)
    assert float(jnp.abs(g).sum()) > 0


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("fn,spec,limit,match", [
    (spec.parse_classes, "1,1000", 1000, r"unknown class id\(s\) \[1000\]"),
    (spec.parse_classes, "pets", 1000, "neither a class group"),
    (spec.parse_classes, "-1", 1000, "unknown class id"),
    (spec.parse_units, "0,5:9,2048", 2048, r"unit\(s\) \[2048\] out of range"),
    (spec.parse_units, "a:b", 2048, "expected 'all'"),
])
def test_bad_specs(fn, spec, limit, match):
  with pytest.raises(errors.PipelineError, match=match):
    fn(spec, limit)


def test_parse_units_ranges():
  np.testing.assert_array_equal(spec.parse_units("0,5:8, 2", 10), [0, 5, 6, 7, 2])
  np.testing.assert_array_equal(spec.parse_classes("dogs", 1000), [232, 254, 151, 197, 178])


def test_incompatible_workdir_is_refused(tmp_path):
  context.check_stage_config(str(tmp_path), {"psi": 0.7, "link": {"kind": "ols"}})
  context.check_stage_config(str(tmp_path), {"psi": 0.7, "link": {"kind": "ols"}})   # same: fine
  # Nothing made with the first config yet: a corrected config replaces it.
  context.check_stage_config(str(tmp_path), {"psi": 0.5, "link": {"kind": "ols"}})
  (tmp_path / "block_00000.npz").write_bytes(b"an output made with psi 0.5")
  with pytest.raises(errors.PipelineError, match=r"link.kind: 'ols' -> 'ridge'"):
    context.check_stage_config(str(tmp_path), {"psi": 0.5, "link": {"kind": "ridge"}})


def test_missing_checkpoint_names_the_converter(tmp_path):
  sys.path.insert(0, _root())
  from configs import linear
  with pytest.raises(errors.PipelineError, match="python -m converters.stylegan_xl --pkl imagenet256.pkl"):
    context.load_models(linear.get_config(), str(tmp_path))


def test_nan_paired_data_stops_the_link(tmp_path, models):
  cfg = _config(**{"paired_data.keep_only_correct": False})
  pipeline.run(cfg, str(tmp_path))
  shard = tmp_path / "paired_data" / "shard_c0000_00000.npz"
  arrays = io.load_npz(str(shard))
  arrays["r"][1, 2] = np.nan
  io.save_npz(str(shard), **arrays)   # NaN with a valid checksum: caught by the check on read
  cfg.link = ConfigDict(dict(kind="ols", holdout_fraction=0.2, cycle_samples=0))
  cfg.stages = ("link",)
  with pytest.raises(errors.PipelineError,
                     match=r"shard_c0000_00000.npz: 'r' holds 1 NaN/inf.*add 'paired_data' to config"):
    pipeline.run(cfg, str(tmp_path))
  assert not (tmp_path / "link" / "metrics.json").exists()


def _root():
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- stages on the same inputs

# OLS in float32 (SVD) vs scikit-learn's float64 fit of the same well-posed problem.
OLS_TOL = dict(rtol=1e-3, atol=1e-4)


def test_link_and_sweep_stages_depend_only_on_their_inputs(tmp_path, models):
  """The link and sweep stages draw no random numbers (OLS): given the paired data, the
  link is scikit-learn's LinearRegression on the split seeded from its stream, and every sweep w is the
  link of the start r with the unit set to linspace(min, max) of its paired-data values."""
  from sklearn.linear_model import LinearRegression
  from sklearn.metrics import r2_score
  from lis_jax.stages import link as link_stage
  cfg = _config(**{"paired_data.keep_only_correct": False, "paired_data.n_per_class": 30,
                   "paired_data.shard_size": 30})
  cfg.stages = ("paired_data", "link", "sweep")
  cfg.link = ConfigDict(dict(holdout_fraction=0.2, cycle_samples=0))
  cfg.sweep = ConfigDict(dict(units="1,6,3", samples_per_class=2, n_steps=3, units_per_block=2,
                              batch_size=4, save_png=False))
  pipeline.run(cfg, str(tmp_path))
  data = paired_data.load(str(tmp_path))
  res = link_stage.load(str(tmp_path))
  # the split's generator is seeded from the run's stream 'link.split' (docs/architecture.md)
  perm = np.random.default_rng(context.stream_seed(cfg.seed, "link.split")).permutation(data.r.shape[0])
  np.testing.assert_array_equal(res.test, np.sort(perm[:12]))      # 20% of 60 pairs
  sk = LinearRegression().fit(data.r[res.train].astype(np.float64), data.w[res.train])
  np.testing.assert_allclose(res.link.params["A"], sk.coef_.T, **OLS_TOL)
  np.testing.assert_allclose(res.link.params["b"], sk.intercept_, **OLS_TOL)
  want_r2 = r2_score(data.w[res.test], sk.predict(data.r[res.test]))
  assert res.metrics["test"]["r2"] == pytest.approx(want_r2, abs=1e-4)

  sw = sweeps.load(str(tmp_path))
  units = np.array([1, 6, 3])
  lo, hi = data.r[:, units].min(0), data.r[:, units].max(0)
  blocks = list(sw.blocks())
  got_units = np.concatenate([b["units"] for b in blocks])
  np.testing.assert_array_equal(got_units, units)
  w = np.concatenate([b["w"] for b in blocks])                       # [U, S, T, w_dim]
  for u in range(3):
    for s, row in enumerate(sw.rows):
      r = np.repeat(data.r[row][None], 3, 0)
      r[:, units[u]] = np.linspace(lo[u], hi[u], 3)
      np.testing.assert_allclose(w[u, s], r @ res.link.params["A"] + res.link.params["b"], **F32_TOL)
