"""Stage `report`: one readable HTML page of what the pipeline found.

    python -m lis_jax.main --config=configs/demo.py --workdir=DIR   # ends with this stage
    open DIR/report/index.html

The page is assembled from the report sections of the stages (`Stage.section`), in
pipeline order; `report.sections` picks and orders them by stage name ('all': every
stage that has one). Sections read their stage's results through `ctx.result` and share
the run's models. Writes `DIR/report/`:
  index.html          one self-contained page (images inline as base64 PNG)
  summary.json        the stages' headline numbers (`Stage.summary`), by stage name
  sweeps.png, counterfactuals.png   the figures of the page, also as files;
  overview.png        both side by side (the README's picture)
"""
from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np
from PIL import Image
from tqdm import tqdm

from lis_jax import images
from lis_jax import io
from lis_jax import page
from lis_jax import errors
from lis_jax.stages.base import Stage

NAME = "report"
FIGURES = ("sweeps.png", "counterfactuals.png", "overview.png")


def default_config() -> ml_collections.ConfigDict:
  """The page's settings (shared by the sections)."""
  c = ml_collections.ConfigDict()
  c.sections = "all"  # 'all' or a comma list of stage names, in page order
  c.n_top = 5  # sweep strips of the units whose sweeps change the image most
  c.n_bottom = 3  # ... and of those that change it least
  c.strip_samples = 2  # start samples shown per unit
  c.n_counterfactuals = 8  # before/after pairs shown (successes first)
  c.table_rows = 20  # unit rows shown before the "all units" fold
  c.image_scale = 2  # nearest-neighbour upscaling of the small images on the page
  c.batch_size = 256  # images per synthesis call when rendering
  return c


@dataclasses.dataclass(frozen=True)
class ReportResult:
  """summary.json (the stages' headline numbers, by stage name) and the page's path."""
  summary: dict
  index: str


def load(workdir: str) -> ReportResult:
  index = errors.require(os.path.join(workdir, NAME, "index.html"), NAME)
  return ReportResult(summary=io.read_json(os.path.join(workdir, NAME, "summary.json")), index=index)


def section_names(ctx) -> list[str]:
  """The stages whose sections are on the page, in order (PipelineError for unknown names)."""
  have = [n for n, st in ctx.registry.items() if st.section is not None]
  spec = ctx.cfg(NAME).sections
  names = have if spec == "all" else [s.strip() for s in spec.split(",") if s.strip()]
  unknown = [n for n in names if n not in have]
  if unknown:
    raise errors.PipelineError(f"report.sections: unknown {unknown}; known: {', '.join(have)}")
  return names


def run(ctx) -> None:
  """Writes `workdir/report/` from whatever earlier stages wrote."""
  names = section_names(ctx)
  out_dir = ctx.out_dir(NAME)
  os.makedirs(out_dir, exist_ok=True)
  for name in FIGURES:  # Sections rewrite theirs; none may survive from an earlier run.
    if os.path.exists(os.path.join(out_dir, name)):
      os.remove(os.path.join(out_dir, name))
  parts = []
  for name in tqdm(names, unit="section", desc="report"):
    part = ctx.registry[name].section(ctx)
    if part:
      parts.append(f'<section id="{page.escape(name)}">\n{part}\n</section>')
  if not parts:
    raise errors.PipelineError("nothing to report: run the link, sweep or counterfactual stage first")
  html = page.document("Linking in Style: report", os.path.abspath(ctx.workdir), "\n".join(parts))
  with io.atomic_file(os.path.join(out_dir, "index.html"), "w") as f:
    f.write(html)
  summaries = {n: st.summary(ctx) for n, st in ctx.registry.items() if st.summary is not None}
  io.write_json(os.path.join(out_dir, "summary.json"), {n: s for n, s in summaries.items() if s})
  _write_overview(out_dir)
  print(f"[report] wrote {os.path.join(out_dir, 'index.html')}")


def _write_overview(out_dir: str) -> None:
  """overview.png: the sweep strips and the counterfactual pairs side by side (for READMEs)."""
  figs = [(title, os.path.join(out_dir, name)) for title, name in
          (("unit sweeps (most / least effective)", "sweeps.png"),
           ("counterfactuals: before | after", "counterfactuals.png"))]
  figs = [(t, np.asarray(Image.open(p).convert("RGB"))) for t, p in figs if os.path.exists(p)]
  if figs:
    images.save_png(os.path.join(out_dir, "overview.png"), images.titled_row(figs))


STAGE = Stage(name=NAME, requires=(), default_config=default_config, run=run, load=load,
              ignores=tuple(default_config().keys()))
