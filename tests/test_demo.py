"""The offline demo (configs/demo.py, reduced) end to end, and the report's unit analysis.

Outside truths: the report's numbers must be the ones the stages wrote (link metrics,
counterfactual results), and on a sweep built so that only one known factor of the
world moves, the unit -> factor table must name that factor.
"""
import os
import re
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT))  # configs/ is not an installed package.
from configs import demo  # noqa: E402
from lis_jax import classifiers, errors, generators, io, linking, pipeline  # noqa: E402
from lis_jax.generators import shapes  # noqa: E402
from lis_jax.quantify import selectivity  # noqa: E402
from lis_jax.stages import sweep  # noqa: E402
from tests.browser import browser, console_errors  # noqa: F401,E402  (fixture)
from tests import interrupt  # noqa: E402

SCREENSHOT = "report_1280.png"  # saved beside the page, for a person to look at


def reduced_config():
  config = demo.get_config()
  config.paired_data.n_per_class = 30  # 240 pairs
  config.paired_data.shard_size = 32
  config.link.cycle_samples = 16
  config.sweep.units = "0:8"
  config.sweep.samples_per_class = 1
  config.sweep.n_steps = 3
  config.sweep.units_per_block = 4
  # 8 images per synthesis call here, in the report's renders and in boundary's strips (its own
  # batch of 8): one compiled render program, and a strip of 3 frames is not padded to 32 or 256.
  config.sweep.batch_size = 8
  config.counterfactual.samples_per_pair = 1  # 56 searches (all ordered pairs of the 8 classes)
  config.counterfactual.max_steps = 100
  config.counterfactual.check_every = 10
  # (demo: 14) with 100 steps most searches run to the end, so the compacted check never starts;
  # 0 also leaves its 3 branches (14, 3, 1 rows) uncompiled. The stage ignores it (same results).
  config.counterfactual.compact_rows = 0
  config.report.n_top = 2
  config.report.n_bottom = 1
  config.report.batch_size = 8  # (demo: 256) the page renders 3-frame strips and small grids (sweep.batch_size)
  config.quantify.epochs = 5  # the segmenter's quality is tested in test_quantify_segment.py
  config.quantify.n_labelled = 4
  config.quantify.n_heldout = 8
  config.quantify.samples_per_unit = 2
  config.quantify.cards = 2
  # Images per segment-and-measure call (calls are padded to it): a block's 4 units x 2 samples
  # x 2 ends is 16 rows, the null's 2 + 20 x 2 = 42 (demo: 64, mostly padding here).
  config.quantify.batch_size = 16
  # The null's size sets only the p-values' resolution; these tests check the outputs' shapes,
  # that the report shows them and that a resumed stage matches a clean one, not the calls.
  config.quantify.null_draws = 20  # (demo: 200) the shared null: 20 x 2 start samples rendered, measured
  config.invariances.update(dict(n_blocks=2, hidden=32, epochs=2, n_conditions=8,  # 24 held-out pairs
                                 samples_per_condition=3, conditions_per_block=8, n_mix=2))
  # 56 searches -> 4 batches of 14 (resumption is tested between them; equal batches: one compile per call)
  config.boundary.batch_size = 14
  config.boundary.n_grid = 3
  config.boundary.n_iter = 4
  config.boundary.n_points = 2
  # (demo: 16) null paths per search: 56 x 2 measured images, not 56 x 16; 2 is the fewest that
  # still gives the null paths' own calls (summary 'calls.null_paths')
  config.boundary.null_draws = 2
  config.boundary.measure_batch = 16  # (demo: 64) a batch's <= 14 x 4 path points + 14 x 2 null ends, padded to 16s
  config.boundary.n_boot = 200
  # The paths' analyses at their smallest (computed as in the demo; their numbers are tested in
  # test_paths.py): t = 0, 1/2, 1 and one step past 1 (demo: 11 + 5 classifier calls per batch),
  # 2 new samples per pair for the transferred shift (demo: 16; 56 x 2 x 2 rows classified).
  config.boundary.p_points = 3
  config.boundary.p_past = 1
  config.boundary.transfer_samples = 2
  config.population.n_items = 48
  config.population.n_perm = 200
  config.population.n_boot = 100
  config.population.compare_links = "ols"  # the MLP side by side runs in the demo itself
  # photos: the stage runs on its 4 renders; the inversion's quality is tested in test_photos.py
  config.photos.num_steps = 20  # (demo: 100)
  config.photos.refine_steps = 0  # (demo: 2; the refinement inside the stage is run by test_photos.py)
  config.photos.w_avg_samples = 100  # (demo: 500)
  config.photos.max_steps = 100  # (demo: 500) the photos' counterfactual searches
  return config


@pytest.fixture(scope="module")
def reduced_demo(tmp_path_factory):
  """One reduced demo run shared by the tests of this module (its workdir)."""
  workdir = str(tmp_path_factory.mktemp("reduced") / "demo")
  # The whole run, every stage and the report, loads each model once (the run context's).
  loads = []
  with pytest.MonkeyPatch.context() as mp:
    for module in (generators, classifiers):
      real = module.load
      mp.setattr(module, "load", lambda *a, real=real, **k: loads.append(a[0]) or real(*a, **k))
    pipeline.run(reduced_config(), workdir)
  _LOADS[workdir] = loads
  return workdir


