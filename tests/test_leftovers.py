"""io.remove_leftovers: the temp files and directories of killed atomic writes are removed,
nothing else (real outputs, look-alike names, symbolic links and what they point to)."""
import dataclasses
import os
import pathlib
import subprocess
import sys

from lis_jax import io

ROOT = pathlib.Path(__file__).resolve().parents[1]

# A process killed (os._exit, as SIGKILL: no cleanup runs) inside each atomic write.
_KILLED = r"""
import os, sys
from lis_jax import io
kind, path = sys.argv[1], sys.argv[2]
if kind == "dir":
  with io.atomic_dir(path) as tmp:
    open(os.path.join(tmp, "params"), "w").write("half")
    os._exit(9)
else:
  with io.atomic_file(path) as f:
    f.write(b"half a png")
    f.flush()
    os._exit(9)
"""


def _killed_write(kind: str, path: pathlib.Path) -> None:
  out = subprocess.run([sys.executable, "-c", _KILLED, kind, str(path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 9, out.stderr[-2000:]


def test_killed_writes_leave_temps_that_the_next_run_removes(tmp_path):
  wd = tmp_path / "work"
  (wd / "quantify").mkdir(parents=True)
  (wd / "sweep" / "images_small").mkdir(parents=True)
  _killed_write("dir", wd / "quantify" / "segmenter")          # quantify/.segmenter.tmp-*
  _killed_write("file", wd / "sweep" / "images_small" / "u0.png")   # images_small/.u0.png.tmp-*
  import tempfile
  fd, _ = tempfile.mkstemp(prefix=".config.json.new-", dir=wd / "quantify")   # create_json's
  os.close(fd)
  temps = sorted(str(p.relative_to(wd)) for p in wd.rglob(".*") if io.is_leftover(p.name))
  assert len(temps) == 3, temps
  # What must stay: outputs, hidden files and names that only look alike, a link.
  keep = [wd / "quantify" / "manifest.json", wd / "sweep" / "images_small" / "u1.png",
          wd / ".lock", wd / "quantify" / "segmenter.tmp-abcdefgh", wd / ".notes.tmp-short",
          wd / ".notes.tmp-ABCDEFGH"]
  for p in keep:
    p.write_text("keep")
  outside = tmp_path / "outside"
  outside.mkdir()
  (outside / "data").write_text("keep")
  os.symlink(outside, wd / ".linked.tmp-abcdefgh")
  removed = io.remove_leftovers(str(wd))
  assert removed == temps
  assert not any(io.is_leftover(p.name) and not p.is_symlink() for p in wd.rglob("*"))
  assert all(p.read_text() == "keep" for p in keep)
  assert (wd / ".linked.tmp-abcdefgh").is_symlink() and (outside / "data").read_text() == "keep"
  assert io.remove_leftovers(str(wd)) == []   # idempotent


def test_the_runner_removes_leftovers_before_its_stages(tmp_path, capsys):
  """pipeline.run, holding the workdir lock, removes a killed run's temp files (a toy stage
  from tests/test_pipeline_api.py: no models)."""
  import tempfile
  from test_pipeline_api import _config, _toy
  from lis_jax import pipeline
  calls = []
  reg = {"a": _toy("a", calls=calls)}
  pipeline.run(_config(("a",)), str(tmp_path), reg)
  fd, tmp = tempfile.mkstemp(prefix=".n.json.tmp-", dir=tmp_path / "a")   # a killed write
  os.close(fd)
  seen = []
  reg["a"] = dataclasses.replace(reg["a"], run=lambda ctx: seen.append(os.path.exists(tmp)))
  pipeline.run(_config(("a",)), str(tmp_path), reg)
  assert seen == [False] and not os.path.exists(tmp)   # gone before the stage ran
  assert "removed temp files of an interrupted run: a/.n.json.tmp-" in capsys.readouterr().out

