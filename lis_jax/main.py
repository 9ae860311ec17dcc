"""Runs the Linking-in-Style pipeline: `config.stages` over one workdir.

  python -m lis_jax.main --config=configs/linear.py --workdir=DIR
  python -m lis_jax.main --config=configs/linear.py --workdir=DIR --config.sweep.units=0,1,2

Problems the user can fix (bad config, missing checkpoints, incompatible workdir, NaNs)
print one `error: ...` line to stderr and exit 1.
"""
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from lis_jax import io
from lis_jax import pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "Pipeline config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and all stage outputs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint step at INFO.
  try:
    pipeline.run(_CONFIG.value, _WORKDIR.value)
  except (pipeline.PipelineError, io.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
