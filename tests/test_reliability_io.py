"""Reliability primitives of lis_jax.io (issue 11): checksums, content hashes, the lock.

The pipeline-level cases (corrupt outputs per stage, concurrent runs, checkpoint swap,
disk full, kill-and-resume) are in tests/test_reliability.py.
"""
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from lis_jax import io


def _arrays():
  rng = np.random.default_rng(0)
  return {"w": rng.normal(size=(16, 8)).astype(np.float32), "cls": np.arange(16, dtype=np.int32)}


def _truncate(path):
  data = open(path, "rb").read()
  open(path, "wb").write(data[:len(data) // 2])


def _zero(path):
  open(path, "wb").close()


def _flip(offset_fraction):
  def flip(path):
    data = bytearray(open(path, "rb").read())
    i = int(len(data) * offset_fraction)
    data[i] ^= 0x10
    open(path, "wb").write(bytes(data))
  return flip


def _rewrite_with_nan(path):   # a valid npz, as a careless user would write it: no checksum
  arrays = _arrays()
  arrays["w"][3, 2] = np.nan
  np.savez(path, **arrays)


CORRUPTIONS = {"truncated": _truncate, "zero_bytes": _zero, "flip_header": _flip(0.05),
               "flip_data": _flip(0.4), "foreign_npz": _rewrite_with_nan}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_load_npz_reports_every_corruption_in_one_line(tmp_path, kind):
  path = str(tmp_path / "block.npz")
  io.save_npz(path, **_arrays())
  got = io.load_npz(path)
  assert sorted(got) == ["cls", "w"]
  np.testing.assert_array_equal(got["w"], _arrays()["w"])
  CORRUPTIONS[kind](path)
  with pytest.raises(io.CorruptFileError) as e:
    io.load_npz(path)
  assert e.value.path == path and "\n" not in str(e.value)
  assert not io.npz_ok(path)


def test_any_flipped_bit_is_detected_or_harmless(tmp_path):
  """A flip anywhere in the file: an error, or (zip bytes numpy ignores) the same arrays."""
  path = str(tmp_path / "block.npz")
  io.save_npz(path, **_arrays())
  size, detected = os.path.getsize(path), 0
  for offset in range(0, size, max(1, size // 97)):
    io.save_npz(path, **_arrays())
    _flip(offset / size)(path)
    try:
      got = io.load_npz(path)
    except io.CorruptFileError:
      detected += 1
      continue
    for k, v in _arrays().items():
      np.testing.assert_array_equal(got[k], v)
  assert detected > 0.8 * (size // max(1, size // 97))   # most bytes are data or headers


def test_load_npz_finiteness_is_checked_on_read(tmp_path):
  path = str(tmp_path / "a.npz")
  arrays = _arrays()
  arrays["metric"] = np.array([1.0, np.nan], np.float32)   # NaN legitimately (e.g. absent part)
  io.save_npz(path, **arrays)
  with pytest.raises(io.CorruptFileError, match="'metric' holds 1 NaN/inf"):
    io.load_npz(path)
  assert io.load_npz(path, finite=("w",))["metric"].shape == (2,)
  with pytest.raises(io.CorruptFileError, match="lacks the array"):
    io.load_npz(path, finite=False, keys=("w", "r"))


def test_tree_sha256_is_content_not_layout():
  a = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "y": {"b": np.ones(2)}}
  same = {"y": {"b": np.ones(2)}, "x": np.arange(6, dtype=np.float32).reshape(2, 3)}
  assert io.tree_sha256(a) == io.tree_sha256(same)
  for changed in ({**a, "x": a["x"].reshape(3, 2)}, {**a, "x": a["x"].astype(np.float64)},
                  {**a, "x": np.where(a["x"] == 4, np.nextafter(a["x"], np.float32(9)), a["x"])}):  # 1 ulp
    assert io.tree_sha256(changed) != io.tree_sha256(a)


def test_params_sha256_cached_and_recomputed_on_swap(tmp_path, monkeypatch):
  ck = str(tmp_path / "ck")
  p1 = {"k": np.arange(4, dtype=np.float32)}
  io.save_checkpoint(ck, p1, {"kind": "x"})
  assert io.params_sha256(ck) == io.tree_sha256(p1)
  calls = []
  real = io.load_checkpoint
  monkeypatch.setattr(io, "load_checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
  assert io.params_sha256(ck) == io.tree_sha256(p1) and calls == []   # from the cache
  # Swap: another checkpoint at the same path (as a converter rerun would leave it).
  p2 = {"k": np.arange(4, dtype=np.float32) * 2}
  io.save_checkpoint(ck, p2, {"kind": "x"})
  assert io.params_sha256(ck) == io.tree_sha256(p2)
  # An old checkpoint without a hash gets one computed (once) and cached.
  meta = io.load_meta(ck)
  io.write_json(os.path.join(ck, io.META_FILE),
                {k: v for k, v in meta.items() if not k.startswith("params_sha256")})
  calls.clear()
  assert io.params_sha256(ck) == io.tree_sha256(p2) and len(calls) == 1
  assert io.params_sha256(ck) == io.tree_sha256(p2) and len(calls) == 1


def _largest_file(root):
  files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
  return max(files, key=os.path.getsize)


def test_flipped_bit_in_checkpoint_params_is_detected(tmp_path):
  ck = str(tmp_path / "ck")
  params = {"A": np.random.default_rng(1).normal(size=(64, 32)).astype(np.float32)}
  io.save_checkpoint(ck, params, {"kind": "link"})
  io.load_checkpoint(ck, verify=True)
  _flip(0.5)(_largest_file(os.path.join(ck, io.PARAMS_DIR)))
  with pytest.raises((io.CorruptFileError, io.CheckpointError)):
    io.load_checkpoint(ck, verify=True)
  with pytest.raises((io.CorruptFileError, io.CheckpointError)):
    io.params_sha256(ck)   # the cache is keyed by the files' mtimes: recomputed, mismatch


def test_create_json_exactly_one_winner(tmp_path):
  path = str(tmp_path / "config.json")
  wins = []
  threads = [threading.Thread(target=lambda i=i: wins.append((i, io.create_json(path, {"i": i}))))
             for i in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  winners = [i for i, won in wins if won]
  assert len(winners) == 1 and io.read_json(path) == {"i": winners[0]}
  assert sorted(os.listdir(tmp_path)) == ["config.json"]   # no temp debris


@pytest.mark.parametrize("content, problem", [("", "empty"), ("{\"a\": ", "invalid JSON"),
                                              (None, "missing")])
def test_read_json_checked_one_line(tmp_path, content, problem):
  path = tmp_path / "manifest.json"
  if content is not None:
    path.write_text(content)
  with pytest.raises(io.CorruptFileError, match=problem) as e:
    io.read_json_checked(str(path))
  assert "\n" not in str(e.value)


def test_workdir_lock_names_the_holder_and_is_freed_by_sigkill(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from lis_jax import io\n"
       "with io.workdir_lock(sys.argv[1]):\n  print('locked', flush=True); time.sleep(60)",
       str(tmp_path)], stdout=subprocess.PIPE, text=True,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(io.WorkdirBusy) as e:
      with io.workdir_lock(str(tmp_path)):
        pass
    msg = str(e.value)
    assert f"pid {holder.pid}" in msg and socket.gethostname() in msg and "\n" not in msg
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  with io.workdir_lock(str(tmp_path)):   # the kernel released it with the process
    with pytest.raises(io.WorkdirBusy, match=f"pid {os.getpid()}"):
      with io.workdir_lock(str(tmp_path)):   # a second open file in this process: refused too
        pass


def test_describe_os_error_names_path_and_remedy():
  e = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/w/sweep/block_00001.npz")
  msg = io.describe_os_error(e)
  assert msg.startswith("/w/sweep/block_00001.npz: No space left on device; free some space")
  assert "\n" not in msg
