"""The shape of a pipeline stage: one `Stage` object per module in `lis_jax/stages/`.

A stage module `lis_jax/stages/<name>.py` defines `STAGE = Stage(name="<name>", ...)`;
`lis_jax/stages/__init__.py` imports it (one line) into `REGISTRY`. The runner
(`lis_jax.pipeline.run`) checks `requires`, records each stage's fingerprint in
`workdir/<name>/config.json` and calls `run(ctx)` with a `context.RunContext`. A stage
module imports libraries and `lis_jax.context`, never another stage or the runner.
Recipes: docs/architecture.md.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import ml_collections


@dataclasses.dataclass(frozen=True)
class Stage:
  """One pipeline stage.

  name: the stage's name = its module name = its output directory (workdir/<name>/) =
    its config section (config.<name>).
  requires: stages whose outputs it reads (through their `load`); the runner refuses to
    run it unless they ran earlier in the same run or finished in the workdir with the
    same config.
  default_config: () -> ConfigDict, the only home of its section's defaults; the run's
    `config.<name>` is merged over it (unknown keys are an error).
  run: (ctx: context.RunContext) -> None; writes workdir/<name>/ atomically, resumable.
  load: (workdir) -> its typed result (a dataclass); raises PipelineError if it has not run.
  uses: top-level config fields its outputs depend on ('generator', 'classifier',
    'classes', 'psi', 'seed'); part of its fingerprint.
  section: (ctx) -> HTML of its report section, or None when there is nothing to show.
  ignores: fields of its own section that do not change its outputs (batch sizes, PNG
    switches); left out of its fingerprint, so changing them never invalidates a workdir.
  summary: (ctx) -> its headline numbers (JSON-able dict) for report/summary.json, or None.
  merge: (ctx) -> None, for a stage whose work splits over processes. With `merge`, `run`
    runs in every process of a multi-process run, each doing its share of the work items
    (`ctx.my_items(n)`) and writing one file per item; after a barrier, `merge` runs in
    process 0 alone and writes what spans all items (manifest, index, summary). Without
    `merge`, `run` runs in process 0 alone while the others wait. With one process: `run`,
    then `merge`.
  requires_when: (its config section) -> more stages it requires under that config (a
    stage that reads another's outputs only for some settings); part of `requires`
    wherever the runner and the fingerprint read it (`requirements`).
  rules: field -> rule (lis_jax/validate.py's kinds: bounds, choices) of its section,
    defined beside its `default_config()`; checked before anything runs.
  check: (ctx) -> None, run before any stage of a run that lists it runs; raises
    PipelineError for a value that can only be checked with the models loaded.
  early: (ctx) -> a result or None: work the stage can do before the stages it requires
    have run (from the models, its config section and its own inputs, never another
    stage's outputs), which the runner starts on a background thread when the run begins
    (`pipeline.run`: one process on a CPU, where it uses the core the earlier stages leave
    idle); the stage takes it with `ctx.early_result(name)` (None: not started, failed or
    nothing to do; the stage then does the work itself). It writes no file (the stage's
    fingerprint is not recorded yet) and stops (`errors.Stopped`) once `ctx.stopping` is set.
  """
  name: str
  requires: tuple[str, ...]
  default_config: Callable[[], ml_collections.ConfigDict]
  run: Callable[[Any], None]
  load: Callable[[str], Any]
  uses: tuple[str, ...] = ()
  section: Callable[[Any], str | None] | None = None
  ignores: tuple[str, ...] = ()
  summary: Callable[[Any], dict | None] | None = None
  merge: Callable[[Any], None] | None = None
  check: Callable[[Any], None] | None = None
  requires_when: Callable[[ml_collections.ConfigDict], tuple[str, ...]] | None = None
  early: Callable[[Any], Any] | None = None
  rules: Mapping[str, tuple] = dataclasses.field(default_factory=dict)

  def requirements(self, section: ml_collections.ConfigDict) -> tuple[str, ...]:
    """`requires`, plus what `requires_when(section)` adds under this config section."""
    extra = self.requires_when(section) if self.requires_when is not None else ()
    return tuple(self.requires) + tuple(r for r in extra if r not in self.requires)
