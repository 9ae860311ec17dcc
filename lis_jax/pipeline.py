"""The runner: `config.stages` run in order over one workdir.

A stage is a `stages.base.Stage` object in `lis_jax/stages/<name>.py`, registered by an
import line in `lis_jax/stages/__init__.py` (docs/architecture.md). `run` builds one
`context.RunContext` (config sections merged over each stage's defaults and validated
once, models loaded once and lazily, named random streams) and calls each stage's
`run(ctx)`. Only `lis_jax.main` (and tests) import this module; it names no particular
stage: a stage's own checks come with it (`Stage.check`).
Before a stage runs, the runner checks that the stages it `requires` ran (earlier in this
run, or in the workdir with the same config) and records the stage's fingerprint (its
own section, the top-level fields it `uses` and its requirements' fingerprints) in
`workdir/<name>/config.json`; a workdir filled by a different config is refused.

Reliability (README, *Reliability*): config values are validated (`validate.check`)
before anything runs; the run holds the workdir lock (`io.workdir_lock`); fingerprints
hold the models' content hashes, not their paths; a stage that finds a corrupt or
missing output of an earlier stage (`io.CorruptFileError`) has that stage run again,
which recomputes it, and then runs again itself.

Errors a user can fix (bad config, bad input, incompatible workdir) are raised as
`PipelineError` (or `io.CheckpointError` / `io.CorruptFileError` for files,
`io.WorkdirBusy` for a locked workdir); `lis_jax.main` prints them as one line and exits 1.
"""
from __future__ import annotations

import os
import shutil
import time
from typing import Any, Callable, Mapping, Sequence

import ml_collections

from lis_jax import distribute
from lis_jax import io
from lis_jax import stages
from lis_jax.context import (LAYOUT, STAGE_CONFIG_FILE, RunContext, check_stage_config,
                             config_diff, config_to_dict, read_stage_config, shown_diffs)
from lis_jax.errors import PipelineError
from lis_jax.spec import parse_stages


def run(config: ml_collections.ConfigDict, workdir: str,
        registry: Mapping[str, Any] | None = None,
        plan: Callable[[RunContext], None] | None = None) -> RunContext:
  """Runs `config.stages` in order on `workdir`.

  Args:
    config: the full pipeline config (see configs/linear.py for its fields).
    workdir: directory holding checkpoints and every stage's outputs; created if absent.
    registry: stage name -> Stage (default: `lis_jax.stages.REGISTRY`).
    plan: called with the run's context once its checks passed and its early work started,
      before the first stage (`lis_jax.main` prints the plan there, with the run's own
      models, while the early work uses the core the plan's compiling leaves idle); what
      it raises ends the run before any stage runs.
  Returns:
    the run's context (its models and results stay loaded).
  Raises:
    PipelineError: an unknown stage name, a requirement that has not run (checked
      before anything runs), a workdir of another config or layout, or any user-fixable
      problem a stage reports.
  """
  names = parse_stages(config.stages)
  ctx = RunContext(config, workdir, stages.REGISTRY if registry is None else registry)
  ctx.validate(names)   # values, before anything runs
  _check_names(names, ctx.registry)
  check_workdir(workdir, names)
  os.makedirs(workdir, exist_ok=True)
  with _workdir_lock(workdir):
    if ctx.is_main:   # under the lock, before any process writes: no live writer owns them
      _remove_leftovers(ctx, workdir)
    for i, name in enumerate(names):
      for req in ctx.requires(name):
        if req in names[i:]:
          raise PipelineError(f"stage '{name}' requires '{req}': list '{req}' before '{name}' "
                              f"in config.stages")
        if req not in names[:i]:
          check_done(ctx, req, needed_by=name)
    check_layout(workdir, ctx.registry)
    ctx.check_stages(names)   # each stage's own check (some need the models)
    t_run = time.time()
    if _early_work_allowed(ctx):
      ctx.start_early(names)
    try:
      if plan is not None:
        plan(ctx)
      if ctx.is_main:
        io.write_json(os.path.join(workdir, "last_config.json"), config_to_dict(config))
      for name in names:
        t0 = time.time()
        ctx.log(f"[lis_jax] stage {name}: start")
        _run_stage(ctx, name)
        ctx.log(f"[lis_jax] stage {name}: done in {time.time() - t0:.1f} s")
    finally:
      ctx.stop_early()
    if ctx.process_count > 1:
      distribute.process_line(f"stages {', '.join(names)}", ctx.items_done, time.time() - t_run)
  return ctx


