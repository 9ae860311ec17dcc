"""One command for an accelerator: the numbers that say how the pipeline runs there, as JSON.

  python benchmarks/device_check.py --out device_check.json            # one GPU/TPU, < 8 min
  python benchmarks/device_check.py --small --out /tmp/device_check.json  # CPU, tiny models, seconds
  python benchmarks/device_check.py --smoke --out /tmp/device_check.json  # CPU, the fewest of each

Measures, with random weights (nothing to download):
  synthesis     StyleGAN-XL ImageNet-256 ('full' preset, 233M params) `G.synthesis` images/s,
                float32 and bfloat16, batch 16 / 32 / 64; compile seconds; the bfloat16
                images' error against float32 images of the same weights and ws
  classifier    ResNet50 `clf.features(clf.preprocess(img))` images/s on 256 px images
  sweep         the real sweep stage end to end (`lis_jax.main`'s runner on a fresh workdir:
                link, vmapped blocks, re-classification, PNG strips, npz blocks, index)
                images/s against bare jitted synthesis of the same images in the same batches
  counterfactual  64 searches in one batched while_loop against 64 one at a time (B = 1)
  invert        W projection (lis_jax.invert) of 16 images together against one at a time:
                seconds per image for the same Adam steps (loss MSE + LPIPS on a random
                VGG16 at 1/8 width; --small: MSE only), compile and class statistics
                excluded (issue 25: >= 5x on a GPU)
  memory        peak device memory (`memory_stats()['peak_bytes_in_use']`; on CPU, which
                has none, the process's peak resident memory instead, labelled so)
`--small` runs every part on the tiny random models ('tiny' StyleGAN-XL preset 32 px,
'tiny-resnet-random') with small batches: the same code paths, in seconds, on CPU.
`--smoke` (tests/test_device_check.py) runs every part of `--small` on the same models at
the fewest images, iterations and steps that still exercise each part's code path (one
batch size, one timed iteration, two sweep blocks of one unit, 4 counterfactual searches,
2 inversions): a check that everything runs and the JSON is complete, not a measurement.

A time budget (`--budget-s`, default 450 s for the full run) keeps the whole command under
8 minutes: the parts run in order of importance (one float32 and one bfloat16 batch size
first, then the classifier, the sweep, the counterfactuals, then the other batch sizes),
and a part whose expected time no longer fits is recorded as skipped, with the reason.
Compile times are reported separately and never counted in images/s. To rerun quickly,
set JAX_COMPILATION_CACHE_DIR (JAX's persistent compilation cache).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for configs/
from lis_jax import classifiers, generators, linking, lpips, pipeline  # noqa: E402
from lis_jax.invert import projector  # noqa: E402
from lis_jax.stages import counterfactual as counterfactuals  # noqa: E402
from lis_jax.generators import stylegan_xl  # noqa: E402

PSI = 0.7  # truncation of the pipeline (DESIGN.md)

# Sizes of each part: the full device run, the CPU run on tiny models (--small) and its
# smallest version (--smoke: what tests/test_device_check.py runs; its numbers mean little).
SIZES: dict[str, dict[str, Any]] = {
    "full": dict(arch="full", classifier="resnet50", batches=(32, 16, 64), iters=5,
                 clf_batch=64, sweep_units=8, sweep_units_per_block=4, sweep_samples=4,
                 sweep_batch=32, cf_n=64, cf_max_steps=20, cf_check_every=1, inv_n=16,
                 inv_steps=20, inv_w_avg_samples=1000, inv_lpips_weight=1.0, budget_s=450.0),
    "small": dict(arch="tiny", classifier="tiny-resnet-random", batches=(4,), iters=2,
                  clf_batch=8, sweep_units=4, sweep_units_per_block=2, sweep_samples=2,
                  sweep_batch=8, cf_n=16, cf_max_steps=4, cf_check_every=2, inv_n=4,
                  inv_steps=4, inv_w_avg_samples=64, inv_lpips_weight=0.0, budget_s=300.0),
    # 'small' at its fewest: two sweep blocks (so 'every block dispatched' still means more
    # than one), a counterfactual max_steps a multiple of check_every > 1 (the check-every
    # path of the loop, as 'small'), batched inversion of 2 against one at a time.
    "smoke": dict(arch="tiny", classifier="tiny-resnet-random", batches=(2,), iters=1,
                  clf_batch=2, sweep_units=2, sweep_units_per_block=1, sweep_samples=1,
                  sweep_batch=4, cf_n=4, cf_max_steps=4, cf_check_every=2, inv_n=2,
                  inv_steps=2, inv_w_avg_samples=16, inv_lpips_weight=0.0, budget_s=300.0),
}
# Built-in names under which the runner finds this script's random models.
GENERATOR_NAME, CLASSIFIER_NAME = "device-check-generator", "device-check-classifier"
_MODELS: dict[str, Any] = {}


def _generator():
  return _MODELS["G"]


def _classifier():
  return _MODELS["clf"]


def peak_memory() -> dict[str, Any]:
  """Peak memory so far: the device's if it reports one, else the process's resident set."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return {"what": "device peak_bytes_in_use", "gib": stats["peak_bytes_in_use"] / 2**30,
            "device_limit_gib": stats.get("bytes_limit", 0) / 2**30}
  return {"what": "process peak RSS (device reports no memory stats)",
          "gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def _timed(fn: Callable[[], Any], iters: int) -> tuple[float, list[float], Any]:
  """(seconds of the first call incl. compile, seconds of each later call, last output)."""
  t = time.perf_counter()
  out = jax.block_until_ready(fn())
  first = time.perf_counter() - t
  seconds = []
  for _ in range(iters):
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    seconds.append(time.perf_counter() - t)
  return first, seconds, out


class Budget:
  """Wall-clock budget: a part runs only if its expected seconds still fit."""

  def __init__(self, seconds: float):
    self.t0, self.seconds = time.perf_counter(), seconds

  def left(self) -> float:
    return self.seconds - (time.perf_counter() - self.t0)

  def fits(self, expected: float) -> bool:
    return expected <= self.left()


def bench_synthesis(G, ws: jax.Array, dtype: str, iters: int) -> tuple[dict, np.ndarray]:
  """images/s of jitted `G.synthesis` at the batch of `ws` [N, num_ws, w_dim] in `dtype`."""
  synth = jax.jit(lambda G, ws: G.synthesis(ws))
  G_run = G.astype(dtype)
  first, seconds, img = _timed(lambda: synth(G_run, ws), iters)
  n = ws.shape[0]
  return {"dtype": dtype, "batch": n, "compile_and_first_s": first,
          "seconds": seconds, "images_per_s": n / statistics.median(seconds),
          "best_images_per_s": n / min(seconds)}, np.asarray(img, np.float32)


def bench_classifier(clf, resolution: int, batch: int, iters: int) -> dict:
  """images/s of `clf.features(clf.preprocess(img))` on [batch, resolution, resolution, 3] images."""
  img = jax.random.uniform(jax.random.PRNGKey(3), (batch, resolution, resolution, 3), minval=-1, maxval=1)
  feats = jax.jit(lambda clf, img: clf.features(clf.preprocess(img)))
  first, seconds, r = _timed(lambda: feats(clf, img), iters)
  return {"batch": batch, "resolution": resolution, "feature_dim": int(r.shape[-1]),
          "compile_and_first_s": first, "seconds": seconds,
          "images_per_s": batch / statistics.median(seconds)}


def _sweep_config(size: dict, units: str):
  from configs import linear
  cfg = linear.get_config()
  cfg.generator, cfg.classifier, cfg.classes = GENERATOR_NAME, CLASSIFIER_NAME, "1,2"
  p = cfg.paired_data
  p.n_per_class, p.keep_only_correct = max(size["sweep_samples"], 8), False
  p.shard_size, p.batch_size = p.n_per_class, size["sweep_batch"]
  cfg.link.kind = "ridge"   # a few pairs, far fewer than the units: ridge is well posed
  cfg.link.cycle_samples = 0
  s = cfg.sweep
  s.units, s.samples_per_class, s.n_steps = units, size["sweep_samples"], 3
  s.units_per_block, s.batch_size = size["sweep_units_per_block"], size["sweep_batch"]
  return cfg


def bench_sweep(G, size: dict, root: str) -> dict:
  """The sweep stage end to end (after a one-block warm-up compiles it) vs bare synthesis."""
  U, n_units = size["sweep_units_per_block"], size["sweep_units"]
  cfg = _sweep_config(size, f"0:{U}")
  cfg.stages = ("paired_data", "link", "sweep")
  t = time.perf_counter()
  pipeline.run(cfg, root)                                  # paired data, link, one block (compiles)
  warm = time.perf_counter() - t
  shutil.rmtree(os.path.join(root, "sweep"))
  cfg = _sweep_config(size, f"0:{n_units}")
  cfg.stages = ("sweep",)
  t = time.perf_counter()
  pipeline.run(cfg, root)
  stage_s = time.perf_counter() - t
  n_img = n_units * 2 * size["sweep_samples"] * 3
  block = U * 2 * size["sweep_samples"] * 3
  batch = size["sweep_batch"]
  n_chunks = -(-block // batch)
  synth = jax.jit(lambda G, w: jax.lax.map(
      lambda wb: jnp.clip((G.synthesis(generators.broadcast_ws(wb, G.num_ws)) + 1) * 127.5, 0, 255)
      .astype(jnp.uint8), w))
  w = jax.random.normal(jax.random.PRNGKey(1), (n_chunks, batch, G.w_dim))  # [K, B, w_dim]
  jax.block_until_ready(synth(G, w))
  t = time.perf_counter()
  outs = [synth(G, w) for _ in range(-(-n_units // U))]  # every block dispatched, then fetched
  [np.asarray(o) for o in outs]
  bare_s = time.perf_counter() - t
  return {"images": n_img, "block_images": block, "batch": batch,
          "warmup_with_paired_data_link_and_compile_s": warm, "stage_s": stage_s,
          "stage_images_per_s": n_img / stage_s, "bare_synthesis_s": bare_s,
          "bare_images_per_s": n_img / bare_s, "overhead_pct": 100 * (stage_s / bare_s - 1)}


def bench_counterfactual(G, clf, size: dict) -> dict:
  """cf_n searches: one batched jitted while_loop vs one at a time (B = 1), after compiling."""
  n, key = size["cf_n"], jax.random.PRNGKey(4)
  z = jax.random.normal(key, (n, G.z_dim))
  cls = jnp.arange(n, dtype=jnp.int32) % 8
  ws = jax.jit(lambda G, z, c: G.mapping(z, c, psi=PSI))(G, z, cls)
  img = jax.jit(lambda G, ws: G.synthesis(ws))(G, ws)
  r = np.asarray(jax.jit(lambda clf, x: clf.features(clf.preprocess(x)))(clf, img))   # [n, D]
  logits = np.asarray(clf.head(r))
  A = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (clf.feature_dim, G.w_dim))) / np.sqrt(clf.feature_dim)
  link = linking.Link(params={"A": A.astype(np.float32), "b": np.asarray(ws[:, 0].mean(0))}, kind="ols")
  origin = logits.argmax(-1).astype(np.int32)
  target = np.argsort(logits, -1)[:, -2].astype(np.int32)   # the runner-up class
  shift0 = np.asarray(counterfactuals.initial_shift(key, jnp.arange(n), clf.feature_dim))
  statics = dict(lr=0.5, max_steps=size["cf_max_steps"], check_every=size["cf_check_every"],
                 w_origin=0.6, w_cos=10.0, mode="reference")

  def batched():
    return counterfactuals._search(G, clf, link, r, origin, target, shift0, np.ones(n, bool), **statics)

  def one_at_a_time():
    outs = [counterfactuals._search(G, clf, link, r[i:i + 1], origin[i:i + 1], target[i:i + 1],
                                    shift0[i:i + 1], np.ones(1, bool), **statics) for i in range(n)]
    return {k: np.concatenate([np.asarray(o[k]) for o in outs]) for k in outs[0]}

  out = {"searches": n, "max_steps": statics["max_steps"], "check_every": statics["check_every"]}
  res = {}
  for name, fn in (("batched", batched), ("one_at_a_time", one_at_a_time)):
    first, seconds, res[name] = _timed(fn, 1)
    out[f"{name}_compile_and_first_s"], out[f"{name}_s"] = first, seconds[0]
  b, o = ({k: np.asarray(v) for k, v in res[k].items()} for k in ("batched", "one_at_a_time"))
  out["speedup_batched"] = out["one_at_a_time_s"] / out["batched_s"]
  out["successes"] = int(b["success"].sum())
  out["steps_mean"] = float(b["steps"].mean())
  # float32 summation order may flip a search sitting on the decision boundary
  out["searches_differing"] = int(((b["steps"] != o["steps"]) | (b["success"] != o["success"])).sum())
  return out


def bench_invert(G, clf, size: dict) -> dict:
  """inv_n images projected together (one batch) vs one at a time, inv_steps Adam steps
  each (no early stop); per image, after compiling and computing the class statistics."""
  n, steps, key = size["inv_n"], size["inv_steps"], jax.random.PRNGKey(6)
  z = jax.random.normal(key, (n, G.z_dim))
  c = jax.random.randint(jax.random.PRNGKey(7), (n,), 0, G.c_dim)
  ws = jax.jit(lambda G, z, c: G.mapping(z, c, psi=PSI))(G, z, c)
  img = np.clip(np.asarray(jax.jit(lambda G, ws: G.synthesis(ws))(G, ws)), -1, 1)
  P = lpips.random_lpips(jax.random.PRNGKey(8), width_divisor=8)
  cfg = projector.default_config()
  cfg.update(num_steps=steps, w_avg_samples=size["inv_w_avg_samples"],
             lpips_weight=size["inv_lpips_weight"],
             plateau_patience=10 ** 6, chunk_steps=min(steps, 25))
  stats = projector.StatsCache(G, cfg.w_avg_samples, jax.random.PRNGKey(9))
  out = {"images": n, "steps": steps, "lpips_weight": size["inv_lpips_weight"]}
  for name, bs in (("batched", n), ("one_at_a_time", 1)):
    cfg.batch_size = bs
    project = lambda k: projector.project(G, clf, P, img, key=key, config=cfg, num_steps=k,
                                          stats=stats)
    t = time.perf_counter()
    project(1)   # compiles; the class statistics of every image's start
    out[f"{name}_compile_and_first_s"] = time.perf_counter() - t
    t = time.perf_counter()
    res = project(steps)
    out[f"{name}_s_per_image"] = (time.perf_counter() - t) / n
    out[f"{name}_psnr_mean"] = float(res.psnr.mean())
  out["speedup_batched"] = out["one_at_a_time_s_per_image"] / out["batched_s_per_image"]
  return out


def run(size_name: str, budget_s: float | None = None) -> dict:
  """All parts in order of importance within the budget; returns the JSON-ready results."""
  size = SIZES[size_name]
  budget = Budget(budget_s if budget_s is not None else size["budget_s"])
  G = stylegan_xl.random_generator(size["arch"], jax.random.PRNGKey(0))
  clf = (classifiers.load(size["classifier"]) if size["classifier"] in classifiers.BUILTINS
         else classifiers.build(size["classifier"], key=jax.random.PRNGKey(2)))
  _MODELS.update(G=G, clf=clf)
  generators.BUILTINS[GENERATOR_NAME] = _generator
  classifiers.BUILTINS[CLASSIFIER_NAME] = _classifier
  dev = jax.local_devices()[0]
  out: dict[str, Any] = {
      "size": size_name, "jax": jax.__version__, "platform": dev.platform,
      "device_kind": dev.device_kind, "device_count": jax.local_device_count(),
      "host": platform.node(), "budget_s": budget.seconds,
      "generator": {"arch": size["arch"], "resolution": G.resolution, "num_ws": G.num_ws,
                    "params_millions": sum(x.size for x in jax.tree_util.tree_leaves(G.variables["params"])) / 1e6},
      "classifier": size["classifier"], "synthesis": [], "skipped": []}
  batches = size["batches"]
  first_b, rest = batches[0], batches[1:]
  ws_of = {}

  def ws_for(batch):
    if batch not in ws_of:
      kz, kc = jax.random.split(jax.random.PRNGKey(batch))
      z = jax.random.normal(kz, (batch, G.z_dim))
      c = jax.random.randint(kc, (batch,), 0, G.c_dim)
      ws_of[batch] = jax.jit(lambda G, z, c: G.mapping(z, c, psi=PSI))(G, z, c)
    return ws_of[batch]

  expected = {"synthesis": 0.0}   # seconds the last synthesis part took (a lower bound for the next)
  images = {}

  def synthesis(dtype, batch):
    if not budget.fits(expected["synthesis"]):
      out["skipped"].append({"part": f"synthesis {dtype} batch {batch}", "reason": "time budget"})
      return
    t = time.perf_counter()
    res, img = bench_synthesis(G, ws_for(batch), dtype, size["iters"])
    expected["synthesis"] = time.perf_counter() - t
    images[(dtype, batch)] = img
    out["synthesis"].append(res)
    _log(f"synthesis {dtype} batch {batch}: {res['images_per_s']:.2f} images/s "
         f"(compile + first {res['compile_and_first_s']:.1f} s)")

  def error(batch):
    if ("float32", batch) in images and ("bfloat16", batch) in images:
      a, b = images[("float32", batch)], images[("bfloat16", batch)]
      diff = np.abs(b - a)
      out["bf16_vs_fp32"] = {"batch": batch, "max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
                             "rms_float32_image": float(np.sqrt(np.mean(a ** 2)))}
      _log(f"bfloat16 vs float32 images: max |diff| {diff.max():.4g}, mean {diff.mean():.4g}")

  def part(name, fn, expected_s):
    if not budget.fits(expected_s):
      out["skipped"].append({"part": name, "reason": f"time budget ({budget.left():.0f} s left)"})
      return
    t = time.perf_counter()
    out[name] = fn()
    out[name]["part_s"] = time.perf_counter() - t
    _log(f"{name}: {json.dumps(out[name], default=float)}")

  synthesis("float32", first_b)
  synthesis("bfloat16", first_b)
  error(first_b)
  part("classifier", lambda: bench_classifier(clf, G.resolution, size["clf_batch"], size["iters"]),
       expected["synthesis"] / 4)
  root = tempfile.mkdtemp(prefix="device_check-")
  try:
    part("sweep", lambda: bench_sweep(G, size, root), 2 * expected["synthesis"])
  finally:
    shutil.rmtree(root, ignore_errors=True)
  part("counterfactual", lambda: bench_counterfactual(G, clf, size), 2 * expected["synthesis"])
  part("invert", lambda: bench_invert(G, clf, size), 2 * expected["synthesis"])
  for batch in rest:
    synthesis("float32", batch)
    synthesis("bfloat16", batch)
  out["peak_memory"] = peak_memory()
  out["total_s"] = time.perf_counter() - budget.t0
  return out


def _log(msg: str) -> None:
  print(f"[device_check] {msg}", flush=True)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  which = p.add_mutually_exclusive_group()
  which.add_argument("--small", action="store_true", help="tiny models, small batches (CPU, seconds)")
  which.add_argument("--smoke", action="store_true",
                     help="--small at its fewest images and steps (a test that every part runs)")
  p.add_argument("--out", default="device_check.json", help="JSON results file")
  p.add_argument("--budget-s", type=float, default=None,
                 help="wall seconds the parts may take (default: 450 full, 300 small and smoke)")
  args = p.parse_args()
  res = run("small" if args.small else "smoke" if args.smoke else "full", args.budget_s)
  text = json.dumps(res, indent=1, default=float)
  print(text)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    f.write(text + "\n")


if __name__ == "__main__":
  main()
