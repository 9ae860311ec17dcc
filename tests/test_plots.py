"""Every plot renders to a decodable PNG and an SVG beside it."""
import numpy as np
from PIL import Image

from lis_jax import plots


def _check(tmp_path, fig, name):
  png = plots.save(fig, str(tmp_path), name)
  img = Image.open(tmp_path / f"{name}.png")
  assert img.size[0] <= plots.FIG_WIDTH * plots.DPI + 50, img.size  # fits a 1280 px page
  assert png == (tmp_path / f"{name}.png").read_bytes()
  assert (tmp_path / f"{name}.svg").read_text().lstrip().startswith("<?xml")
  assert "data:image/png;base64," in plots.img_tag(png, "x", name)
  return img


def test_all_plots_render(tmp_path):
  rng = np.random.default_rng(0)
  _check(tmp_path, plots.r2_histogram(rng.uniform(0, 1, 64)), "r2")
  eff = rng.normal(size=(20, 12))
  _check(tmp_path, plots.selectivity_heatmap(eff, list(range(20)), [f"c{i}" for i in range(12)],
                                             np.abs(eff) > 1.5), "heat")
  mean = rng.normal(size=(3, 13))
  _check(tmp_path, plots.unit_bars(4, ["a", "b", "c"], [f"m{i}" for i in range(13)], mean, mean - 0.5,
                                   mean + 0.5, mean > 1), "unit")
  _check(tmp_path, plots.superposition_histogram(np.array([0, 1, 1, 2, 3]), rng.uniform(0, 1, 5),
                                                 ["none", "single-concept", "single-concept", "superposed",
                                                  "superposed"]), "sup")
  cls = np.repeat([0, 1], 5)
  d = rng.uniform(size=(10, 10))
  _check(tmp_path, plots.rsa_matrices({"r": d, "w": d.T}, cls, "rsa"), "rsa")
  top = [{"part": "body", "metric": "area", "mean": 0.3, "ci_low": 0.1, "ci_high": 0.5, "selective": True}]
  _check(tmp_path, plots.boundary_bars(["a > b", "b > a", "c > a"], [top, top, top]), "bars")
  img = rng.uniform(size=(8, 8, 3))
  _check(tmp_path, plots.image_strips([("s0", [("t=0", img), ("t=1", img)]), ("s1", [("t=0", img)])]), "strip")


def test_cluster_order_groups_similar_rows():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=8), rng.normal(size=8)
  x = np.stack([a, b, a + 0.01 * rng.normal(size=8), b + 0.01 * rng.normal(size=8)])
  order = list(plots.cluster_order(x))
  pos = {r: order.index(r) for r in range(4)}
  assert abs(pos[0] - pos[2]) == 1 and abs(pos[1] - pos[3]) == 1


def test_saved_figures_are_byte_identical_across_saves(tmp_path):
  """No date, fixed ids: a resumed run rewrites the page's figures to the same bytes."""
  import matplotlib.pyplot as plt
  got = []
  for d in ("a", "b"):
    fig, ax = plt.subplots()
    ax.plot(np.arange(5.0))
    plots.save(fig, str(tmp_path / d), "fig")
    got.append(((tmp_path / d / "fig.svg").read_bytes(), (tmp_path / d / "fig.png").read_bytes()))
  assert got[0] == got[1]


def test_cluster_order_of_one_column_is_the_given_order():
  # One unit's effects per concept (a run with sweep.units=0): no correlation distance.
  x = np.arange(5, dtype=float)[:, None]
  assert list(plots.cluster_order(x)) == [0, 1, 2, 3, 4]


# The SVG's size with plots.save's box (found with the PNG's Agg renderer) against savefig's own
# bbox_inches="tight" (found with the SVG renderer): the two renderers' text metrics differ a little,
# most for long titles. Measured on the 14 SVGs of the demo's report (configs/demo.py): at most 0.52%
# (boundary_pairs' width 712.8 vs 716.5 pt, the heatmap's height 668.5 vs 672.0 pt; the box is padded
# by 7.2 pt on each side, so nothing is cut); here at most 0.74 pt of ~713.
SVG_SIZE_REL = 0.01


def _svg_size(text):
  import re
  m = re.search(r'<svg[^>]* width="([0-9.]+)pt" height="([0-9.]+)pt"', text)
  return float(m.group(1)), float(m.group(2))


def test_save_writes_what_savefig_tight_writes(tmp_path):
  """One layout pass for both files: the PNG is savefig(bbox_inches='tight')'s to the byte, the SVG
  its size within SVG_SIZE_REL (figures with and without tight_layout, a colorbar, images)."""
  import io

  import matplotlib.pyplot as plt
  rng = np.random.default_rng(2)
  mean, eff, img = rng.normal(size=(3, 9)), rng.normal(size=(10, 12)), rng.uniform(size=(8, 8, 3))
  top = [{"part": "body", "metric": "area", "mean": 0.3, "ci_low": 0.1, "ci_high": 0.5, "selective": True}]
  makers = {
      "unit": lambda: plots.unit_bars(2, ["a", "b", "c"], [f"m{i}" for i in range(9)], mean, mean - 1, mean + 1,
                                      mean > 1),
      "heat": lambda: plots.selectivity_heatmap(eff, list(range(10)), [f"c{i}" for i in range(12)], eff > 1),
      "bars": lambda: plots.boundary_bars(["a > b", "b > a"], [top, top]),
      "strip": lambda: plots.image_strips([("s0", [("t=0", img), ("t=1", img)])]),
  }
  for name, make in makers.items():
    png = plots.save(make(), str(tmp_path), name)
    fig = make()
    want_png, want_svg = io.BytesIO(), io.StringIO()
    fig.savefig(want_png, format="png", dpi=plots.DPI, bbox_inches="tight")
    fig.savefig(want_svg, format="svg", bbox_inches="tight")
    plt.close(fig)
    assert png == want_png.getvalue(), name
    got, want = _svg_size((tmp_path / f"{name}.svg").read_text()), _svg_size(want_svg.getvalue())
    assert np.allclose(got, want, rtol=SVG_SIZE_REL, atol=0), (name, got, want)
