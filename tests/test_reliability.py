"""The reliability suite (issue 11): every way a careless or hostile user broke the CLI.

Each case ends in one of three outcomes, asserted here: one `error: ...` line and exit
1 with nothing run; detected and recomputed (the log says so) with outputs equal to an
undisturbed run; or refused. The io-level primitives are in tests/test_reliability_io.py.
Runs are configs/tiny.py-sized on the tests' tiny random models.
"""
import contextlib
import io as _io
import os
import re
import pathlib
import sys

import pytest
from absl import flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lis_jax import main  # noqa: E402

TINY = str(ROOT / "configs" / "tiny.py")


def cli(monkeypatch, *args):
  """Runs `python -m lis_jax.main ARGS` in this process; returns (exit code, stderr)."""
  argv = ["lis_jax.main", *args]
  monkeypatch.setattr(sys, "argv", argv)   # ml_collections reads overrides from sys.argv
  monkeypatch.delitem(sys.modules, "config_config", raising=False)   # its cached config module
  for name in [n for n in flags.FLAGS if n.startswith("config.")]:   # overrides of a past parse
    delattr(flags.FLAGS, name)
  flags.FLAGS.unparse_flags()
  err = _io.StringIO()
  with contextlib.redirect_stderr(err):
    try:
      main.main(main.parse_flags(argv))
      rc = 0
    except SystemExit as e:
      rc = e.code
  return rc, err.getvalue()


def assert_one_line(rc, err, pattern):
  """Exit 1, no traceback, and one `error: ...` line, the last (progress bars may precede it)."""
  import re
  assert rc == 1, err
  lines = err.strip().splitlines()
  assert "Traceback" not in err and lines[-1].startswith("error: "), err
  assert sum(line.startswith("error") for line in lines) == 1, err
  assert re.search(pattern, lines[-1]), lines[-1]


# ----------------------------------------------------------------------------- config files


def _write(path, text):
  path.write_text(text)
  return str(path)


CONFIG_FILE_CASES = {
    "missing_file": (lambda d: str(d / "nope.py"), [], r"config file not found: .*nope\.py"),
    "syntax_error": (lambda d: _write(d / "c.py", "def get_config(:\n"), [],
                     r"config file .*c\.py line 1: invalid syntax"),
    "no_get_config": (lambda d: _write(d / "c.py", "x = 1\n"), [], r"has no attribute 'get_config'"),
    "get_config_raises": (lambda d: _write(d / "c.py", "def get_config():\n  return 1 / 0\n"), [],
                          r"ZeroDivisionError"),
    "a_directory": (lambda d: str(d), [], r"config file not found"),
    "unknown_section_field": (lambda d: TINY, ["--config.sweep.nope=3"],
                              r"unknown config field 'nope' in --config\.sweep\.nope=3"),
    "unknown_top_field": (lambda d: TINY, ["--config.nope=3"], r"unknown config field 'nope'"),
    "unparsable_value": (lambda d: TINY, ["--config.sweep.n_steps=abc"], r"n_steps=abc"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_FILE_CASES))
def test_config_file_errors_are_one_line(tmp_path, monkeypatch, case):
  make, extra, pattern = CONFIG_FILE_CASES[case]
  work = tmp_path / "work"
  rc, err = cli(monkeypatch, f"--config={make(tmp_path)}", f"--workdir={work}", *extra)
  assert_one_line(rc, err, pattern)
  assert not work.exists()   # nothing ran


# ----------------------------------------------------------------------------- pipeline runs

import filecmp  # noqa: E402
import shutil  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from lis_jax import context, errors, io, pipeline, stages  # noqa: E402

TINY_MODELS = {"generator": "tests.tiny_models:generator", "classifier": "tests.tiny_models:classifier",
               "classes": "0,2,4", "sweep.units": "0:5"}
