"""The plan (lis_jax/plan.py, main --plan): counts from the config, the budget's batches, refusals."""
import logging
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import demo, tiny
from lis_jax import context, memory, plan


FLOPS_PER_CALL_SHARE = 0.05


@pytest.fixture(scope="module")
def models():
  config = tiny.get_config()
  return config, *context.load_models(config, "/nonexistent")


def test_counts_batches_and_flops(models):
  config, G, clf = models
  plans = {p.stage: p for p in plan.make(config, G, clf, memory.Budget(64 * memory.GiB, "test"),
                                         time_probe=False)}
  assert list(plans) == ["paired_data", "link", "sweep", "counterfactual"]
  # Counts by hand from configs/tiny.py: 3 classes x 48 kept samples; 6 units x 3 classes
  # x 2 samples x 3 steps; 6 ordered pairs x 2 searches x 20 / 5 checks (at most); in
  # 'image' mode also 20 gradient steps through the image per search.
  assert plans["paired_data"].calls[0].images == 3 * 48
  assert plans["sweep"].calls[0].images == 6 * 3 * 2 * 3
  assert [c.kind for c in plans["counterfactual"].calls] == ["synthesise+classify"]
  assert plans["counterfactual"].calls[0].images == 6 * 2 * 4 and plans["counterfactual"].work.upper_bound
  dims = plan.Dims(n_classes=3, feature_dim=clf.feature_dim)
  image = plan.merged_sections(config)
  image["counterfactual"].mode = "image"   # merged_sections: fresh copies
  work = plan.WORK["counterfactual"](image, dims)
  assert work.images == {"synthesise+classify": 6 * 2 * 4, "search step": 6 * 2 * 20}
  sweep = plans["sweep"].calls[0]
  assert sweep.choice.batch == 8 and sweep.setting == "sweep.batch_size"   # ample memory: the max
  # FLOPs = images x XLA's per-image count of the same call at batch 1 (the plan counts at
  # a larger batch, where the per-call part is shared: measured 2.4% fewer per image).
  one = memory.analyse(plan._synthesise_classify, (G, clf), np.zeros((1, G.w_dim), np.float32), 1)
  assert sweep.flops == pytest.approx(sweep.images * one.flops, rel=FLOPS_PER_CALL_SHARE)
  text = plan.table(list(plans.values()), memory.Budget(64 * memory.GiB, "test"))
  assert "sweep" in text and "<=48" in text


def test_a_stage_that_cannot_fit_is_refused_naming_its_setting(models):
  config, G, clf = models
  plans = plan.make(config, G, clf, memory.Budget(2000, "test"), time_probe=False)
  assert all(p.refused for p in plans)
  assert plan.refusal(plans).startswith("paired_data: synthesise+classify needs")
  assert "lower paired_data.batch_size" in plan.refusal(plans)


def test_the_stages_measuring_call_reuses_the_plans_compilation(models, caplog):
  # plan.OWN_CALLS: segment+measure is planned as the stages' own jitted call at their
  # batch, so measuring.measure at that batch compiles no _measure of its own (the demo's
  # compiles in ~4 s; before, the plan compiled two probes and boundary its own).
  from lis_jax.quantify import measuring, segment
  _, G, clf = models
  sections = plan.merged_sections(demo.get_config())   # its head and concepts
  planner = plan.Planner(G, clf, sections, memory.Budget(64 * memory.GiB, "test"), time_probe=False)
  fn, (_, params) = planner._fn("segment+measure")
  seg = segment.Segmenter(params, {"layers": fn.keywords["layers"], "size": sections["quantify"].head,
                                   "resolution": fn.keywords["resolution"],
                                   "part_names": [f"p{i}" for i in range(fn.keywords["num_parts"])]})
  w = np.random.default_rng(0).normal(size=(11, G.w_dim)).astype(np.float32)
  compiled = lambda: sum("compilation of jit(_measure)" in r.getMessage() for r in caplog.records)
  jax.config.update("jax_log_compiles", True)
  try:
    with caplog.at_level(logging.WARNING):
      planner.call("boundary", "segment+measure", "boundary.measure_batch", 8, 11)
      assert compiled() == 1
      m = measuring.measure(G, seg, w, 8, sections["quantify"].max_components,
                            entropy=measuring.uses_entropy(sections["quantify"]))
      assert compiled() == 1   # the plan's compilation, found in jax's cache
  finally:
    jax.config.update("jax_log_compiles", False)
  assert m["area"].shape == (11, fn.keywords["num_parts"])   # parts but the background, + the object


def test_main_plan_flag(tmp_path):
  r = subprocess.run([sys.executable, "-m", "lis_jax.main", "--config=configs/tiny.py",
                      f"--workdir={tmp_path}", "--plan"], capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.startswith("plan (memory budget") and "counterfactual" in r.stdout
  assert not any(tmp_path.iterdir())   # a plan writes nothing


def test_a_run_prints_the_plan_first_and_refuses_what_cannot_fit(tmp_path):
  # 8 pairs per class (tiny's 48 cost seconds of sampling): the test asserts that the plan
  # comes first and the stages then run, or are refused before any of them, not their numbers
  # (an underdetermined link only warns).
  base = [sys.executable, "-m", "lis_jax.main", "--config=configs/tiny.py",
          "--config.stages=paired_data,link", "--config.plan_at_start=True",
          "--config.paired_data.n_per_class=8"]
  r = subprocess.run(base + [f"--workdir={tmp_path / 'ok'}"], capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.startswith("plan (memory budget")
  assert (tmp_path / "ok" / "link").is_dir()
  r = subprocess.run(base + [f"--workdir={tmp_path / 'no'}", "--config.memory_gb=0.000001"],
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 1
  assert r.stderr.strip().splitlines()[-1].startswith("error: paired_data: synthesise+classify needs")
  assert not (tmp_path / "no" / "paired_data").exists()   # refused before any stage ran


def test_a_run_plans_with_its_own_models_once_its_config_is_checked(tmp_path, monkeypatch, capsys):
  """The plan at a run's start uses the run's models (each loaded once, not once for the plan
  and again for the stages) and comes after the config's values are checked: a bad value
  is one error line before anything is compiled."""
  from lis_jax import classifiers, generators
  from tests.test_reliability import assert_one_line, cli
  loads = []
  for module in (generators, classifiers):
    real = module.load
    monkeypatch.setattr(module, "load", lambda *a, real=real, **k: loads.append(a[0]) or real(*a, **k))
  base = ["--config=configs/tiny.py", "--config.stages=paired_data", "--config.plan_at_start=True",
          "--config.paired_data.n_per_class=8"]
  rc, err = cli(monkeypatch, *base, f"--workdir={tmp_path / 'ok'}")
  assert rc == 0, err
  assert capsys.readouterr().out.startswith("plan (memory budget")
  config = tiny.get_config()
  assert sorted(loads) == sorted([config.generator, config.classifier])
  loads.clear()
  rc, err = cli(monkeypatch, *base, "--config.psi=-1", f"--workdir={tmp_path / 'bad'}")
  assert_one_line(rc, err, r"config.psi=-1")
  assert loads == [] and "plan (memory budget" not in capsys.readouterr().out