def _early_work_allowed(ctx: RunContext) -> bool:
  """Stages' early work (`Stage.early`) runs beside the earlier stages in a one-process run
  on one CPU device: XLA:CPU leaves a core idle in much of the run (small convolutions run
  on one core: README, "Memory and the plan"), and nothing is exchanged between devices or
  processes that a second thread's calls could hold up."""
  import jax
  return ctx.process_count == 1 and jax.default_backend() == "cpu" and jax.device_count() == 1


def _remove_leftovers(ctx: RunContext, workdir: str) -> None:
  """Temp files and directories of killed runs (`io.remove_leftovers`), with one log line."""
  removed = io.remove_leftovers(workdir)
  if removed:
    more = f" and {len(removed) - 1} more" if len(removed) > 1 else ""
    ctx.log(f"[lis_jax] removed temp files of an interrupted run: {removed[0]}{more}")


def _workdir_lock(workdir: str):
  """The workdir lock (`io.workdir_lock`), held by process 0 of a multi-process run."""
  import contextlib
  import jax
  if jax.process_index() != 0:
    return contextlib.nullcontext()
  return io.workdir_lock(workdir)   # io.WorkdirBusy: lis_jax.main prints it as one line


def _run_stage(ctx: RunContext, name: str, recomputed: tuple[str, ...] = ()) -> None:
  """Runs stage `name`; if it finds a corrupt or missing file of an earlier stage, that
  stage is run again (it recomputes what is missing, and says so), then `name` again."""
  # Process 0 checks and records the fingerprint; the others check it once it is recorded
  # (before, they could see process 0's temp file of it as an output), and no process
  # writes an output before it is recorded.
  if ctx.is_main:
    check_stage_config(ctx.out_dir(name), ctx.fingerprint(name), write=True)
  ctx.barrier(f"{name}:config")
  if not ctx.is_main:
    check_stage_config(ctx.out_dir(name), ctx.fingerprint(name), write=False)
  ctx.forget(name)
  try:
    _run_on_processes(ctx, ctx.registry[name])
  except io.CorruptFileError as e:
    owner = _owner(ctx, e.path)
    if owner is None or owner == name or owner in recomputed:
      raise
    print(f"[lis_jax] {e}; recomputing it: stage {owner} runs again", flush=True)
    remove_corrupt(e.path)
    _run_stage(ctx, owner, recomputed + (owner,))
    ctx.forget(owner)
    _run_stage(ctx, name, recomputed + (owner,))
  finally:
    ctx.forget(name)


def _run_on_processes(ctx: RunContext, stage: Any) -> None:
  """One stage over all processes (see `stages.base.Stage.merge`)."""
  if stage.merge is None:
    if ctx.is_main:
      stage.run(ctx)
    ctx.barrier(f"{stage.name}:done")
    return
  t0 = time.time()
  stage.run(ctx)
  items = distribute.take_assigned()
  ctx.items_done += items
  if ctx.process_count > 1:
    distribute.process_line(stage.name, items, time.time() - t0)
  ctx.barrier(f"{stage.name}:run")
  if ctx.is_main:
    stage.merge(ctx)
  ctx.barrier(f"{stage.name}:merge")


def _owner(ctx: RunContext, path: str) -> str | None:
  """The stage whose output directory holds `path`, if any."""
  rel = os.path.relpath(os.path.abspath(path), os.path.abspath(ctx.workdir))
  top = rel.split(os.sep)[0]
  return top if top in ctx.registry and not rel.startswith("..") else None


