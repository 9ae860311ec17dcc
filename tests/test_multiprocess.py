"""Multi-process runs (jax.distributed, 2 processes x 2 CPU devices, gloo) of configs/tiny.py.

The same stages run (1) in one process on 1 device, (2) in one process on 4 simulated
devices, (3) in 2 processes of 2 devices each on localhost; all three write the same
results, within tolerances measured on two machines and on emulated other CPUs (below); a
chaotic search's outcomes are checked in each run against its own inputs. Then a
2-process run loses one process mid-stage (SIGKILL) and is finished by a single process:
the final outputs are those of the uninterrupted runs.
"""
import csv
import io as _io
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
from PIL import Image

from lis_jax import io

ROOT = pathlib.Path(__file__).resolve().parents[1]

# What agrees with what (measured; README, "Reproducibility"). Runs of configs/tiny.py on the
# 2-core Xeon (AVX-512) build machine: 1 device vs 4 devices vs 2 processes x 2 devices, a
# rerun, and the same machine emulating other CPUs' kernels (XLA --xla_cpu_max_isa=AVX2 with
# OpenBLAS's Haswell kernels, 1 device; SSE4_2 (no FMA) with Nehalem's, 4 devices):
# - bit-identical here across reruns, device and process counts, and with AVX2 kernels:
#   everything but, across device/process counts, the classifier's probabilities and the
#   sweep's r' (2.4e-7 of their largest value). Not asserted: other kernels change them.
# - SSE4_2 kernels: paired data (w, r, logits) within 8.6e-7 of each array's largest value,
#   the link's predictions 9.0e-6 (its A 1.0e-5), sweep arrays 3.3e-5, single numbers
#   4.1e-5 relative (one w dim's held-out R^2 of -0.0279 moved by 6.5e-6), pixels by 1.
# Float arrays: |a - b| <= ARRAY_TOL x max|a| per array.
ARRAY_TOL = 1e-3
# Single numbers in JSON (no array to scale by; a CSV column is compared as an array): |a - b| <= NUM_RTOL |a| + NUM_ATOL.
NUM_RTOL, NUM_ATOL = 1e-3, 1e-5
# uint8 images: float noise may truncate a pixel to its neighbour value.
PIXEL_ATOL = 1
# What the classifier reads from those 8-bit images (configs/linear.py's quantize, which the
# tiny run keeps): the sweep's r' of the swept unit, the class probability, and r_follow made
# from r'. A pixel one level off moves them by far more than float noise: on the Xeon no pixel
# flipped across device counts (r' 2.4e-7 apart); on the AMD EPYC (7 Dec), 1 vs 4 devices, 19 of
# 331776 sweep pixel values flipped by one level and r' moved by 4.6e-4 of its largest value,
# r_follow 2.4e-4, p_cls 5.4e-5. Their bound, per array and per CSV column: 10x the largest.
QUANTIZED = {"sweep": ("r_prime_unit", "p_cls", "r_follow")}
QUANTIZED_TOL = 5e-3
# The link is compared by what is identifiable, its predictions on every paired r (held-out
# R^2 is in metrics.json, compared as a number): |p - p_ref| <= LINK_PRED_TOL x max|p_ref|.
# Its coefficients are not (condition number 8.6e3 on the tiny run: r perturbed by 1e-6 of
# itself moved max|dA|/max|A| by 2.7e-5, the predictions by 3.4e-5).
LINK_PRED_TOL = 1e-3
# Discrete outcomes (ints, bools, strings) agree exactly.
# The counterfactual search of this config is chaotic (random weights: w runs off to 1e3 in
# 20 SGD steps), so the last bits of its first steps decide where it ends. Those bits depend on
# the CPU's kernels and, on some CPUs, on how many rows each device computes: on the Xeon above
# its outcomes were bit-identical across device and process counts, and with the SSE4_2 kernels'
# inputs (r 5e-7 off) its final shifts moved by 55% and 9 of 48 top units changed; on an AMD
# EPYC (Zen 3, AVX2, 7 Dec), from bit-identical inputs (r, w_before), 1 device vs 4: the
# classifier's probabilities of the same w 1.3e-7 apart, then the final shifts 39% of their
# largest value, w_after 25%, probs_after 21% (steps, success and top units the same there).
# So its outcomes, and the images, index.csv and rates made from them, are not compared
# across runs; each run's outcomes are checked against its own inputs instead
# (`assert_outcomes_follow_inputs`: a row's w_after is the link of its own r - shift, its top
# units its largest |shift|), which fails if a run mixed rows.
CHAOTIC = {"counterfactual": ("shift", "top_shift", "top_units", "w_after", "probs_after", "steps",
                              "success")}
