"""Stopping a run at a kill point, in the test's own process.

Stages call `errors.maybe_interrupt(stage, n)` right after writing a unit of output and
before recording it as done, the worst moment to die. `run_until(...)` makes that call
raise `Interrupted` at the named point, so a test can stop a run there and resume it.
(The end-to-end tests SIGKILL a subprocess at the same points via LIS_JAX_TEST_KILL_AFTER.)
"""
import pytest

from lis_jax import errors, pipeline


class Interrupted(Exception):
  """Raised in place of the kill at a `stage:n` point."""


def run_until(monkeypatch, config, workdir: str, point: str) -> None:
  """Runs `pipeline.run(config, workdir)` and stops it at kill point `point` ('stage:n');
  fails the test if the run never reaches that point."""
  real = errors.maybe_interrupt

  def hook(stage, done):
    if f"{stage}:{done}" == point:
      raise Interrupted(point)
    real(stage, done)

  monkeypatch.setattr(errors, "maybe_interrupt", hook)
  try:
    with pytest.raises(Interrupted):
      pipeline.run(config, workdir)
  finally:
    monkeypatch.setattr(errors, "maybe_interrupt", real)
