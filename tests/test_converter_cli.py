"""Both converters' --out: never replace what the user made; OS errors in one line.

Outside truths: the file system itself (what is left in --out after a refusal), a real
full file system (a 400 kB tmpfs, mounted in a private user + mount namespace where the
machine allows one) and the errno the OS reports.
"""
import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from converters import outdir
from converters import stylegan_xl as sgxl
from converters import torchvision as tvc
from lis_jax import io
from tests.conftest import ROOT
from tests.torchvision_state_dicts import zeros_state_dict

# A file system smaller than either converted checkpoint (stem16: 2.2 MB, resnet18: 45 MB).
TMPFS_SIZE = "400k"


@pytest.fixture(scope="module")
def sources(fixtures_dir, tmp_path_factory):
  """converter name -> argv that converts a small source (without --out)."""
  tmp = tmp_path_factory.mktemp("sources")
  torch.manual_seed(0)  # random weights: zeros would compress to fit the small tmpfs
  # (|randn| for running variances: the converter refuses negative ones.)
  weights = {k: (torch.randn_like(v).abs() if k.endswith("running_var") else torch.randn_like(v))
             if v.is_floating_point() else v
             for k, v in zeros_state_dict("resnet18", num_classes=3).items()}
  torch.save(weights, tmp / "w.pth")
  return {"stylegan_xl": ["--pkl", str(fixtures_dir / "sgxl_stem16.pkl")],
          "torchvision": ["--arch", "resnet18", "--weights", str(tmp / "w.pth")]}


MAINS = {"stylegan_xl": sgxl.main, "torchvision": tvc.main}
KINDS = {"stylegan_xl": "stylegan_xl", "torchvision": tvc.KIND}
OTHER = {"stylegan_xl": "torchvision", "torchvision": "stylegan_xl"}


def _run(name, sources, out, *flags, capsys):
  rc = MAINS[name](sources[name] + ["--out", str(out), *flags])
  captured = capsys.readouterr()
  return rc, captured.out, captured.err


def _tree(path):
  """{relative path: file content} of everything under `path`."""
  return {os.path.relpath(os.path.join(d, f), path): open(os.path.join(d, f), "rb").read()
          for d, _, files in os.walk(path) for f in files}


# What users keep in directories a careless --out may name (the cases).
USER_DIRS = {
    "thesis": {"thesis.txt": "x", "sub/notes.md": "y"},
    "workdir": {"config.json": "{}", "paired_data/manifest.json": "{}", "last_config.json": "{}"},
    "meta only": {"meta.json": json.dumps({"kind": "stylegan_xl"})},  # + a user file below
    "other kind": {"meta.json": json.dumps({"kind": "shapes-resnet"}), "params/x": "1"},
}


@pytest.mark.parametrize("name", MAINS)
@pytest.mark.parametrize("contents", USER_DIRS)
@pytest.mark.parametrize("force", [False, True])
def test_user_directory_is_never_replaced(tmp_path, sources, capsys, name, contents, force):
  out = tmp_path / "out"
  files = dict(USER_DIRS[contents])
  if contents == "meta only":
    files["mine.txt"] = "user data beside a converter's meta.json"
  for rel, text in files.items():
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    (out / rel).write_text(text)
  before = _tree(out)
  rc, _, err = _run(name, sources, out, *(["--force"] if force else []), capsys=capsys)
  assert rc == 1 and err.startswith("error: --out ") and len(err.strip().splitlines()) == 1
  assert "is not an earlier output of this converter" in err and "nothing was changed" in err
  assert _tree(out) == before
  assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp dir left beside it


@pytest.mark.parametrize("name", MAINS)
def test_out_that_is_a_file_is_refused(tmp_path, sources, capsys, name):
  out = tmp_path / "out"
  out.write_text("a file")
  rc, _, err = _run(name, sources, out, "--force", capsys=capsys)
  assert rc == 1 and "exists and is not a directory" in err
  assert out.read_text() == "a file"


@pytest.mark.parametrize("name", MAINS)
def test_earlier_output_replaced_only_with_force(tmp_path, sources, capsys, name):
  out = tmp_path / "out"
  assert _run(name, sources, out, capsys=capsys)[0] == 0
  stale = out / io.PARAMS_DIR / "stale"  # marks the first output's params
  stale.write_text("from the first run")
  meta_before = (out / io.META_FILE).read_bytes()
  rc, _, err = _run(name, sources, out, capsys=capsys)
  assert rc == 1 and len(err.strip().splitlines()) == 1
  assert "already holds a converted checkpoint" in err and "add --force to replace it" in err
  assert stale.exists() and (out / io.META_FILE).read_bytes() == meta_before
  rc, _, _ = _run(name, sources, out, "--force", capsys=capsys)
  assert rc == 0 and not stale.exists()
  assert io.load_meta(str(out))["kind"] == KINDS[name]


