"""The offline demo (configs/demo.py, reduced) end to end, and the report's unit analysis.

Outside truths: the report's numbers must be the ones the stages wrote (link metrics,
counterfactual results), and on a sweep built so that only one known factor of the
world moves, the unit -> factor table must name that factor.
"""
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT))  # configs/ is not an installed package.
from configs import demo  # noqa: E402
from lis_jax import classifiers, generators, io, linking, pipeline  # noqa: E402
from lis_jax.generators import shapes  # noqa: E402
from lis_jax.stages import sweep  # noqa: E402


def reduced_config():
  config = demo.get_config()
  config.paired_data.n_per_class = 30  # 240 pairs
  config.paired_data.shard_size = 32
  config.link.cycle_samples = 16
  config.sweep.units = "0:8"
  config.sweep.samples_per_class = 1
  config.sweep.n_steps = 3
  config.sweep.units_per_block = 4
  config.sweep.batch_size = 32
  config.counterfactual.samples_per_pair = 1  # 56 searches (all ordered pairs of the 8 classes)
  config.counterfactual.max_steps = 100
  config.counterfactual.check_every = 10
  config.report.n_top = 2
  config.report.n_bottom = 1
  config.quantify.epochs = 5  # the segmenter's quality is tested in test_quantify_segment.py
  config.quantify.n_labelled = 4
  config.quantify.n_heldout = 8
  config.quantify.samples_per_unit = 2
  config.quantify.cards = 2
  config.invariances.update(dict(n_blocks=2, hidden=32, epochs=2, n_conditions=8,  # 24 held-out pairs
                                 samples_per_condition=3, conditions_per_block=8, n_mix=2))
  return config


def test_reduced_demo_end_to_end(tmp_path, monkeypatch):
  workdir = str(tmp_path / "demo")
  config = reduced_config()
  pipeline.run(config, workdir)
  # A fresh report (a new run of the report stage alone) loads each model once.
  loads = []
  for module in (generators, classifiers):
    real = module.load
    monkeypatch.setattr(module, "load", lambda *a, real=real, **k: loads.append(a[0]) or real(*a, **k))
  os.remove(os.path.join(workdir, "report", "index.html"))
  config.stages = ("report",)
  pipeline.run(config, workdir)
  assert sorted(loads) == sorted([config.generator, config.classifier])

  page = open(os.path.join(workdir, "report", "index.html")).read()
  summary = io.read_json(os.path.join(workdir, "report", "summary.json"))
  metrics = io.read_json(os.path.join(workdir, "link", "metrics.json"))
  with np.load(os.path.join(workdir, "counterfactual", "results.npz")) as f:
    success = f["success"]

  assert "held-out R^2" in page and f"{metrics['test']['r2']:.4f}" in page
  assert summary["link"]["heldout_r2"] == metrics["test"]["r2"]
  assert success.size == 56 and summary["counterfactual"]["n"] == 56
  m = re.search(r"Success rate: ([0-9.]+)</b> \((\d+) of (\d+) searches", page)
  assert m and float(m.group(1)) == round(success.mean(), 3) and int(m.group(2)) == success.sum()
  assert "Units and the ground truth" in page and "moves most" in page
  units = summary["sweep"]["units"]
  assert sorted(u["unit"] for u in units) == list(range(8))
  assert all(u["top_factor"] in shapes.FACTOR_NAMES for u in units)
  inv = io.read_json(os.path.join(workdir, "invariances", "summary.json"))
  assert summary["invariances"]["nll"] == inv["nll"] and "Invariances: what the classifier" in page
  assert f"{inv['r_consistency']['flow']['median_cos']:.4f}" in page and "Mixing" in page
  for name in ("report/sweeps.png", "report/counterfactuals.png", "sweep/unit_factors.csv"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0


def test_unit_table_names_the_factor_a_sweep_moves(tmp_path):
  """A hand-made sweep: unit k moves only factor FACTOR_NAMES[k] of the world (z coordinate k)."""
  G = generators.load("shapes")
  picked = ["pos_x", "body_lum", "rotation", "bg_hue"]
  n_steps, n_samples = 4, 2
  base = jax.random.normal(jax.random.PRNGKey(3), (n_samples, G.z_dim)) * 0.3
  steps = jnp.linspace(-1.5, 1.5, n_steps)
  w = []
  for name in picked:
    k = shapes.FACTOR_NAMES.index(name)
    z = jnp.repeat(base[:, None], n_steps, 1).at[:, :, k].add(steps)  # [S, T, z_dim]
    ws = G.mapping(z.reshape(-1, G.z_dim), jnp.full((n_samples * n_steps,), 2), psi=1.0)
    w.append(np.asarray(ws[:, 0]).reshape(n_samples, n_steps, -1))
  w = np.stack(w)  # [U, S, T, w_dim]
  rows = sweep.unit_rows([{"units": np.arange(len(picked)), **sweep.factor_analysis(G, w)}])
  got = {r["unit"]: r["top_factor"] for r in rows}
  assert got == dict(enumerate(picked))
  assert all(r["class_change"] < 1e-3 for r in rows)  # the class never moved


def test_report_shows_only_what_ran_and_checks_section_names(tmp_path):
  workdir = str(tmp_path)
  metrics = {"kind": "ols", "n_train": 9, "n_test": 1,
             "test": {"r2": 0.5, "mse": 0.25, "r2_per_dim": [0.4, 0.6]},
             "train": {"r2": 0.75, "mse": 0.125}}
  link = linking.Link(params={"A": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)})
  linking.save(os.path.join(workdir, "link", "model"), link)
  io.save_npz(os.path.join(workdir, "link", "split.npz"), train=np.arange(9), test=np.arange(9, 10))
  io.write_json(os.path.join(workdir, "link", "metrics.json"), metrics)
  config = demo.get_config()
  config.stages = ("report",)
  pipeline.run(config, workdir)
  page = open(os.path.join(workdir, "report", "index.html")).read()
  assert "held-out R^2" in page and "0.5000" in page
  assert "Counterfactuals" not in page and "Unit sweeps" not in page
  config.report.sections = "link,no_such_section"
  with pytest.raises(pipeline.PipelineError, match="no_such_section"):
    pipeline.run(config, workdir)
