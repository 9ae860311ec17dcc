"""Runs the Linking-in-Style pipeline: `config.stages` over one workdir.

  python -m lis_jax.main --config=configs/linear.py --workdir=DIR
  python -m lis_jax.main --config=configs/linear.py --workdir=DIR --config.sweep.units=0,1,2
  python -m lis_jax.main --config=configs/linear.py --workdir=DIR --plan   # cost before the run

Several processes (README, "Multi-process runs"): every process runs this same command
with its own process id; on TPU pod slices and under SLURM, `--distributed` lets JAX
detect the cluster:

  python -m lis_jax.main ... --coordinator_address=HOST:PORT --num_processes=N --process_id=I
  python -m lis_jax.main ... --distributed

Before any work, the processes check that they agree (`distribute.agree`): config,
workdir, flags, model files and lis_jax's own code. Deadlines: --connect_timeout,
--barrier_timeout, --heartbeat_timeout (README, "Multi-process runs").

Problems the user can fix (bad config file or override, bad config value, missing
checkpoints, incompatible or busy workdir, corrupt files, NaNs, a full disk, missing
permissions, processes that disagree or lost each other) print one `error: ...` line to
stderr and exit 1; in a multi-process run, the other processes stop too.
"""
import hashlib
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from lis_jax import distribute
from lis_jax import io
from lis_jax import errors, pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "Pipeline config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and all stage outputs.")
flags.mark_flags_as_required(["config", "workdir"])
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-process: host:port of process 0's coordinator "
    f"(else ${distribute.ENV_COORDINATOR}).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, f"Multi-process: number of processes (else ${distribute.ENV_NUM_PROCESSES}).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, f"Multi-process: this process's id in [0, num_processes) (else "
    f"${distribute.ENV_PROCESS_ID}).")
_PLAN = flags.DEFINE_bool(
    "plan", False, "Print the plan (per stage: images, FLOPs, peak memory of its largest call at "
    "the batch the memory budget allows, estimated time) and exit; refuses a stage that cannot fit.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Multi-process with JAX's cluster auto-detection (TPU pod slices, "
    "SLURM, Open MPI) when no coordinator/processes/id are given.")
_T = distribute.Timeouts()
_CONNECT_TIMEOUT = flags.DEFINE_integer(
    "connect_timeout", _T.connect, "Multi-process: seconds for every process to start and join.")
_BARRIER_TIMEOUT = flags.DEFINE_integer(
    "barrier_timeout", _T.barrier, "Multi-process: longest wait at a barrier, in seconds (the "
    "slowest process's share of a stage plus process 0's merge).")
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout", _T.heartbeat, "Multi-process: seconds of silence after which "
    "jax.distributed takes a process as dead (kept above --barrier_timeout).")
# Flags every process of one run must share (process_id differs by design, and the
# coordinator's address may be spelled differently on its own host: localhost).
_SHARED_FLAGS = ("workdir", "num_processes", "distributed", "connect_timeout",
                 "barrier_timeout", "heartbeat_timeout")


def _fail(message: str, abandon: bool = False) -> None:
  """Prints one error line and exits 1; in a multi-process run the others are told first.

  abandon: a peer may be gone: exit at once, without jax.distributed's shutdown barrier.
  """
  line = " ".join(message.split())
  _tell_peers(line)
  print(f"error: {line}", file=sys.stderr, flush=True)
  if abandon:
    sys.stdout.flush()
    os._exit(1)
  sys.exit(1)


def _tell_peers(line: str) -> None:
  try:
    distribute.report_failure(line)
  except Exception:   # jax.distributed never started: nobody to tell
    pass


