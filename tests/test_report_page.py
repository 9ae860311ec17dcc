"""The reduced demo with the boundary and population stages: their outputs, the boundary's
resumption after a crash, and the report page in a real headless browser."""
import os
import shutil

import numpy as np
import pytest

from conftest import ROOT
from test_demo import reduced_config  # the reduced demo of test_demo.py
from tests.browser import browser, console_errors  # noqa: F401  (fixture)

from lis_jax import io, pipeline

SCREENSHOT = "report_1280.png"  # saved beside the page, for a person to look at


def page_config():
  config = reduced_config()
  config.stages = tuple(s for s in config.stages if s != "report") + ("boundary", "population", "report")
  config.boundary.batch_size = 16  # 56 searches -> 4 batches (resumption is tested between them)
  config.boundary.n_iter = 6
  config.boundary.n_boot = 200
  config.population.n_items = 48
  config.population.n_perm = 200
  config.population.n_boot = 100
  config.population.compare_links = "ols"  # the MLP side by side is exercised by the demo itself
  return config


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("page") / "demo")
  pipeline.run(page_config(), workdir)
  return workdir


def test_boundary_and_population_outputs(demo_run):
  from lis_jax.stages import boundary, population
  b = boundary.load(demo_run)
  s = b.summary
  assert s["n_searches"] == 56 and s["n_pairs"] == 56
  a = boundary._concat(b.batches())
  found = a["reach_found"]
  # The crossing is where the prediction reaches the target: known to within the bracket.
  assert np.all(a["t_reach"][found] <= 1.0) and np.all(a["width"] <= 0.25 / 2 ** 6 + 1e-7)
  assert "validation" in s and -1.0 <= s["validation"]["mean_spearman"] <= 1.0
  assert len(b.rows) == 56 * 3 * 13  # pairs x parts x metrics
  p = population.load(demo_run).summary
  assert set(p["superposition"]["counts"]) == {"none", "single-concept", "superposed"}
  assert sum(p["superposition"]["counts"].values()) == 8  # units 0..7 swept
  assert 0.0 <= p["semantic_order"]["pooled"]["rsa"]["p"] <= 1.0


def test_boundary_resumes_after_a_crash_and_matches_a_clean_run(demo_run, tmp_path, monkeypatch):
  crashed = str(tmp_path / "crashed")
  shutil.copytree(demo_run, crashed)
  shutil.rmtree(os.path.join(crashed, "boundary"))
  config = page_config()
  config.stages = ("boundary",)
  real_savez, calls = io.savez, []

  def failing_savez(path, **arrays):
    if os.path.basename(path).startswith("batch_") and f"{os.sep}boundary{os.sep}" in path:
      calls.append(path)
      if len(calls) == 3:
        raise RuntimeError("simulated crash while writing the third batch")
    real_savez(path, **arrays)

  monkeypatch.setattr(io, "savez", failing_savez)
  with pytest.raises(RuntimeError, match="simulated crash"):
    pipeline.run(config, crashed)
  monkeypatch.setattr(io, "savez", real_savez)
  bdir = os.path.join(crashed, "boundary")
  assert sorted(f for f in os.listdir(bdir) if f.startswith("batch_")) == ["batch_00000.npz", "batch_00001.npz"]
  pipeline.run(config, crashed)
  for name in sorted(os.listdir(os.path.join(demo_run, "boundary"))):
    if name.endswith(".npz"):
      with np.load(os.path.join(demo_run, "boundary", name)) as x, np.load(os.path.join(bdir, name)) as y:
        assert x.files == y.files
        for k in x.files:
          np.testing.assert_array_equal(x[k], y[k], err_msg=f"{name}:{k}")
  with open(os.path.join(demo_run, "boundary", "pairs.csv")) as f, open(os.path.join(bdir, "pairs.csv")) as g:
    assert f.read() == g.read()


def test_report_page_in_browser(demo_run, browser):  # noqa: F811  (fixture)
  index = os.path.join(demo_run, "report", "index.html")
  browser.get("file://" + index)
  sections = browser.execute_script("return Array.from(document.querySelectorAll('section')).map(s => s.id)")
  for name in ("link", "sweeps", "counterfactuals", "quantify", "boundary", "population"):
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
      assert os.path.getsize(os.path.join(demo_run, "report", f"{plot}.{ext}")) > 0
  assert console_errors(browser) == []
  browser.save_screenshot(os.path.join(demo_run, "report", SCREENSHOT))
  assert os.path.getsize(os.path.join(demo_run, "report", SCREENSHOT)) > 0
