"""python -m lis_jax.invert: project a folder of photos into the generator's W.

  python -m lis_jax.invert --config=configs/demo.py --images=DIR --workdir=WORKDIR \
      [--lpips=random] [--num_steps=1000] [--batch_size=16] [--lpips_weight=1] [--mse_weight=1]
      [--restarts=1] [--max_pixels=40000000]

The generator and classifier are the config's (`config.generator`, `config.classifier`;
the inversion's settings: `config.invert` if the config has that section, else
`lis_jax.invert.projector.default_config()`, then these flags). `--lpips` names an LPIPS
checkpoint (`python -m converters.lpips`; relative: inside the workdir) or `random` (a
seeded random VGG16 at 1/8 width: for the built-in world, whose images ImageNet
features do not describe).

Writes WORKDIR/invert/ (WORKSPACE.md): per photo `<key>.npz` (w, the reconstruction),
`<key>.json` (file, sha256, LPIPS, PSNR, steps, predictions, match) and `<key>.png`
(photo | reconstruction); `config.json`; `summary.json`. Resumable per photo: a photo
whose outputs exist, verify, and name the same file content is skipped. Files that cannot
be used (not an image, truncated, 16-bit, CMYK, too large, not PNG/JPEG) are refused
with one line each and the rest processed; the exit code is then 1.
"""
import json
import os
import sys

from absl import app
from absl import flags
from absl import logging

from lis_jax import main as lis_main

_IMAGES = flags.DEFINE_string("images", None, "Folder of photos (PNG / JPEG).")
_LPIPS = flags.DEFINE_string("lpips", None, "LPIPS checkpoint dir, or 'random' "
                             "(default: config.invert.lpips).")
_STEPS = flags.DEFINE_integer("num_steps", None, "Adam steps per photo (default: config).")
_BATCH = flags.DEFINE_integer("batch_size", None, "Photos optimised together (default: config).")
_LPIPS_W = flags.DEFINE_float("lpips_weight", None, "Weight of LPIPS in the loss.")
_MSE_W = flags.DEFINE_float("mse_weight", None, "Weight of the pixel MSE in the loss.")
_MAX_PIXELS = flags.DEFINE_integer("max_pixels", None, "Refuse larger photos (default: config).")
_RESTARTS = flags.DEFINE_integer("restarts", None, "Starts per photo, lowest loss kept "
                                 "(default: config; the reference: 1).")
flags.mark_flags_as_required(["images"])

OUT = "invert"


def _overrides() -> dict:
  return {name: flag.value for name, flag in (
      ("lpips", _LPIPS), ("num_steps", _STEPS), ("batch_size", _BATCH),
      ("lpips_weight", _LPIPS_W), ("mse_weight", _MSE_W), ("max_pixels", _MAX_PIXELS),
      ("restarts", _RESTARTS))
          if flag.value is not None}


def run(config, workdir: str, images_dir: str) -> int:
  from lis_jax.invert import cli  # pylint: disable=import-outside-toplevel
  return cli.run(config, cli.settings(config, _overrides()), workdir, images_dir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  from lis_jax import errors, io  # pylint: disable=import-outside-toplevel
  try:
    code = run(lis_main._CONFIG.value, lis_main._WORKDIR.value, _IMAGES.value)
  except (errors.PipelineError, io.CheckpointError, io.CorruptFileError, io.WorkdirBusy) as e:
    lis_main._fail(str(e))
  except OSError as e:
    lis_main._fail(io.describe_os_error(e))
  sys.exit(code)


if __name__ == "__main__":
  app.run(main, flags_parser=lis_main.parse_flags)