def _config_path(argv: list[str]) -> str:
  for a in argv:
    if a.startswith(("--config=", "-config=")):
      return a.split("=", 1)[1].split(":", 1)[0]
  return "?"


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with one-line errors for config-file and override problems.

  ml_collections loads the config file while parsing, defers a load failure to the
  first access of the config, and raises AttributeError for an unknown override key;
  all of these become `error: ...` and exit 1 instead of a traceback.
  """
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:  # unknown flag, missing required flag, unparsable value
    _fail(f"{e} (see --helpshort)")
  except (AttributeError, KeyError) as e:  # an override naming no config field, or a bad file
    bad = str(e).strip("'\"")
    given = [a for a in argv if a.startswith("--config.") and f".{bad}" in a.split("=")[0]]
    if not given:
      _config_load_failed(argv, e)
    _fail(f"unknown config field {bad!r} in {given[0]}: it is not in {_config_path(argv)}; "
          f"check the spelling")
  except SyntaxError as e:
    _fail(f"config file {e.filename or _config_path(argv)} line {e.lineno}: {e.msg}")
  except Exception as e:  # A missing file, or whatever the config file's own code raised.
    _config_load_failed(argv, e)
  try:
    _CONFIG.value.keys()  # config_flags defers a load failure to the first attribute access.
  except Exception as e:
    _config_load_failed(argv, e)
  return rest


def _config_load_failed(argv: list[str], e: Exception) -> None:
  path = _config_path(argv)
  if path != "?" and not os.path.isfile(path):
    _fail(f"config file not found: {path} (--config names a Python file with get_config())")
  cause = e.__cause__ or e
  _fail(f"cannot load the config file {path}: {type(cause).__name__}: {cause}")


def startup_fields(config, workdir: str) -> dict:
  """What every process of a run must agree on (`distribute.agree`), JSON-able.

  config: the config with its overrides; flags: those in `_SHARED_FLAGS`; models: the
  params hash of each converted checkpoint (its meta.json cache), else the name given;
  code: a hash of lis_jax's own source files.
  """
  fields = {"config": config.to_dict(),
            "flags": {f: flags.FLAGS[f].value for f in _SHARED_FLAGS},   # --workdir as given
            "models": {w: _model_id(str(config.get(w, "")), workdir)
                       for w in ("generator", "classifier")},
            "code": _code_sha256()}
  return fields


def _model_id(spec: str, workdir: str) -> str:
  """A converted checkpoint's params hash (relative paths inside the workdir first, as the
  runner resolves them), else the name as given (a built-in or "module:function")."""
  for path in ((spec,) if os.path.isabs(spec) else (os.path.join(workdir, spec), spec)):
    if spec and os.path.isfile(os.path.join(path, io.META_FILE)):
      return io.params_sha256(path)
  return spec


def _code_sha256() -> str:
  root = os.path.dirname(os.path.abspath(__file__))
  h = hashlib.sha256()
  for d, dirs, files in sorted(os.walk(root)):
    dirs.sort()
    for f in sorted(files):
      if f.endswith(".py"):
        h.update(os.path.relpath(os.path.join(d, f), root).encode())
        with open(os.path.join(d, f), "rb") as fh:
          h.update(fh.read())
  return h.hexdigest()


def _print_plan(config, G, clf) -> None:
  """The plan of config.stages for these models and this device's memory (first lines of a
  run, unless config.plan_at_start is False; all of --plan). Every process computes it
  (the same refusal everywhere); process 0 prints it."""
  import jax
  from lis_jax import memory, plan
  budget = memory.config_budget(config)
  plans = plan.make(config, G, clf, budget)
  if jax.process_index() == 0:
    print(plan.table(plans, budget), flush=True)
  refused = plan.refusal(plans)
  if refused:
    _fail(refused)


def _plan_at_start(ctx) -> None:
  """The plan as a run's first lines (`pipeline.run`'s `plan`): with the run's own models,
  once its checks passed and beside its early work. A stage that cannot fit ends the run
  before any stage runs; a model the plan cannot analyse does not (one line says so)."""
  try:
    _print_plan(ctx.config, ctx.G, ctx.clf)
  except (errors.PipelineError, io.CheckpointError, io.CorruptFileError):
    raise
  except Exception as e:  # A model the plan cannot analyse must not stop the run itself.
    print(f"plan unavailable ({type(e).__name__}: {' '.join(str(e).split())[:200]})", flush=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint step at INFO.
  try:
    timeouts = distribute.Timeouts(connect=_CONNECT_TIMEOUT.value, barrier=_BARRIER_TIMEOUT.value,
                                   heartbeat=_HEARTBEAT_TIMEOUT.value)
    distribute.initialize(distribute.process_setup(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, auto=_DISTRIBUTED.value),
        timeouts)
    if distribute.process_count() > 1:
      distribute.agree(startup_fields(_CONFIG.value, _WORKDIR.value), "the run's setup")
    if _PLAN.value:
      from lis_jax import context
      _print_plan(_CONFIG.value, *context.load_models(_CONFIG.value, _WORKDIR.value))
      return
    pipeline.run(_CONFIG.value, _WORKDIR.value,
                 plan=_plan_at_start if _CONFIG.value.get("plan_at_start", True) else None)
  except distribute.DistributedError as e:
    _fail(str(e), abandon=e.abandon)
  except (errors.PipelineError, io.CheckpointError, io.CorruptFileError, io.WorkdirBusy) as e:
    _fail(str(e))
  except OSError as e:
    _fail(io.describe_os_error(e))
  except Exception as e:   # a bug: the traceback is shown, and the other processes stop too
    from lis_jax import memory
    if memory.is_oom(e):   # XLA's RESOURCE_EXHAUSTED where no stage call turned it into a line
      _fail(f"out of memory ({str(e).strip().splitlines()[0][:200]}); lower the batch sizes of the "
            f"stage that was running (its config section) or set config.memory_gb, and run again: "
            f"finished work is kept")
    _tell_peers(f"{type(e).__name__}: {e}")
    raise


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
