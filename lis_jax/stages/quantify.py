"""Stage `quantify`: segment the sweep images into parts, measure them, rank the units.

The code is `lis_jax.quantify` (stage.py for now); outputs: WORKSPACE.md, `quantify/`.
"""
from __future__ import annotations

import csv
import dataclasses
import os

from lis_jax import io
from lis_jax import pipeline
from lis_jax.quantify import stage as lib
from lis_jax.stages.base import Stage

default_config = lib.default_config


@dataclasses.dataclass(frozen=True)
class QuantifyResult:
  """selectivity rows (selectivity.TABLE_COLUMNS, typed), the segmenter's held-out
  evaluation, and the ground-truth check (None off the built-in world)."""
  rows: list
  segmenter_eval: dict | None
  truth_check: dict | None
  workdir: str

  def blocks(self) -> list[dict]:
    return lib.load_blocks(self.workdir)


def _typed(r: dict) -> dict:
  return {**r, "unit": int(r["unit"]), "effect": float(r["effect"]), "mean": float(r["mean"]),
          "ci_low": float(r["ci_low"]), "ci_high": float(r["ci_high"]),
          "p_null": float(r["p_null"]), "rank": int(r["rank"]), "selective": r["selective"] == "True"}


def load(workdir: str) -> QuantifyResult:
  out_dir = os.path.join(workdir, "quantify")
  with open(pipeline.require(os.path.join(out_dir, "selectivity.csv"), "quantify")) as f:
    rows = [_typed(r) for r in csv.DictReader(f)]
  opt = lambda name: (io.read_json(os.path.join(out_dir, name))
                      if os.path.exists(os.path.join(out_dir, name)) else None)
  return QuantifyResult(rows=rows, segmenter_eval=opt("segmenter_eval.json"),
                        truth_check=opt("truth_check.json"), workdir=workdir)


def run(ctx) -> None:
  lib.run(ctx.config, ctx.workdir)


def section(ctx) -> str | None:
  return lib.report_section(ctx.config, ctx.workdir)


STAGE = Stage(name="quantify", requires=("sweep",), default_config=default_config, run=run,
              load=load, uses=("classes", "psi", "seed"), section=section,
              ignores=("batch_size", "cards"))
