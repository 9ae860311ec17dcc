"""Atomic writes and checkpoint structure checks of lis_jax.io."""
import os

import numpy as np
import pytest

from lis_jax import io


def test_checkpoint_roundtrip_and_structure_check(tmp_path):
  params = {"conv1": {"kernel": np.arange(24, dtype=np.float32).reshape(2, 3, 4)}, "b": np.ones(3)}
  io.save_checkpoint(str(tmp_path / "ck"), params, {"arch": "x"})
  got, meta = io.load_checkpoint(str(tmp_path / "ck"), expected=params)
  np.testing.assert_array_equal(got["conv1"]["kernel"], params["conv1"]["kernel"])
  assert meta["arch"] == "x" and meta["params_sha256"] == io.tree_sha256(params)
  with pytest.raises(io.CheckpointError, match=r"shape: +conv1/kernel got \(2, 3, 4\)"):
    io.load_checkpoint(str(tmp_path / "ck"), expected={"conv1": {"kernel": np.ones((2, 3))}, "b": np.ones(3)})
  with pytest.raises(io.CheckpointError, match="missing: +c"):
    io.check_tree(got, {**params, "c": np.ones(1)})


def test_atomic_dir_keeps_old_content_on_failure(tmp_path):
  out = tmp_path / "out"
  with io.atomic_dir(str(out)) as d:
    open(os.path.join(d, "a"), "w").write("good")
  with pytest.raises(RuntimeError):
    with io.atomic_dir(str(out)) as d:
      open(os.path.join(d, "a"), "w").write("half")
      raise RuntimeError("crash mid-write")
  assert (out / "a").read_text() == "good"
  assert sorted(os.listdir(tmp_path)) == ["out"]  # no temp debris


def test_atomic_file_and_missing_checkpoint(tmp_path):
  io.write_json(str(tmp_path / "m.json"), {"x": np.float32(1.5)})
  assert io.read_json(str(tmp_path / "m.json")) == {"x": 1.5}
  with pytest.raises(io.CheckpointError, match="not found"):
    io.load_meta(str(tmp_path / "nope"))
  with pytest.raises(io.CheckpointError, match="not a lis_jax checkpoint"):
    io.load_meta(str(tmp_path))


def test_outputs_follow_umask(tmp_path):
  old = os.umask(0o022)
  try:
    io.write_json(str(tmp_path / "m.json"), {})
    with io.atomic_dir(str(tmp_path / "d")):
      pass
  finally:
    os.umask(old)
  assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o644
  assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
