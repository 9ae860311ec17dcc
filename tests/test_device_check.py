"""benchmarks/device_check.py --smoke (the --small preset at its fewest images and steps):
every part runs on CPU and the JSON says what it measured."""
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

# bfloat16 keeps 8 significand bits: a relative rounding error of 2^-8 per operation, which
# a few dozen layers grow to a few hundredths on images in [-1, 1] (the 'mid' preset:
# max 0.020, README). Far above it would mean a broken bfloat16 path; exactly 0, no bfloat16.
BF16_MAX_ABS = 0.25


def test_device_check_smoke_runs_and_writes_json(tmp_path):
  out_path = tmp_path / "dc.json"
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  run = subprocess.run([sys.executable, "benchmarks/device_check.py", "--smoke", f"--out={out_path}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  res = json.loads(out_path.read_text())
  assert res["skipped"] == [], res["skipped"]
  assert res["generator"]["arch"] == "tiny" and res["platform"] == "cpu"
  from benchmarks import device_check
  size = device_check.SIZES["smoke"]
  got = {(s["dtype"], s["batch"]) for s in res["synthesis"]}
  assert got == {(d, b) for d in ("float32", "bfloat16") for b in size["batches"]}
  assert all(s["images_per_s"] > 0 and len(s["seconds"]) == size["iters"] for s in res["synthesis"])
  assert 0 < res["bf16_vs_fp32"]["max_abs"] < BF16_MAX_ABS
  assert res["classifier"]["feature_dim"] == 64   # tiny-resnet-random's penultimate width
  sw = res["sweep"]   # units x (2 classes x samples) x 3 steps, as the sweep stage counts them
  assert sw["images"] == size["sweep_units"] * 2 * size["sweep_samples"] * 3
  assert sw["stage_images_per_s"] > 0 and sw["bare_images_per_s"] > 0
  cf = res["counterfactual"]
  assert cf["searches"] == size["cf_n"] and cf["batched_s"] > 0 and cf["one_at_a_time_s"] > 0
  assert cf["searches_differing"] == 0   # the same searches, batched or not
  assert res["peak_memory"]["gib"] > 0
