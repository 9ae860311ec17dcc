"""python -m lis_jax.label takes the workdir's lock and validates the config as a run does:
an import while a run holds the lock, or with a value a run refuses, stops with one line
and writes nothing."""
import os
import subprocess
import sys

import numpy as np

from conftest import ROOT
from lis_jax import images, io
from lis_jax.label import layout, masks

PARTS = ["background", "cap"]


def _label_cli(*args):
  return subprocess.run([sys.executable, "-m", "lis_jax.label", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def _exported(work) -> layout.LabelDir:
  """A label dir as export leaves it (one image), with one painted mask to import."""
  d = layout.LabelDir(str(work / "seg_labels" / "dogs"))   # configs/tiny.py's quantify.labels
  io.write_json(d.part_names_file, PARTS)
  io.write_json(d.export_file, {"names": ["a"], "image_size": 8, "resolution": 8})
  os.makedirs(d.sub("w"))
  np.save(d.w("a"), np.zeros((3, 4), np.float32))
  for path in (d.image("a"), d.image_small("a")):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
      f.write(images.png_bytes(np.zeros((8, 8, 3), np.uint8)))
  os.makedirs(d.masks)
  with open(os.path.join(d.masks, "a.png"), "wb") as f:
    f.write(masks.indexed_png(np.ones((8, 8), np.int32), len(PARTS)))
  return d


def _snapshot(root) -> dict:
  out = {}
  for dirpath, _, files in os.walk(root):
    for n in files:
      p = os.path.join(dirpath, n)
      if n != io.LOCK_FILE:
        with open(p, "rb") as f:
          out[os.path.relpath(p, root)] = f.read()
  return out


def test_import_while_a_run_holds_the_lock_is_refused(tmp_path):
  work = tmp_path / "work"
  d = _exported(work)
  before = _snapshot(work)
  with io.workdir_lock(str(work)):   # as `python -m lis_jax.main` holds it during a run
    out = _label_cli("import", "--config=configs/tiny.py", f"--workdir={work}")
  assert out.returncode == 1, out.stderr[-2000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and "is in use by another run" in lines[0], lines
  assert "Traceback" not in out.stderr
  assert _snapshot(work) == before and not os.path.exists(d.sub("labels"))
  # The lock released, the same import goes through.
  ok = _label_cli("import", "--config=configs/tiny.py", f"--workdir={work}")
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert os.path.exists(os.path.join(d.sub("labels"), "a.npy"))


def test_label_command_refuses_a_value_a_run_refuses(tmp_path):
  work = tmp_path / "work"
  _exported(work)
  before = _snapshot(work)
  out = _label_cli("import", "--config=configs/tiny.py", f"--workdir={work}",
                   "--config.quantify.null_draws=1")
  assert out.returncode == 1
  lines = out.stderr.strip().splitlines()
  assert lines == ["error: config.quantify.null_draws=1 must be >= 2"], lines
  assert _snapshot(work) == before