# What the chaotic stages write from their outcomes (besides the arrays above).
CHAOTIC_FILES = {"counterfactual": ("index.csv", "summary.json", "images")}
CHAOTIC_SUMMARY_KEEP = ("n",)   # summary.json's field that is bookkeeping, compared exactly
# Files and JSON fields that say how a run went rather than what it computed.
RUN_RECORDS = ("last_config.json",)
RUN_FIELDS = ("train_seconds",)
# Checksums of values compared within tolerances above (the link's, by its predictions).
VALUE_CHECKSUMS = {"link/model/meta.json": ("params_sha256",)}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices: int, cache: pathlib.Path, kill_after: str | None = None) -> dict:
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  env.pop("LIS_JAX_TEST_KILL_AFTER", None)
  if kill_after:
    env["LIS_JAX_TEST_KILL_AFTER"] = kill_after
  return env


def _cmd(workdir, *flags):
  return [sys.executable, "-m", "lis_jax.main", "--config=configs/tiny.py", f"--workdir={workdir}",
          *flags]


def jax_cache(tmp_path_factory) -> pathlib.Path:
  """One persistent compilation cache for the runs of configs/tiny.py in this pytest session
  (this file's and tests/test_multiprocess_faults.py's): runs with the same devices per
  process compile the same programs, so the later ones load them."""
  return tmp_path_factory.getbasetemp() / "jax_cache_tiny"


def popen_logged(cmd, env) -> subprocess.Popen:
  """A process whose stdout and stderr go to temporary files (`wait_all` reads them): runs
  awaited together never block on a full pipe."""
  out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
  p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err, text=True)
  p.logs = (out, err)
  return p


def start_single(workdir, devices: int, cache) -> subprocess.Popen:
  return popen_logged(_cmd(workdir), _env(devices, cache))


def run_single(workdir, devices: int, cache) -> None:
  [(rc, _, err)] = wait_all([start_single(workdir, devices, cache)])
  assert rc == 0, err[-3000:]


def launch(workdir, n: int, devices: int, cache, kill_after: dict | None = None) -> list[subprocess.Popen]:
  """n processes of `lis_jax.main` on localhost; kill_after: {process id: 'stage:n'}."""
  port = _free_port()
  procs = []
  for pid in range(n):
    flags = (f"--coordinator_address=localhost:{port}", f"--num_processes={n}", f"--process_id={pid}")
    procs.append(popen_logged(_cmd(workdir, *flags), _env(devices, cache, (kill_after or {}).get(pid))))
  return procs


def wait_all(procs, timeout=900) -> list[tuple[int, str, str]]:
  """(return code, stdout, stderr) of each process; all are killed after `timeout` s."""
  deadline = time.time() + timeout
  try:
    for p in procs:
      p.wait(timeout=max(1, deadline - time.time()))
  except subprocess.TimeoutExpired:
    for q in procs:
      q.kill()
    raise
  return [(p.returncode, *read_logs(p)) for p in procs]


def read_logs(p: subprocess.Popen) -> tuple[str, str]:
  """stdout and stderr of an ended `popen_logged` process."""
  texts = []
  for f in p.logs:
    f.seek(0)
    texts.append(f.read())
    f.close()
  return tuple(texts)


