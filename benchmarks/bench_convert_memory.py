"""Peak memory of a StyleGAN-XL conversion, and how much tensor storage it decodes.

  python benchmarks/bench_convert_memory.py [--fixtures ../shared/fixtures] [--pad-d-mb 600]

Each snapshot is converted by `converters.stylegan_xl.convert` in a fresh process, which
reports its peak resident set size (VmHWM of /proc/self/status) after the imports (the
baseline: Python, jax, torch, orbax) and after the conversion, the bytes of tensor
storage in the file and the bytes it decoded. `--pad-d-mb N` also converts a snapshot
made here: `sgxl_realistic_proto3.pkl` with a discriminator `D` of N MB of random
tensors appended (the released imagenet256.pkl's full-size D is 612 MB with its G,
FIXTURES.md), to show that memory does not grow with what is not converted.

Issue 9's bound: peak RSS < file size + 1.5 GB.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ("sgxl_stem16", "sgxl_sr64", "sgxl_realistic", "sgxl_realistic_proto3")
# Size of each tensor of the padding D (a released D's largest are ~10 MB).
PAD_TENSOR_MB = 16

_CHILD = """
import json, os, sys, time
sys.path.insert(0, {root!r})
def hwm():  # this process's peak RSS (VmHWM; ru_maxrss would include the parent's, via fork)
  with open("/proc/self/status") as f:
    return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
from converters import sgxl_pickle, stylegan_xl
import orbax.checkpoint  # imported by the write; counted in the baseline
baseline = hwm()
start = time.perf_counter()
meta, line = stylegan_xl.convert({pkl!r}, {out!r})
seconds = time.perf_counter() - start
peak = hwm()
_, stats = sgxl_pickle.read_snapshot({pkl!r}, decode=("G_ema",))  # after the peak was read
print(json.dumps(dict(baseline=baseline, peak=peak, seconds=seconds,
                      decoded=stats.decoded_bytes, storage=stats.storage_bytes)))
"""


def measure(pkl: str) -> dict:
  """Converts `pkl` in a fresh process; returns its measurements."""
  with tempfile.TemporaryDirectory() as tmp:
    script = _CHILD.format(root=str(ROOT), pkl=pkl, out=os.path.join(tmp, "out"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False)
  if proc.returncode:
    raise SystemExit(f"conversion of {pkl} failed: {proc.stderr.strip().splitlines()[-1:]}")
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  result["file"] = os.path.getsize(pkl)
  return result


def padded_snapshot(base: str, out: str, mb: int) -> None:
  """Writes `base` (a protocol-3 snapshot) with a D of `mb` MB of random float32 tensors."""
  import pickle

  import torch

  data = pathlib.Path(base).read_bytes()
  assert data.endswith(b"u."), "expects a snapshot dict closed by SETITEMS"
  n = max(1, mb // PAD_TENSOR_MB)
  gen = torch.Generator().manual_seed(0)
  with open(out, "wb") as f:
    f.write(data[:-1] + b"X\x01\x00\x00\x00D")  # BINUNICODE 'D', then the value
    D = {f"w{i}": torch.randn(PAD_TENSOR_MB * 2**18, generator=gen) for i in range(n)}
    pickle.Pickler(f, protocol=3).dump(D)  # PROTO (accepted anywhere) ... STOP
    f.seek(-1, os.SEEK_END)
    f.write(b"s.")  # replace its STOP by SETITEM on the snapshot dict, then STOP


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--fixtures", default=str(ROOT.parent / "shared" / "fixtures"))
  parser.add_argument("--pad-d-mb", type=int, default=0,
                      help="also convert the proto3 fixture with a D of this many MB")
  parser.add_argument("--write-padded", nargs=3, metavar=("BASE", "OUT", "MB"),
                      help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.write_padded:
    base, out, mb = args.write_padded
    padded_snapshot(base, out, int(mb))
    return
  cases = [(name, os.path.join(args.fixtures, f"{name}.pkl")) for name in FIXTURES]
  with tempfile.TemporaryDirectory() as tmp:
    if args.pad_d_mb:  # made in a process of its own: this one stays small
      padded = os.path.join(tmp, "padded.pkl")
      subprocess.run([sys.executable, __file__, "--write-padded", cases[-1][1], padded,
                      str(args.pad_d_mb)], check=True)
      cases.append((f"proto3 + D of {args.pad_d_mb} MB", padded))
    mib = 2**20
    print("| snapshot | file MiB | tensor storage MiB | decoded MiB | RSS after imports MiB "
          "| peak RSS MiB | peak - imports MiB | bound (file + 1.5 GiB) | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, pkl in cases:
      r = measure(pkl)
      bound = r["file"] + 1.5 * 2**30
      print(f"| {name} | {r['file'] / mib:.1f} | {r['storage'] / mib:.1f} | {r['decoded'] / mib:.1f} "
            f"| {r['baseline'] / mib:.0f} | {r['peak'] / mib:.0f} | {(r['peak'] - r['baseline']) / mib:.0f} "
            f"| {'under' if r['peak'] < bound else 'OVER'} | {r['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
  main()