_LOADS = {}  # workdir -> the model names the reduced demo run loaded, in order


def test_reduced_demo_end_to_end(reduced_demo):
  workdir = reduced_demo
  config = reduced_config()
  assert sorted(_LOADS[workdir]) == sorted([config.generator, config.classifier])

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
  with pytest.raises(errors.PipelineError, match="no_such_section"):
    pipeline.run(config, workdir)


# ----------------------------------------------------------------------------- boundary, population, the page


def test_boundary_and_population_outputs(reduced_demo):
  from lis_jax.stages import boundary, population
  b = boundary.load(reduced_demo)
  s = b.summary
  assert s["n_searches"] == 56 and s["n_pairs"] == 56
  a = boundary._concat(b.batches())
  found = a["reach_found"]
  # The crossing is where the prediction reaches the target: known to within the bracket.
  assert np.all(a["t_reach"][found] <= 1.0) and np.all(a["width"] <= 0.5 / 2 ** 4 + 1e-7)
  assert "validation" in s and -1.0 <= s["validation"]["mean_spearman"] <= 1.0
  # pairs x measured parts (the world's 3 + the object; PART_NAMES counts the background
  # instead) x concepts
  assert len(b.rows) == 56 * len(shapes.PART_NAMES) * len(selectivity.CONCEPT_METRICS)
  p = population.load(reduced_demo).summary
  assert set(p["superposition"]["counts"]) == {"none", "single-concept", "superposed"}
  assert sum(p["superposition"]["counts"].values()) == 8  # units 0..7 swept
  assert 0.0 <= p["semantic_order"]["pooled"]["rsa"]["p"] <= 1.0


def test_boundary_resumes_after_a_crash_and_matches_a_clean_run(reduced_demo, tmp_path, monkeypatch):
  crashed = str(tmp_path / "crashed")
  shutil.copytree(reduced_demo, crashed)
  shutil.rmtree(os.path.join(crashed, "boundary"))
  config = reduced_config()
  config.stages = ("boundary",)
  interrupt.run_until(monkeypatch, config, crashed, "boundary:3")   # batch 2 measured, not written
  bdir = os.path.join(crashed, "boundary")
  assert sorted(f for f in os.listdir(bdir) if f.startswith("batch_")) == ["batch_00000.npz", "batch_00001.npz"]
  pipeline.run(config, crashed)
  for name in sorted(os.listdir(os.path.join(reduced_demo, "boundary"))):
    if name.endswith(".npz"):
      with np.load(os.path.join(reduced_demo, "boundary", name)) as x, np.load(os.path.join(bdir, name)) as y:
        assert x.files == y.files
        for k in x.files:
          np.testing.assert_array_equal(x[k], y[k], err_msg=f"{name}:{k}")
  with open(os.path.join(reduced_demo, "boundary", "pairs.csv")) as f, open(os.path.join(bdir, "pairs.csv")) as g:
    assert f.read() == g.read()


def test_report_page_in_browser(reduced_demo, browser):  # noqa: F811  (fixture)
  index = os.path.join(reduced_demo, "report", "index.html")
  browser.get("file://" + index)
  sections = browser.execute_script("return Array.from(document.querySelectorAll('section')).map(s => s.id)")
  for name in ("link", "sweep", "counterfactual", "quantify", "boundary", "population"):
    assert name in sections, sections
  toc = browser.execute_script("return Array.from(document.querySelectorAll('nav.toc a')).map(a => a.hash)")
  assert toc == [f"#{s}" for s in sections]
  # No horizontal overflow at 1280 px.
  width = browser.execute_script("return window.innerWidth")
  assert width <= 1280
  scroll, client = browser.execute_script(
      "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
  assert scroll <= client, f"page is {scroll} px wide in a {client} px window"
  wide = browser.execute_script(
      "return Array.from(document.querySelectorAll('body *')).filter(e => e.getBoundingClientRect().right > "
      "document.documentElement.clientWidth + 1).map(e => e.tagName + '.' + e.className).slice(0, 5)")
  assert not wide, wide
  # Every image decoded.
  images = browser.execute_script(
      "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt || i.src.slice(0, 40)])")
  assert len(images) >= 8
  bad = [i for i in images if not (i[0] and i[1] > 0)]
  assert not bad, bad
  for plot in ("boundary_pairs", "boundary_strips", "superposition", "selectivity_heatmap", "rsa"):
    for ext in ("png", "svg"):
      assert os.path.getsize(os.path.join(reduced_demo, "report", f"{plot}.{ext}")) > 0
  assert console_errors(browser) == []
  browser.save_screenshot(os.path.join(reduced_demo, "report", SCREENSHOT))
  assert os.path.getsize(os.path.join(reduced_demo, "report", SCREENSHOT)) > 0
