"""Runs the Linking-in-Style pipeline: `config.stages` over one workdir.

  python -m lis_jax.main --config=configs/linear.py --workdir=DIR
  python -m lis_jax.main --config=configs/linear.py --workdir=DIR --config.sweep.units=0,1,2

Several processes (README, "Multi-process runs"): every process runs this same command
with its own process id; on TPU pod slices and under SLURM, `--distributed` lets JAX
detect the cluster:

  python -m lis_jax.main ... --coordinator_address=HOST:PORT --num_processes=N --process_id=I
  python -m lis_jax.main ... --distributed

Problems the user can fix (bad config, missing checkpoints, incompatible workdir, NaNs)
print one `error: ...` line to stderr and exit 1.
"""
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from lis_jax import distribute
from lis_jax import io
from lis_jax import pipeline

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
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Multi-process with JAX's cluster auto-detection (TPU pod slices, "
    "SLURM, Open MPI) when no coordinator/processes/id are given.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint step at INFO.
  try:
    distribute.initialize(distribute.process_setup(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, auto=_DISTRIBUTED.value))
    pipeline.run(_CONFIG.value, _WORKDIR.value)
  except (pipeline.PipelineError, io.CheckpointError, distribute.DistributedError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