def remove_corrupt(path: str) -> None:
  """Deletes a corrupt output (file or checkpoint directory) so its stage recomputes it."""
  if os.path.basename(path) in (io.PARAMS_DIR, io.META_FILE):   # inside a checkpoint dir
    path = os.path.dirname(path)
  if os.path.isdir(path):
    shutil.rmtree(path, ignore_errors=True)
  elif os.path.exists(path):
    os.remove(path)


def check_workdir(workdir: str, names: Sequence[str]) -> None:
  """Refuses a --workdir, or a stage directory in it, that is a file (one line)."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise PipelineError(f"--workdir {workdir} is a file, not a directory: name a directory "
                        f"(it is created if absent)")
  for name in names:
    d = os.path.join(workdir, name)
    if os.path.exists(d) and not os.path.isdir(d):
      raise PipelineError(f"{d} is a file where stage '{name}' writes its directory: move it "
                          f"away or use another --workdir")


def _check_names(names: Sequence[str], registry: Mapping[str, Any]) -> None:
  renamed = [n for n in names if n in stages.RENAMED]
  if renamed:
    raise PipelineError(f"stage(s) {renamed} are now called "
                        f"{[stages.RENAMED[n] for n in renamed]}: update config.stages")
  unknown = [s for s in names if s not in registry]
  if unknown:
    raise PipelineError(f"unknown stage(s) {unknown}; known: {', '.join(registry)}")


def check_done(ctx: RunContext, name: str, needed_by: str) -> None:
  """Raises PipelineError unless stage `name` finished in the workdir with this config."""
  path = os.path.join(ctx.out_dir(name), STAGE_CONFIG_FILE)
  if not os.path.exists(path):
    raise PipelineError(f"stage '{needed_by}' requires '{name}', which has not run in "
                        f"{ctx.workdir}: add '{name}' to config.stages")
  diffs = config_diff(read_stage_config(path), ctx.fingerprint(name))
  if diffs:
    raise PipelineError(f"stage '{needed_by}' requires '{name}', but {ctx.out_dir(name)} was "
                        f"written by a different config ({shown_diffs(diffs)}): add '{name}' to "
                        f"config.stages with a fresh --workdir")
  try:
    ctx.result(name)
  except FileNotFoundError:
    raise PipelineError(f"stage '{name}' has not finished in {ctx.workdir}: add '{name}' to "
                        f"config.stages to finish it") from None
  except io.CorruptFileError as e:
    raise PipelineError(f"{e}; add '{name}' to config.stages: it recomputes what is corrupt "
                        f"or missing") from None


def mark_done(config: ml_collections.ConfigDict, workdir: str, name: str,
              registry: Mapping[str, Any] | None = None) -> None:
  """Records that stage `name`'s outputs in `workdir` were made with `config`, as the
  runner does; for tests and benchmarks that build a stage's outputs themselves."""
  ctx = RunContext(config, workdir, stages.REGISTRY if registry is None else registry)
  os.makedirs(ctx.out_dir(name), exist_ok=True)
  io.write_json(os.path.join(ctx.out_dir(name), STAGE_CONFIG_FILE), ctx.fingerprint(name))


def check_layout(workdir: str, registry: Mapping[str, Any]) -> None:
  """Refuses a workdir written by an earlier layout of lis_jax (one line naming the fix)."""
  old = [d for d in registry
         if os.path.exists(os.path.join(workdir, d, STAGE_CONFIG_FILE))
         and read_stage_config(os.path.join(workdir, d, STAGE_CONFIG_FILE)).get("layout") != LAYOUT]
  if old:
    raise PipelineError(f"{workdir} was written by an earlier version of lis_jax (layout 1: "
                        f"stage fit_link, integer random streams; found {', '.join(old)}/); "
                        f"use a fresh --workdir or delete those directories")