# A port picked free may be taken by another program before process 0 binds it (process 0
# then stops at once with one line saying so): the run is started again on another port,
# at most this many times in all.
PORT_TRIES = 3


def run_processes(workdir, n: int, devices: int, cache) -> list[tuple[int, str, str]]:
  """(return code, stdout, stderr) of the n processes of one uninterrupted run (`launch`)."""
  for _ in range(PORT_TRIES):
    outs = wait_all(launch(workdir, n, devices, cache))
    if not port_taken(outs):
      break
  return outs


def port_taken(outs) -> bool:
  """Did the run stop at start-up because its coordinator port was taken meanwhile?"""
  return any(rc != 0 and "is in use on this host" in err for rc, _, err in outs)


def _files(d: pathlib.Path) -> list[pathlib.Path]:
  # Orbax names its files at random: the link is compared by value (link/model/params).
  return sorted(p.relative_to(d) for p in d.rglob("*")
                if p.is_file() and "params" not in p.relative_to(d).parts and p.name not in RUN_RECORDS)


def _close(a, b, what, tol=ARRAY_TOL):
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape and a.dtype == b.dtype, (what, a.shape, b.shape, a.dtype, b.dtype)
  if a.dtype == np.uint8:
    np.testing.assert_allclose(a.astype(int), b.astype(int), rtol=0, atol=PIXEL_ATOL, err_msg=what)
  elif np.issubdtype(a.dtype, np.floating):
    np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b), err_msg=what)
    ok = np.isfinite(a)
    scale = float(np.abs(a[ok]).max()) if ok.any() else 0.0
    np.testing.assert_allclose(a[ok], b[ok], rtol=0, atol=tol * scale, err_msg=what)
  else:   # ints, bools, strings: discrete outcomes agree exactly
    np.testing.assert_array_equal(a, b, err_msg=what)


def _csv_rows(path):
  with open(path) as f:
    return list(csv.reader(f))


def _paired_r(workdir: pathlib.Path) -> np.ndarray:
  """Every paired r [N, D] of a run (shard order does not matter: both links see the same)."""
  shards = sorted((workdir / "paired_data").glob("shard_*.npz"))
  return np.concatenate([io.load_npz(str(f), keys=("r",))["r"] for f in shards])


def assert_same_link(ref: pathlib.Path, other: pathlib.Path) -> None:
  """The two runs' links predict the same w from the same r (A itself is not identifiable)."""
  from lis_jax import linking
  a, b = (linking.load(str(d / "link" / "model")) for d in (ref, other))
  r = _paired_r(ref)
  pa, pb = np.asarray(a(r)), np.asarray(b(r))
  np.testing.assert_allclose(pb, pa, rtol=0, atol=LINK_PRED_TOL * np.abs(pa).max(),
                             err_msg="link predictions")


def _chaotic(rel: pathlib.Path) -> tuple:
  """The arrays of a chaotic stage's file that hold its outcomes (none for other files)."""
  return CHAOTIC.get(rel.parts[0], ())


