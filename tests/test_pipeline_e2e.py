"""All four stages end to end: through `python -m lis_jax.main`, killed and resumed.

Interruptions happen at the worst moment: right after a stage wrote an output file and
before it recorded it as done (`errors.maybe_interrupt`).
"""
import csv
import filecmp
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lis_jax import errors, linking, pipeline  # noqa: E402
from lis_jax.stages import paired_data  # noqa: E402
from tests import _tiny_run, interrupt  # noqa: E402


def _main(workdir, *overrides, kill_after=None, timeout=600):
  """`python -m lis_jax.main` on configs/tiny.py, shortened as tests/_tiny_run.py says (one
  sweep block, one counterfactual search per class pair). Its compilations go to the session's
  JAX cache (tests/conftest.py, through the environment): the resumed run reuses the killed
  run's programs, and both reuse those of the worker's other runs of configs/tiny.py
  (tests/test_label_pipeline.py's, shortened the same way; before the shortening: 127.9 and
  133.9 CPU s for the two files in one pytest process with a cache of their own here, 113.6
  and 118.4 with the session's).
  """
  env = dict(os.environ)
  env.pop("LIS_JAX_TEST_KILL_AFTER", None)
  if kill_after:
    env["LIS_JAX_TEST_KILL_AFTER"] = kill_after
  cmd = [sys.executable, "-m", "lis_jax.main", "--config=configs/tiny.py", f"--workdir={workdir}",
         *_tiny_run.ARGS, *overrides]
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _load_tiny(**flat):
  from configs import tiny
  cfg = tiny.get_config()
  cfg.update_from_flattened_dict(flat)
  return cfg


def test_main_all_stages_sigkill_and_resume(tmp_path):
  """Built-in sgxl-tiny + tiny-resnet-random: SIGKILL inside paired_data, resume, all stages."""
  work = tmp_path / "w"
  killed = _main(work, kill_after="paired_data:2")
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  # shard files are the record of what is done; the manifest is written when all exist
  assert not (work / "paired_data" / "manifest.json").exists()
  assert sorted(p.name for p in (work / "paired_data").glob("shard_*.npz")) == [
      "shard_c0001_00000.npz", "shard_c0001_00001.npz"]

  done = _main(work)
  assert done.returncode == 0, done.stderr[-2000:]
  cfg = _load_tiny(**_tiny_run.FLAT)
  n = cfg.paired_data.n_per_class
  data = paired_data.load(str(work))
  for c in (1, 2, 3):   # keep_only_correct=False: exactly latents 0..n-1 of each class, once
    np.testing.assert_array_equal(data.seed_index[data.cls == c], np.arange(n))
  assert (work / "link" / "metrics.json").exists()
  with open(work / "sweep" / "index.csv") as f:
    rows = list(csv.DictReader(f))
  keys = {(r["unit"], r["sample"], r["step"]) for r in rows}
  n_units = 2   # _tiny_run.SWEEP_UNITS '0:2'
  want = n_units * 3 * cfg.sweep.samples_per_class * cfg.sweep.n_steps
  assert len(rows) == len(keys) == want
  res = np.load(work / "counterfactual" / "results.npz")
  assert res["search"].tolist() == list(range(6 * cfg.counterfactual.samples_per_pair))


def _tiny_models_config(**flat):
  return _load_tiny(**{"generator": "tests.tiny_models:generator",
                       "classifier": "tests.tiny_models:classifier", "classes": "0,2,4",
                       "sweep.units": "0:5", **flat})


@pytest.mark.parametrize("kill_points", [("paired_data:3", "sweep:2", "counterfactual:1")])
def test_each_stage_resumes_to_identical_outputs(tmp_path, monkeypatch, kill_points):
  cfg = _tiny_models_config()
  ref, work = tmp_path / "ref", tmp_path / "work"
  pipeline.run(cfg, str(ref))
  for point in kill_points:
    interrupt.run_until(monkeypatch, cfg, str(work), point)
  pipeline.run(cfg, str(work))
  def files(d):   # Orbax names its files at random: the link is compared by value below.
    return sorted(p.relative_to(d) for p in d.rglob("*")
                  if p.is_file() and "params" not in p.relative_to(d).parts)
  ref_files, work_files = files(ref), files(work)
  assert ref_files == work_files
  a, b = (linking.load(str(d / "link" / "model")) for d in (ref, work))
  np.testing.assert_array_equal(a.params["A"], b.params["A"])
  for rel in ref_files:
    if rel.suffix == ".npz":
      a, b = np.load(ref / rel), np.load(work / rel)
      assert a.files == b.files
      for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{rel}:{k}")
    elif rel.suffix in (".csv", ".json", ".png") and rel.name != "last_config.json":
      assert filecmp.cmp(ref / rel, work / rel, shallow=False), rel


def test_incompatible_workdir_is_refused_and_untouched(tmp_path):
  cfg = _tiny_models_config(stages=("paired_data",))
  pipeline.run(cfg, str(tmp_path))
  before = {p: p.read_bytes() for p in (tmp_path / "paired_data").iterdir()}
  with pytest.raises(errors.PipelineError, match=r"psi: 0.7 -> 0.5"):
    pipeline.run(_tiny_models_config(stages=("paired_data",), psi=0.5), str(tmp_path))
  assert before == {p: p.read_bytes() for p in (tmp_path / "paired_data").iterdir()}


@pytest.mark.parametrize("overrides,message", [
    (["--config=configs/linear.py"], "error: generator checkpoint not found: .*checkpoints/stylegan_xl_imagenet256; "
                                     "convert it first: python -m converters.stylegan_xl --pkl imagenet256.pkl --out "),
    # A comma-separated override is split into stage names, checked before anything runs.
    (["--config=configs/tiny.py", "--config.stages=paired_data,no_such_stage"],
     r"error: unknown stage\(s\) \['no_such_stage'\]"),
])
def test_main_bad_input_one_line_exit_1(tmp_path, overrides, message):
  cmd = [sys.executable, "-m", "lis_jax.main", f"--workdir={tmp_path}", *overrides]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1
  last = out.stderr.strip().splitlines()[-1]
  import re
  assert re.match(message, last), out.stderr[-1000:]
  assert "Traceback" not in out.stderr