TINY_ARGS = [f"--config={TINY}"] + [f"--config.{k}={v}" for k, v in TINY_MODELS.items()]
# Regenerated PNGs come from a different batch shape than the originals: uint8 truncation
# of float images may move a pixel by one level.
PNG_LEVELS = 1
# Files that differ between two correct runs by design.
VOLATILE = {"last_config.json", io.LOCK_FILE}


def tiny_config(**flat):
  from configs import tiny
  cfg = tiny.get_config()
  cfg.update_from_flattened_dict({**TINY_MODELS, **flat})
  return cfg


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """One undisturbed run of every tiny stage: what every repaired run must equal."""
  ref = tmp_path_factory.mktemp("ref") / "work"
  pipeline.run(tiny_config(), str(ref))
  return ref


def _files(d):
  return sorted(p.relative_to(d) for p in d.rglob("*")
                if p.is_file() and "params" not in p.relative_to(d).parts and p.name not in VOLATILE)


def assert_same_outputs(ref, work):
  assert _files(ref) == _files(work)
  from lis_jax import linking
  a, b = (linking.load(str(d / "link" / "model"), verify=True) for d in (ref, work))
  np.testing.assert_array_equal(a.params["A"], b.params["A"])
  for rel in _files(ref):
    if rel.suffix == ".npz":
      x, y = io.load_npz(str(ref / rel), finite=False), io.load_npz(str(work / rel), finite=False)
      assert sorted(x) == sorted(y), rel
      for k in x:
        np.testing.assert_array_equal(x[k], y[k], err_msg=f"{rel}:{k}")
    elif rel.suffix == ".png":
      x, y = (np.asarray(Image.open(d / rel), np.int16) for d in (ref, work))
      assert x.shape == y.shape and np.abs(x - y).max() <= PNG_LEVELS, rel
    elif rel.suffix == ".html":   # the page names its workdir
      assert (ref / rel).read_text().replace(str(ref), "W") == \
          (work / rel).read_text().replace(str(work), "W"), rel
    else:
      assert filecmp.cmp(ref / rel, work / rel, shallow=False), rel


def _copy(reference, tmp_path):
  work = tmp_path / "work"
  shutil.copytree(reference, work)
  return work


def _first_float(path):
  arrays = io.load_npz(str(path), finite=False)
  return arrays, next(k for k, v in arrays.items() if np.issubdtype(v.dtype, np.floating))


def _nan_with_checksum(path):   # NaN written properly (valid checksum): caught by the NaN check
  arrays, k = _first_float(path)
  arrays[k].flat[0] = np.nan
  io.save_npz(str(path), **arrays)


def _flip_byte(path, i):
  data = bytearray(path.read_bytes())
  data[i] ^= 0x10
  path.write_bytes(bytes(data))