def assert_same_results(ref: pathlib.Path, other: pathlib.Path) -> None:
  """Same files; arrays, CSV and JSON numbers, PNG pixels and link predictions within the
  tolerances above (a chaotic stage: its inputs and bookkeeping only)."""
  assert _files(ref) == _files(other)
  if (ref / "link").exists():
    assert_same_link(ref, other)
  for rel in _files(ref):
    x, y = ref / rel, other / rel
    chaotic = _chaotic(rel)
    if chaotic and len(rel.parts) > 1 and rel.parts[1] in CHAOTIC_FILES[rel.parts[0]]:
      continue   # images and tables of the chaotic outcomes
    if rel.suffix == ".npz":   # read verified; the embedded checksums differ with the values
      fa, fb = io.load_npz(str(x), finite=False), io.load_npz(str(y), finite=False)
      assert sorted(fa) == sorted(fb), rel
      for k in fa:
        if k not in chaotic:
          _close(fa[k], fb[k], f"{rel}:{k}", _tol(rel, k))
    elif rel.suffix == ".png":
      _close(np.asarray(Image.open(x)), np.asarray(Image.open(y)), str(rel))
    elif rel.suffix == ".csv":
      ra, rb = _csv_rows(x), _csv_rows(y)
      assert len(ra) == len(rb) and ra[0] == rb[0], rel
      for j, name in enumerate(ra[0]):   # a column of numbers is an array; others agree exactly
        ca, cb = ([row[j] for row in rows[1:]] for rows in (ra, rb))
        try:
          na, nb = np.asarray(ca, np.float64), np.asarray(cb, np.float64)
        except ValueError:
          assert ca == cb, (rel, name)
          continue
        _close(na, nb, f"{rel}:{name}", _tol(rel, name))
    elif rel.suffix == ".json":
      import json
      ja, jb = json.loads(x.read_text()), json.loads(y.read_text())
      for k in VALUE_CHECKSUMS.get(str(rel), ()):
        assert isinstance(ja.pop(k), str) and isinstance(jb.pop(k), str), (rel, k)
      if chaotic and rel.name == "summary.json":   # rates of the chaotic outcomes
        ja, jb = ({k: j[k] for k in CHAOTIC_SUMMARY_KEEP} for j in (ja, jb))
      _json_close(ja, jb, str(rel))
    else:
      assert x.read_bytes() == y.read_bytes(), rel


def _tol(rel: pathlib.Path, name: str) -> float:
  """The tolerance of an array or CSV column `name` of file `rel` (relative to its largest value)."""
  return QUANTIZED_TOL if name in QUANTIZED.get(rel.parts[0], ()) else ARRAY_TOL


def assert_outcomes_follow_inputs(workdir: pathlib.Path) -> None:
  """Each counterfactual search's outcomes belong to its own row, in one run: results.npz is
  its batch files in order, w_after = link(relu(r - shift)) by the run's own link, and
  top_units / top_shift are the units with the largest |shift| and their shifts."""
  from lis_jax import linking
  d = workdir / "counterfactual"
  res = io.load_npz(str(d / "results.npz"), finite=False)
  batches = [io.load_npz(str(f), finite=False) for f in sorted(d.glob("batch_*.npz"))]
  for k in res:
    np.testing.assert_array_equal(res[k], np.concatenate([b[k] for b in batches]), err_msg=k)
  want = np.asarray(linking.load(str(workdir / "link" / "model"))(np.maximum(res["r"] - res["shift"], 0)))
  np.testing.assert_allclose(res["w_after"], want, rtol=0, atol=LINK_PRED_TOL * np.abs(want).max(),
                             err_msg="w_after vs link(relu(r - shift))")
  np.testing.assert_array_equal(np.take_along_axis(res["shift"], res["top_units"], axis=1), res["top_shift"])
  largest = -np.sort(-np.abs(res["shift"]), axis=1)[:, :res["top_units"].shape[1]]
  np.testing.assert_array_equal(np.abs(res["top_shift"]), largest)


def _num_close(a: float, b: float) -> bool:
  if np.isnan(a) or np.isnan(b):
    return bool(np.isnan(a) and np.isnan(b))   # an undefined statistic is undefined in both
  return abs(a - b) <= NUM_ATOL + NUM_RTOL * abs(a)