@pytest.mark.parametrize("name", MAINS)
def test_other_converters_output_is_refused(tmp_path, sources, capsys, name):
  out = tmp_path / "out"
  assert _run(OTHER[name], sources, out, capsys=capsys)[0] == 0
  before = _tree(out)
  rc, _, err = _run(name, sources, out, "--force", capsys=capsys)
  assert rc == 1 and f"a '{OTHER[name]}' checkpoint, not '{KINDS[name]}'" in err
  assert _tree(out) == before


@pytest.mark.parametrize("name", MAINS)
def test_empty_directory_is_used(tmp_path, sources, capsys, name):
  out = tmp_path / "out"
  out.mkdir()
  assert _run(name, sources, out, capsys=capsys)[0] == 0
  assert sorted(p.name for p in out.iterdir()) == sorted(outdir.OUTPUT_ENTRIES)


@pytest.mark.parametrize("name", MAINS)
def test_directory_made_during_the_conversion_is_kept(tmp_path, sources, capsys, monkeypatch, name):
  # Another process creates --out after the check: the final rename must not replace it.
  out = tmp_path / "out"
  save = io.save_checkpoint

  def racing_save(*args, **kwargs):
    out.mkdir()
    (out / "theirs.txt").write_text("made meanwhile")
    return save(*args, **kwargs)

  monkeypatch.setattr(io, "save_checkpoint", racing_save)
  rc, _, err = _run(name, sources, out, capsys=capsys)
  assert rc == 1 and err.startswith(f"error: cannot write {out}: ")
  assert "choose a new --out" in err and len(err.strip().splitlines()) == 1
  assert _tree(out) == {"theirs.txt": b"made meanwhile"}


def _namespaces_available() -> bool:
  """Whether this machine lets a process mount a tmpfs in its own user + mount namespace."""
  if shutil.which("unshare") is None:
    return False
  probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt"],
                         capture_output=True, timeout=60)
  return probe.returncode == 0


@pytest.mark.parametrize("name", MAINS)
def test_disk_full_is_one_line(tmp_path, sources, capsys, monkeypatch, name):
  # Simulated: the OS error a full disk raises while writing (both converters share
  # outdir.write_checkpoint; the real full file system is the next test).
  out = tmp_path / "out"

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out))
  monkeypatch.setattr(io, "save_checkpoint", full)
  rc, _, err = _run(name, sources, out, capsys=capsys)
  assert rc == 1 and len(err.strip().splitlines()) == 1, err
  assert err.startswith(f"error: cannot write {out}: No space left on device")
  assert "free some space or choose another --out" in err
  assert not out.exists()


def test_full_file_system_is_one_line(tmp_path, sources, capsys, monkeypatch):
  # A real full file system where the machine allows mounting a private tmpfs: Orbax
  # then fails inside its writer threads (RESOURCE_EXHAUSTED ... os_error_code=28).
  out_root = tmp_path / "small"
  out_root.mkdir()
  out = out_root / "out"
  if not _namespaces_available():  # the simulated case above still covers the message
    test_disk_full_is_one_line(tmp_path, sources, capsys, monkeypatch, "stylegan_xl")
    return
  argv = [sys.executable, "-m", "converters.stylegan_xl", *sources["stylegan_xl"], "--out", str(out)]
  command = (f"mount -t tmpfs -o size={TMPFS_SIZE} tmpfs {out_root} && "
             + " ".join(f"'{a}'" for a in argv) + f"; rc=$?; ls -A {out_root}; exit $rc")
  proc = subprocess.run(["unshare", "-rm", "sh", "-c", command], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert proc.stderr.startswith(f"error: cannot write {out}: No space left on device")
  assert proc.stderr.rstrip().endswith("; free some space or choose another --out"), proc.stderr
  assert proc.stdout.strip() == ""  # nothing left on the full file system, no temp dir


@pytest.mark.parametrize("name", MAINS)
def test_permission_denied_is_one_line(tmp_path, sources, capsys, monkeypatch, name):
  parent = tmp_path / "locked"
  parent.mkdir()
  out = parent / "out"
  if os.geteuid() != 0:  # a real read-only parent directory
    parent.chmod(0o500)
  else:  # root ignores permission bits: simulate the error creating the temp dir raises
    mkdtemp = io.tempfile.mkdtemp

    def denied(*args, dir=None, **kwargs):
      if dir == str(parent):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(parent))
      return mkdtemp(*args, dir=dir, **kwargs)
    monkeypatch.setattr(io.tempfile, "mkdtemp", denied)
  try:
    rc, _, err = _run(name, sources, out, capsys=capsys)
  finally:
    parent.chmod(0o700)
  assert rc == 1 and len(err.strip().splitlines()) == 1, err
  assert err.startswith(f"error: cannot write {out}: Permission denied ({parent})")
  assert "choose an --out you can write to" in err
  assert not out.exists()