def _flip_any(path):
  """One bit flipped in the stored numbers (bytes nobody reads are covered in test_reliability_io)."""
  if path.is_dir():   # a checkpoint: the OCDBT data files Orbax restores from
    for f in (path / io.PARAMS_DIR / "d").iterdir():
      _flip_byte(f, f.stat().st_size // 2)
    return
  import struct
  import zipfile
  with zipfile.ZipFile(path) as z:
    info = max(z.infolist(), key=lambda i: i.file_size)
  head = path.read_bytes()[info.header_offset:info.header_offset + 30]
  n, m = struct.unpack("<HH", head[26:30])   # local header: name and extra-field lengths
  _flip_byte(path, info.header_offset + 30 + n + m + info.file_size - 1)   # the array's last byte


def _delete(path):
  shutil.rmtree(path) if path.is_dir() else path.unlink()


CORRUPT = {"truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
           "zero_bytes": lambda p: p.write_bytes(b""), "bit_flip": _flip_any,
           "nan": _nan_with_checksum, "deleted": _delete}
TARGETS = {"paired_data": "paired_data/shard_c0002_00001.npz", "link_split": "link/split.npz",
           "link_model": "link/model", "sweep_block": "sweep/block_00001.npz",
           "sweep_samples": "sweep/samples.npz", "cf_batch": "counterfactual/batch_00001.npz",
           "cf_results": "counterfactual/results.npz"}
CASES = [(t, k) for t in TARGETS for k in CORRUPT
         if not (t == "link_model" and k in ("truncated", "zero_bytes", "nan"))
         and not (t == "link_split" and k == "nan")]   # integer rows only


@pytest.mark.parametrize("target, kind", CASES)
def test_corrupt_output_is_detected_and_recomputed(reference, tmp_path, capsys, target, kind):
  work = _copy(reference, tmp_path)
  CORRUPT[kind](work / TARGETS[target])
  capsys.readouterr()
  pipeline.run(tiny_config(), str(work))
  log = capsys.readouterr().out
  # A missing block is simply not done yet; samples.npz and results.npz are rewritten by
  # every run of their stage anyway.
  if (kind != "deleted" or target == "paired_data") and target not in ("sweep_samples", "cf_results"):
    assert "recomputing" in log, log
  assert_same_outputs(reference, work)


def test_corrupt_input_of_a_later_stage_is_recomputed_by_its_stage(reference, tmp_path, capsys):
  """NaN in a paired-data shard after the link was fitted, then only the counterfactual
  stage: the shard is regenerated by paired_data before the searches read it."""
  work = _copy(reference, tmp_path)
  shutil.rmtree(work / "counterfactual")
  _nan_with_checksum(work / "paired_data" / "shard_c0000_00000.npz")
  pipeline.run(tiny_config(stages=("counterfactual",)), str(work))
  assert "recomputing it: stage paired_data runs again" in capsys.readouterr().out
  assert_same_outputs(reference, work)


def test_missing_sweep_block_is_recomputed_before_a_consumer_reads_it(reference, tmp_path, capsys):
  """A stage that needs every sweep block (as quantify does) never sees a partial sweep."""
  from lis_jax import stages
  from lis_jax.stages.base import Stage
  import ml_collections
  seen = []
  consumer = Stage(name="consumer", requires=("sweep",), default_config=ml_collections.ConfigDict,
                   run=lambda ctx: seen.append([int(b["block"]) for b in ctx.result("sweep").blocks()]),
                   load=lambda workdir: None)
  work = _copy(reference, tmp_path)
  (work / "sweep" / "block_00001.npz").unlink()
  pipeline.run(tiny_config(stages=("consumer",)), str(work), registry={**stages.REGISTRY, "consumer": consumer})
  assert seen == [[0, 1, 2]]
  assert "sweep/block_00001.npz: missing; recomputing it: stage sweep runs again" in capsys.readouterr().out
  shutil.rmtree(work / "consumer")
  assert_same_outputs(reference, work)


def test_deleted_pngs_and_index_rows_are_regenerated(reference, tmp_path, capsys):
  work = _copy(reference, tmp_path)
  strips = sorted((work / "sweep" / "strips").rglob("*.png"))
  cf_pngs = sorted((work / "counterfactual" / "images").glob("*.png"))
  for p in strips[::3] + cf_pngs[::2]:
    p.unlink()
  (work / "sweep" / "index.csv").write_text("block,unit\n0,0\n")   # rows lost
  (work / "counterfactual" / "index.csv").unlink()
  pipeline.run(tiny_config(), str(work))
  log = capsys.readouterr().out
  assert f"{len(strips[::3])} missing PNG strip(s) regenerated" in log
  assert f"{len(cf_pngs[::2])} missing PNG(s) regenerated" in log
  assert_same_outputs(reference, work)


@pytest.mark.parametrize("what, content", [("manifest_empty", ""), ("manifest_broken", "{\"classes\": ["),
                                           ("config_empty", ""), ("config_broken", "[1, 2")])
def test_corrupt_json_is_one_line(reference, tmp_path, monkeypatch, what, content):
  work = _copy(reference, tmp_path)
  name = "manifest.json" if what.startswith("manifest") else "config.json"
  (work / "paired_data" / name).write_text(content)
  rc, err = cli(monkeypatch, *TINY_ARGS, f"--workdir={work}")
  assert_one_line(rc, err, rf"paired_data/{name}: (empty|invalid JSON).*delete .*paired_data")


def test_deleted_config_json_beside_outputs_is_refused(reference, tmp_path, monkeypatch):
  """sweep/config.json deleted, rerun with another n_steps: refused, blocks untouched."""
  work = _copy(reference, tmp_path)
  (work / "sweep" / "config.json").unlink()
  before = (work / "sweep" / "block_00000.npz").read_bytes()
  rc, err = cli(monkeypatch, *TINY_ARGS, "--config.sweep.n_steps=4", f"--workdir={work}")
  assert_one_line(rc, err, r"sweep holds outputs .* but no config.json")
  assert (work / "sweep" / "block_00000.npz").read_bytes() == before


# ----------------------------------------------------------------------------- values and the OS

BAD_VALUES = {
    "samples_per_class_negative": ("sweep.samples_per_class=-1", r"sweep\.samples_per_class=-1 must be >= 1"),
    "samples_per_class_zero": ("sweep.samples_per_class=0", r"sweep\.samples_per_class=0 must be >= 1"),
    "n_per_class_zero": ("paired_data.n_per_class=0", r"paired_data\.n_per_class=0 must be >= 1"),
    "batch_size_negative": ("counterfactual.batch_size=-4", r"counterfactual\.batch_size=-4"),
    "holdout_nan": ("link.holdout_fraction=nan", r"link\.holdout_fraction=nan must be a finite number"),
    "holdout_one": ("link.holdout_fraction=1.0", r"link\.holdout_fraction=1\.0 must be in \(0\.0, 1\.0\)"),
    "n_steps_one": ("sweep.n_steps=1", r"sweep\.n_steps=1 must be >= 2"),
    "top_units_negative": ("counterfactual.top_units=-1", r"counterfactual\.top_units=-1 must be >= 1"),
    "top_units_too_many": ("counterfactual.top_units=1000",   # tests.tiny_models' classifier: 12 units
                           r"counterfactual\.top_units=1000 must be in \[1, 12\]"),
    "empty_stages": ("stages=", r"config\.stages is empty"),
    "null_draws_one": ("quantify.null_draws=1", r"quantify\.null_draws=1 must be >= 2"),
    "unknown_concept_set": ("quantify.concepts=fancy",
                            r"quantify\.concepts='fancy' must be one of reference, calibrated"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_config_values_stop_before_anything_runs(tmp_path, monkeypatch, case):
  override, pattern = BAD_VALUES[case]
  work = tmp_path / "work"
  rc, err = cli(monkeypatch, *TINY_ARGS, f"--config.{override}", f"--workdir={work}")
  assert_one_line(rc, err, pattern)
  assert not work.exists() or sorted(os.listdir(work)) == [io.LOCK_FILE]   # no stage ran


def test_workdir_or_stage_dir_that_is_a_file(tmp_path, monkeypatch):
  (tmp_path / "file").write_text("x")
  rc, err = cli(monkeypatch, *TINY_ARGS, f"--workdir={tmp_path / 'file'}")
  assert_one_line(rc, err, r"--workdir .*file is a file, not a directory")
  work = tmp_path / "work"
  work.mkdir()
  (work / "sweep").write_text("not a directory")
  rc, err = cli(monkeypatch, *TINY_ARGS, f"--workdir={work}")
  assert_one_line(rc, err, r"work/sweep is a file where stage 'sweep' writes its directory")
  assert sorted(os.listdir(work)) == ["sweep"]


@contextlib.contextmanager
def small_fs(path, size):
  """A tmpfs of `size` mounted at `path` (we are root where CI runs), or None if not allowed."""
  import subprocess
  path.mkdir()
  ok = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                      capture_output=True).returncode == 0
  try:
    yield ok
  finally:
    if ok:
      subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_disk_full_is_one_line_and_the_run_resumes(reference, tmp_path, monkeypatch):
  """ENOSPC mid-run on a 96 KB tmpfs (the tiny run writes ~400 KB), or a simulated one."""
  mnt = tmp_path / "mnt"
  with small_fs(mnt, "96k") as mounted:
    if not mounted:   # no mount allowed here: the first write past the 20th raises ENOSPC
      import errno
      real, calls = io.atomic_file, []
      @contextlib.contextmanager
      def full(path, mode="wb"):
        calls.append(path)
        if len(calls) > 20:
          raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        with real(path, mode) as f:
          yield f
      monkeypatch.setattr(io, "atomic_file", full)
    work = mnt / "work"
    rc, err = cli(monkeypatch, *TINY_ARGS, f"--workdir={work}")
    assert_one_line(rc, err, r"No space left on device; free some space .* the run resumes")
    if mounted:
      subprocess_ok = os.system(f"mount -o remount,size=4m {mnt}") == 0
      assert subprocess_ok
    else:
      monkeypatch.setattr(io, "atomic_file", real)
    pipeline.run(tiny_config(), str(work))
    assert_same_outputs(reference, work)


def test_unwritable_workdir_is_one_line(tmp_path, monkeypatch):
  mnt = tmp_path / "ro"
  with small_fs(mnt, "64k") as mounted:
    if mounted:
      assert os.system(f"mount -o remount,ro {mnt}") == 0
    else:
      mnt.chmod(0o500)
    if not mounted and os.geteuid() == 0:   # root ignores permissions: simulate the refusal
      import errno
      def refuse(path, *a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
      monkeypatch.setattr(os, "makedirs", refuse)
    rc, err = cli(monkeypatch, *TINY_ARGS, f"--workdir={mnt / 'work'}")
    assert_one_line(rc, err, r"(Read-only file system|Permission denied).*(another --workdir|permissions)")


# ----------------------------------------------------------------------------- concurrency, swaps


def test_run_on_a_locked_workdir_stops_at_once(tmp_path, monkeypatch):
  work = tmp_path / "work"
  work.mkdir()
  with io.workdir_lock(str(work)):   # as a run in another process would hold it
    rc, err = cli(monkeypatch, *TINY_ARGS, f"--workdir={work}")
  import socket
  assert_one_line(rc, err, rf"is in use by another run \(pid {os.getpid()} on host "
                           rf"{socket.gethostname()}, started .*\); wait for it")
  assert sorted(os.listdir(work)) == [io.LOCK_FILE]   # nothing written


def test_two_runs_started_together_never_mix(tmp_path):
  """Two CLI runs on one workdir with different sweep.n_steps: one finishes; the other is
  refused (lock held, or a different config once the first is done); outputs are one config's."""
  import subprocess
  work = tmp_path / "work"
  procs = [subprocess.Popen([sys.executable, "-m", "lis_jax.main", *TINY_ARGS, f"--workdir={work}",
                             "--config.stages=paired_data,link,sweep", f"--config.sweep.n_steps={n}"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
           for n in (3, 4)]
  results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
  assert sorted(rc for rc, _ in results) == [0, 1], results
  loser = next(err for rc, err in results if rc == 1)
  assert_one_line(1, loser, r"in use by another run \(pid \d+ on host|written by a different config")
  n_steps = io.read_json(str(work / "sweep" / "config.json"))["sweep"]["n_steps"]
  from lis_jax.stages import sweep
  for blk in sweep.load(str(work)).blocks():
    assert blk["values"].shape[1] == n_steps == blk["w"].shape[2]


def _save_sgxl_tiny(path, seed):
  from lis_jax.generators import stylegan_xl
  G = stylegan_xl.tiny(seed)
  io.save_checkpoint(str(path), G.variables, {"kind": stylegan_xl.KIND, "spec": G.spec.to_json()})


class _Killed(Exception):
  pass


def test_checkpoint_swapped_between_kill_and_resume_is_refused(tmp_path):
  """paired_data half done with generator weights A at checkpoints/g; the checkpoint is
  replaced by weights B at the same path: the resume is refused before anything runs;
  A saved again (new files, new Orbax names, same weights) is accepted."""
  work = tmp_path / "work"
  ckpt = work / "checkpoints" / "g"
  _save_sgxl_tiny(ckpt, seed=0)
  cfg = tiny_config(generator="checkpoints/g", classifier="tiny-resnet-random", classes="1,2,3",
                    stages=("paired_data",))
  pipeline.mark_done(cfg, str(work), "paired_data")   # as the killed run recorded it
  (work / "paired_data" / "shard_c0001_00000.npz").write_bytes(b"an output made with A")
  _save_sgxl_tiny(ckpt, seed=1)   # other weights at the same path
  with pytest.raises(errors.PipelineError, match=r"the model weights changed.*generator\.params_sha256"):
    pipeline.run(cfg, str(work))
  _save_sgxl_tiny(ckpt, seed=0)
  fingerprint = stages.context(cfg, str(work)).fingerprint("paired_data")
  context.check_stage_config(str(work / "paired_data"), fingerprint)   # accepted: no error


def test_segmenter_counts_as_done_only_with_its_evaluation(tmp_path):
  """Killed between saving the segmenter and writing its held-out IoU, the old code kept
  the segmenter and lost the IoU for good: now the checkpoint is written last and reused
  only with its evaluation and a matching checksum."""
  from lis_jax.stages import quantify
  out = tmp_path / "quantify"
  ckpt = out / "segmenter"
  io.save_checkpoint(str(ckpt), {"w": np.ones(3, np.float32)}, {"kind": "part_segmenter"})
  assert not quantify._segmenter_done(str(out), str(ckpt))   # no segmenter_eval.json
  io.write_json(str(out / "segmenter_eval.json"), {"mean_iou": 0.5})
  assert quantify._segmenter_done(str(out), str(ckpt))
  for f in (ckpt / io.PARAMS_DIR / "d").iterdir():
    _flip_byte(f, f.stat().st_size // 2)
  assert not quantify._segmenter_done(str(out), str(ckpt))


# ----------------------------------------------------------------------------- kill and resume

KILL_SEED = 20261129   # fixed: the same kill points on every machine
N_KILLS = 6


def test_random_kills_over_all_stages_resume_to_identical_outputs(tmp_path, monkeypatch):
  """Killed right after a random file write (any stage, any file: shards, blocks, batches,
  checkpoints, JSON, PNGs, the report), N_KILLS times in a row, then resumed: the outputs
  equal an undisturbed run's. A kill stops the run as a SIGKILL would at that moment
  (files already renamed into place stay; nothing after them happens). The kill points
  are files of the undisturbed run's write sequence, drawn with a fixed seed, in order."""
  stages = tuple(tiny_config().stages) + ("report",)
  ref, work = tmp_path / "ref", tmp_path / "work"
  writes, kill_at = [], [None]

  def counting(real, root):
    @contextlib.contextmanager
    def wrapped(path, *a, **k):
      with real(path, *a, **k) as f:
        yield f
      rel = os.path.relpath(os.path.abspath(path), root[0])
      rel = re.sub(r"\.new-[^/]+$", ".new-*", rel)   # create_json's temp names are random
      writes.append(rel)
      if rel == kill_at[0]:
        raise _Killed(rel)
    return wrapped

  root = [str(ref)]
  monkeypatch.setattr(io, "atomic_file", counting(io.atomic_file, root))
  monkeypatch.setattr(io, "atomic_dir", counting(io.atomic_dir, root))
  pipeline.run(tiny_config(stages=stages), str(ref))
  candidates = [w for w in writes if w != "last_config.json"]
  rng = np.random.default_rng(KILL_SEED)
  points = [candidates[i] for i in sorted(rng.choice(len(candidates), N_KILLS, replace=False))]
  root[0], killed = str(work), []
  for point in points:
    kill_at[0] = point
    try:
      pipeline.run(tiny_config(stages=stages), str(work))
    except _Killed as e:
      killed.append(str(e))
  kill_at[0] = None
  pipeline.run(tiny_config(stages=stages), str(work))
  assert killed == points
  assert_same_outputs(ref, work)
