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
import shutil
import tempfile

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


class _Staged:
  """The run context with `report/` redirected to a staging directory beside it: sections
  write their figures there, and nothing in `report/` changes until the page is built."""

  def __init__(self, ctx, staging: str):
    self._ctx, self._staging = ctx, staging

  def out_dir(self, name: str) -> str:
    return self._staging if name == NAME else self._ctx.out_dir(name)

  def __getattr__(self, attr):
    return getattr(self._ctx, attr)


def run(ctx) -> None:
  """Writes `workdir/report/` from whatever earlier stages wrote.

  The new report is written beside the old one (`workdir/.report.new-*`) and swapped in
  file by file at the end, index.html last: a run that fails (a section's error, a
  different config) leaves the earlier report as it was.
  """
  names = section_names(ctx)
  out_dir = ctx.out_dir(NAME)
  os.makedirs(out_dir, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{NAME}.new-", dir=os.path.dirname(os.path.abspath(out_dir)))
  try:
    sctx = _Staged(ctx, staging)
    parts = []
    for name in tqdm(names, unit="section", desc="report"):
      part = ctx.registry[name].section(sctx)
      if part:
        parts.append(f'<section id="{page.escape(name)}">\n{part}\n</section>')
    if not parts:
      raise errors.PipelineError("nothing to report: run the link, sweep or counterfactual stage first")
    html = page.document("Linking in Style: report", os.path.abspath(ctx.workdir), "\n".join(parts))
    with io.atomic_file(os.path.join(staging, "index.html"), "w") as f:
      f.write(html)
    summaries = {n: st.summary(sctx) for n, st in ctx.registry.items() if st.summary is not None}
    io.write_json(os.path.join(staging, "summary.json"), {n: s for n, s in summaries.items() if s})
    _write_overview(staging)
    _swap(staging, out_dir)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  print(f"[report] wrote {os.path.join(out_dir, 'index.html')}")


def _swap(staging: str, out_dir: str) -> None:
  """Moves the new report's files into `out_dir` (index.html last) and removes the figures
  of FIGURES that this run did not make (none may survive from an earlier run)."""
  new = set(os.listdir(staging))
  for name in FIGURES:
    if name not in new and os.path.exists(os.path.join(out_dir, name)):
      os.remove(os.path.join(out_dir, name))
  for name in sorted(new - {"index.html"}) + ["index.html"]:
    os.replace(os.path.join(staging, name), os.path.join(out_dir, name))


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