def _json_close(a, b, where):
  if isinstance(a, dict):
    assert isinstance(b, dict) and a.keys() == b.keys(), where
    for k in a:
      if k not in RUN_FIELDS:
        _json_close(a[k], b[k], f"{where}.{k}")
  elif isinstance(a, list):
    assert isinstance(b, list) and len(a) == len(b), where
    for i, (u, v) in enumerate(zip(a, b)):
      _json_close(u, v, f"{where}[{i}]")
  elif isinstance(a, float) or isinstance(b, float):
    assert _num_close(a, b), (where, a, b)
  else:
    assert a == b, (where, a, b)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Workdirs of the uninterrupted runs: 1 device, 4 devices, 2 processes x 2 devices."""
  root = tmp_path_factory.mktemp("multiprocess")
  cache = jax_cache(tmp_path_factory)
  out = {"root": root, "cache": cache}
  # The three runs at once: they share no files, and most of each is single-threaded
  # start-up and compilation.
  singles = {name: start_single(root / name, d, cache) for name, d in (("one_device", 1),
                                                                      ("four_devices", 4))}
  outs = run_processes(root / "two_by_two", 2, 2, cache)
  for name, (rc, _, err) in zip(singles, wait_all(list(singles.values()))):
    assert rc == 0, (name, err[-3000:])
  for pid, (rc, _, err) in enumerate(outs):
    assert rc == 0, (pid, err[-3000:])
  out["logs"] = outs
  for name in ("one_device", "four_devices", "two_by_two"):
    out[name] = root / name
  return out


def test_two_processes_four_devices_and_one_device_write_the_same_results(runs):
  for name in ("one_device", "four_devices", "two_by_two"):
    assert_outcomes_follow_inputs(runs[name])
  assert_same_results(runs["one_device"], runs["four_devices"])
  assert_same_results(runs["one_device"], runs["two_by_two"])
  logs = runs["logs"]
  # progress and stage logs from process 0 only; one line per process at the end
  assert "stage paired_data: start" in logs[0][1] and "stage paired_data" not in logs[1][1]
  for pid, (_, _, err) in enumerate(logs):
    assert f"process {pid}/2 (2 device(s))" in err, err[-2000:]
  assert "%|" in logs[0][2] and "%|" not in logs[1][2]   # tqdm bars from process 0 only


def test_killed_process_then_one_process_finishes_the_same(runs):
  work, cache = runs["root"] / "killed", runs["cache"]
  for _ in range(PORT_TRIES):
    procs = launch(work, 2, 2, cache, kill_after={1: "paired_data:2"})
    try:
      procs[1].wait(timeout=900)
    finally:
      if procs[0].poll() is None:   # its peer is gone: the survivor would wait at the next barrier
        procs[0].send_signal(signal.SIGKILL)
      outs = wait_all(procs)
    if not port_taken(outs):
      break
  assert procs[1].returncode == -signal.SIGKILL, outs[1][2][-3000:]
  shards = sorted(p.name for p in (work / "paired_data").glob("shard_*.npz"))
  assert shards and not (work / "paired_data" / "manifest.json").exists(), shards
  run_single(work, 2, cache)
  assert_same_results(runs["two_by_two"], work)


def test_quantify_split_over_two_processes_matches_one(tmp_path, monkeypatch):
  """The quantify stage's share-and-merge, as processes 1 then 0 of 2 would run it (one
  Python process standing in for each in turn: no barrier is needed in this order)."""
  from test_quantify_stage import fake_sweep, small_config
  from lis_jax import distribute, pipeline
  config = small_config()
  one, two = tmp_path / "one", tmp_path / "two"
  for wd in (one, two):
    fake_sweep(str(wd), config)
  pipeline.run(config, str(one))
  monkeypatch.setattr(distribute, "process_count", lambda: 2)
  monkeypatch.setattr(distribute, "barrier", lambda name: None)
  # Process 0 records quantify's config.json before any process writes (a barrier in the
  # runner); standing in for it here, as process 1 runs first.
  pipeline.mark_done(config, str(two), "quantify")
  monkeypatch.setattr(distribute, "process_index", lambda: 1)
  pipeline.run(config, str(two))   # process 1: its block (1 of blocks 0, 1), no merge
  q = two / "quantify"
  assert (q / "block_00001.npz").exists() and not (q / "block_00000.npz").exists()
  assert not (q / "manifest.json").exists() and not (q / "selectivity.csv").exists()
  monkeypatch.setattr(distribute, "process_index", lambda: 0)
  pipeline.run(config, str(two))   # process 0: block 0, then the merge over both
  assert_same_results(one, two)
