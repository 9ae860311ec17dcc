"""Errors a user can fix, and the checks that raise them (ground floor: imports nothing
of lis_jax).

`PipelineError` (and `io.CheckpointError` / `io.CorruptFileError` for files) is what
`lis_jax.main` prints as one line with exit code 1. `maybe_interrupt` is the test hook
that kills a run at its worst moment (tests/interrupt.py).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np


class PipelineError(ValueError):
  """A problem the user can fix: bad config, bad input, incompatible workdir, NaNs."""


class Stopped(Exception):
  """Work started ahead of its stage (`Stage.early`) was stopped: the run ended first."""


def check_finite(name: str, x: Any) -> None:
  """Raises PipelineError if the array `x` holds NaN or inf."""
  x = np.asarray(x)
  if not np.all(np.isfinite(x)):
    n = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    raise PipelineError(f"{name}: {n} non-finite value(s) (NaN/inf) out of {np.size(x)}")


def require(path: str, produced_by: str) -> str:
  """Returns `path`, or raises PipelineError naming the stage that must run first."""
  if not os.path.exists(path):
    raise PipelineError(f"{path} not found: run the '{produced_by}' stage first "
                        f"(add it to config.stages)")
  return path


def maybe_interrupt(stage: str, done: int) -> None:
  """Test hook: SIGKILLs this process when LIS_JAX_TEST_KILL_AFTER="stage:n" and done == n.

  Stages call it right after writing a unit of output and before recording it as done,
  the worst moment to die; tests use it to prove resumption loses and duplicates nothing.
  """
  spec = os.environ.get("LIS_JAX_TEST_KILL_AFTER")
  if spec and spec == f"{stage}:{done}":
    import signal
    os.kill(os.getpid(), signal.SIGKILL)
