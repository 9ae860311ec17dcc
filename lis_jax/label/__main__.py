"""python -m lis_jax.label export | import | suggest  (see lis_jax/label/__init__.py).

  python -m lis_jax.label export  --config=configs/linear.py --workdir=DIR --n=30
  python -m lis_jax.label import  --config=configs/linear.py --workdir=DIR [--masks=~/Downloads]
                                  [--format=auto|indexed|rgb|labelme|cvat] [--colours=FILE]
  python -m lis_jax.label suggest --config=configs/linear.py --workdir=DIR [--folds=3]

The label directory is config.quantify.labels (relative: inside the workdir). The config
is validated as a run validates it, and each command holds the workdir's lock (a command
while a run, or another command, holds it is refused). Problems the user can fix print
one `error: ...` line (naming the file) and exit 1.
"""
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from lis_jax import io
from lis_jax import errors
from lis_jax.quantify.segment import SegmentationError

COMMANDS = ("export", "import", "suggest")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Pipeline config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The pipeline's workdir.")
_N = flags.DEFINE_integer("n", 30, "export: images per class.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "export: images per generator call.")
_MASKS = flags.DEFINE_string("masks", None, "import: a directory or file of masks "
                             "(default: <labels>/masks).")
_FORMAT = flags.DEFINE_enum("format", "auto", ["auto", "indexed", "rgb", "labelme", "cvat"],
                            "import: mask format (auto: by file).")
_COLOURS = flags.DEFINE_string("colours", None, "import: JSON {part name: '#rrggbb'} for RGB masks "
                               "(default: the labeller's palette).")
_FOLDS = flags.DEFINE_integer("folds", 3, "suggest: folds of the held-out IoU (< 2: skip it).")
flags.mark_flags_as_required(["config", "workdir"])


def run(command: str) -> None:
  from lis_jax import stages  # after flag parsing: fast --help
  ctx = stages.context(_CONFIG.value, _WORKDIR.value)  # the pipeline's models and config
  ctx.validate(("quantify",))   # the values a run would refuse, refused here too
  if os.path.exists(ctx.workdir) and not os.path.isdir(ctx.workdir):
    raise errors.PipelineError(f"--workdir {ctx.workdir} is a file, not a directory")
  os.makedirs(ctx.workdir, exist_ok=True)
  with io.workdir_lock(ctx.workdir):   # io.WorkdirBusy while a run holds it
    _command(command, ctx)


def _command(command: str, ctx) -> None:
  from lis_jax.label import export, importer, layout, suggest
  d = layout.label_dir(ctx.cfg("quantify").labels, ctx.workdir)
  if command == "export":
    export.export(ctx, _N.value, _BATCH.value)
    print(f"[label] exported to {d.root}; edit {d.part_names_file}, then open {d.page} in a "
          f"browser, save masks into {d.masks} and run `python -m lis_jax.label import`")
  elif command == "import":
    names = importer.import_masks(d, _MASKS.value, _FORMAT.value, importer.read_colours(_COLOURS.value))
    export.write_page(d)
    print(f"[label] imported {len(names)} mask(s) into {d.sub('labels')} "
          f"({len(d.labelled_names())} labelled in all)")
  else:
    ev = suggest.suggest(ctx, _FOLDS.value)
    if ev["mean_iou"] is None:
      print(f"[label] held-out IoU: n/a ({ev['n_images']} labelled image(s), folds {ev['folds']})")
    else:
      parts = ", ".join(f"{p} {v:.3f}" for p, v in ev["iou"].items())
      print(f"[label] held-out IoU ({ev['folds']}-fold over {ev['n_images']} labelled images): "
            f"mean {ev['mean_iou']:.3f} ({parts})")
    print(f"[label] {ev['n_suggested']} suggested mask(s) in {d.sub('suggestions')}; "
          f"{d.page} opens them")


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: python -m lis_jax.label {{{'|'.join(COMMANDS)}}} --config=... --workdir=...")
  logging.set_verbosity(logging.WARNING)
  try:
    run(argv[1])
  except (errors.PipelineError, io.CheckpointError, io.CorruptFileError, io.WorkdirBusy,
          SegmentationError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(1)
  except OSError as e:
    print(f"error: {io.describe_os_error(e)}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
