"""Stage `invariances`: resumes after a kill to a clean run's outputs; its analysis helpers
against scikit-learn / scipy."""
import pathlib
import shutil
import sys

import jax
import numpy as np
import pytest
import scipy.spatial.distance
import scipy.stats
import sklearn.linear_model
import sklearn.metrics
import sklearn.preprocessing

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lis_jax import io, pipeline  # noqa: E402
from lis_jax.stages import invariances  # noqa: E402
from tests import interrupt  # noqa: E402

# float64 closed forms vs scikit-learn's / scipy's float64 paths.
CLOSED_FORM_TOL = 1e-9


def _config():
  from configs import tiny
  cfg = tiny.get_config()
  cfg.update_from_flattened_dict({"generator": "tests.tiny_models:generator",
                                  "classifier": "tests.tiny_models:classifier", "classes": "0,2,4"})
  cfg.stages = ("paired_data", "link", "invariances")
  cfg.invariances = invariances.default_config()
  cfg.invariances.update(dict(n_blocks=2, hidden=16, depth=1, embed_dim=4, embed_hidden=16,
                              epochs=4, save_every=2, warmup_steps=2, n_conditions=6,
                              samples_per_condition=3, conditions_per_block=2, n_mix=2,
                              render_batch_size=8,
                              part_metric_train=0))   # no quantify here: no part metrics to read out
  return cfg


def test_resumes_after_kills_to_the_clean_run(tmp_path, monkeypatch):
  cfg = _config()
  ref, work = tmp_path / "ref", tmp_path / "work"
  pipeline.run(cfg, str(ref))
  for d in ("paired_data", "link"):   # the stages it requires, done once
    shutil.copytree(ref / d, work / d)
  cfg.stages = ("invariances",)
  for point in ("invariances.train:2", "invariances:2"):   # mid-training, mid-sampling
    interrupt.run_until(monkeypatch, cfg, str(work), point)
  pipeline.run(cfg, str(work))

  out_ref, out_work = ref / "invariances", work / "invariances"
  def files(d):   # Orbax names its files at random: checkpoints are compared by value below.
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()
                  and "params" not in p.relative_to(d).parts)
  assert files(out_ref) == files(out_work)
  assert (out_ref / "block_00002.npz").exists()   # 6 conditions, 2 per block: 3 blocks
  for rel in files(out_ref):
    if rel.endswith(".npz"):
      a, b = np.load(out_ref / rel), np.load(out_work / rel)
      assert a.files == b.files
      for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{rel}:{k}")
    elif rel.endswith(".json"):
      assert io.read_json(out_ref / rel) == io.read_json(out_work / rel), rel
  a, b = invariances.load(str(ref)), invariances.load(str(work))
  for x, y in zip(jax.tree_util.tree_leaves(a.flow.params), jax.tree_util.tree_leaves(b.flow.params)):
    np.testing.assert_array_equal(x, y)
  assert set(a.summary["r_consistency"]) == set(invariances.METHODS)
  assert a.samples["w_flow"].shape == (6, 3, a.flow.w_dim)
  assert a.summary["concepts"] is None   # the tiny generator knows no factors


def test_readout_r2_matches_sklearn():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 5))
  y = x @ rng.normal(size=(5, 3)) + rng.normal(size=(200, 3)) * [0.1, 1.0, 5.0]
  train, test = np.arange(150), np.arange(150, 200)
  ref = sklearn.linear_model.LinearRegression().fit(x[train], y[train])
  want = sklearn.metrics.r2_score(y[test], ref.predict(x[test]), multioutput="raw_values")
  np.testing.assert_allclose(invariances.readout_r2(x, y, train, test), want, atol=CLOSED_FORM_TOL)


def test_ridge_readout_r2_matches_sklearn():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(60, 40)) * rng.uniform(0.5, 3, size=40) + 1.0
  y = x[:, :3] @ rng.normal(size=(3, 2)) + rng.normal(size=(60, 2))
  train, test = np.arange(40), np.arange(40, 60)
  alpha = 0.3
  xs = sklearn.preprocessing.StandardScaler().fit(x[train])
  ref = sklearn.linear_model.Ridge(alpha=alpha * train.size).fit(xs.transform(x[train]), y[train])
  want = sklearn.metrics.r2_score(y[test], ref.predict(xs.transform(x[test])), multioutput="raw_values")
  np.testing.assert_allclose(invariances.readout_r2(x, y, train, test, alpha), want, atol=CLOSED_FORM_TOL)


def test_cosine_and_consistency_match_scipy():
  rng = np.random.default_rng(1)
  r = rng.normal(size=(4, 6))
  rp = r[:, None] + rng.normal(size=(4, 5, 6)) * 0.5
  want = np.array([[1 - scipy.spatial.distance.cosine(rp[i, j], r[i]) for j in range(5)] for i in range(4)])
  np.testing.assert_allclose(invariances.cosine(rp, r[:, None]), want, atol=CLOSED_FORM_TOL)
  pred, pred_p = np.array([0, 1, 2, 3]), np.array([[0] * 5, [1] * 4 + [0], [0] * 5, [3] * 5])
  got = invariances.r_consistency(r, rp, pred, pred_p)
  assert got["median_cos"] == pytest.approx(np.median(want), abs=CLOSED_FORM_TOL)
  assert got["agreement"] == pytest.approx(14 / 20)


def test_circular_std_matches_scipy():
  rng = np.random.default_rng(3)
  x = np.stack([rng.normal(size=50), (0.95 + rng.normal(size=50) * 0.05) % 1.0], -1)   # [50, 2]
  periods = np.array([np.inf, 1.0])
  got = invariances.factor_std(x, 0, periods)
  assert got[0] == pytest.approx(x[:, 0].std(), abs=CLOSED_FORM_TOL)
  assert got[1] == pytest.approx(scipy.stats.circstd(x[:, 1], high=1.0, low=0.0), abs=CLOSED_FORM_TOL)
  assert got[1] < 0.1 < x[:, 1].std()   # hue wrapping at 1 is one cluster, not two


def test_pick_conditions_cycles_through_classes():
  cls = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
  rows = np.array([0, 1, 3, 4, 5, 6, 7])
  np.testing.assert_array_equal(invariances.pick_conditions(rows, cls, 5), [0, 3, 5, 1, 4])
