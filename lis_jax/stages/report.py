"""Stage `report`: one HTML page assembled from the stages' report sections.

The page code is `lis_jax.report` (for now); outputs: `report/`.
"""
from __future__ import annotations

import dataclasses
import os

from lis_jax import io
from lis_jax import pipeline
from lis_jax import report as lib
from lis_jax.stages.base import Stage

default_config = lib.default_config


@dataclasses.dataclass(frozen=True)
class ReportResult:
  """summary.json (headline numbers) and the page's path."""
  summary: dict
  index: str


def load(workdir: str) -> ReportResult:
  index = pipeline.require(os.path.join(workdir, "report", "index.html"), "report")
  return ReportResult(summary=io.read_json(os.path.join(workdir, "report", "summary.json")), index=index)


def run(ctx) -> None:
  lib.run(ctx.config, ctx.workdir)


STAGE = Stage(name="report", requires=(), default_config=default_config, run=run, load=load,
              ignores=tuple(default_config().keys()))
