"""The paper's study at its real size: what it costs, and a run that fits 8 GB.

  python -m benchmarks.real_size estimate
  MALLOC_ARENA_MAX=2 prlimit --as=$((8 << 30)) python -m benchmarks.real_size run --workdir=/tmp/real_size

`estimate`: the plan (lis_jax/plan.py) of the full paper study, configs/linear.py with every
count at its paper value, for the released architectures (StyleGAN-XL ImageNet-256:
32 ws, ~233M parameters; ResNet-50), without their weights: FLOPs per image of each call
from XLA's cost analysis of the lowered functions (abstract weights, nothing allocated),
images per stage from `plan.WORK`. The time on this CPU from its measured FLOP rate
(the reduced-width network below, synthesised and classified, timed here), and on one
H100 and one TPU v4 chip from their peak figures at `plan.ASSUMED_UTILISATION`: estimates.

`run`: a reduced-width StyleGAN-XL at 256 px (the released layer structure, channels
/ REDUCE) and a random ResNet-50 through configs/linear.py's stage list with the paper's
settings except counts (COUNTS below), under the address-space cap the command line sets;
prints each call's chosen batch and analysed peak against the budget, and the process's
peak RSS. Labelled masks for quantify are synthetic (random ellipses; the run measures
memory and time, not segmentation quality).
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from lis_jax import memory, plan
from lis_jax.classifiers import archs, classifier
from lis_jax.generators import stylegan_xl

FULL = stylegan_xl.PRESETS["full"]
REDUCE = 8  # channel_base and channel_max of the released network / REDUCE
REDUCED = dict(FULL, channel_base=FULL["channel_base"] // REDUCE, channel_max=FULL["channel_max"] // REDUCE)
# The counts of the `run` part (everything else is configs/linear.py's).
COUNTS = {
    "classes": "232,254",
    # a random ResNet-50 is almost never right (about 1 in 1000), so every sample is kept:
    # with keep_only_correct on, 6 correct images of class 232 were not found in 28 min at 0.8 images/s
    "paired_data.n_per_class": 6, "paired_data.keep_only_correct": False,
    "sweep.units": "0,1", "sweep.samples_per_class": 1,
    "counterfactual.pairs": "232>254", "counterfactual.samples_per_pair": 1,
    "counterfactual.max_steps": 3,
    "quantify.n_labelled": 3, "quantify.epochs": 3, "quantify.samples_per_unit": 2,
    "quantify.null_draws": 3, "quantify.cards": 1,
    "link.cycle_samples": 4,
    "invariances.n_conditions": 2, "invariances.samples_per_condition": 2, "invariances.n_mix": 2,
    "invariances.part_metric_train": 4, "invariances.part_metric_test": 2, "invariances.epochs": 1,
    "population.n_items": 8,
}


# The counts of the `full` part: the smallest each stage accepts. A random classifier is
# never right, so every sample is kept (keep_only_correct off, as in configs/tiny.py).
FULL_COUNTS = {
    "classes": "232,254",
    "paired_data.n_per_class": 4, "paired_data.keep_only_correct": False,
    "paired_data.shard_size": 4,   # latents tried per shard file: 4, not 512, when all are kept
    "link.cycle_samples": 2, "link.holdout_fraction": 0.5,   # 4 held-out pairs: invariances needs 2 x n_mix
    "sweep.units": "0", "sweep.samples_per_class": 1, "sweep.n_steps": 3,
    "counterfactual.pairs": "232>254", "counterfactual.samples_per_pair": 1,
    "counterfactual.max_steps": 1,
    "quantify.n_labelled": 2, "quantify.epochs": 1, "quantify.samples_per_unit": 2,
    "quantify.null_draws": 2, "quantify.cards": 1, "quantify.n_boot": 50,
    "boundary.n_grid": 2, "boundary.n_iter": 1, "boundary.n_points": 2, "boundary.null_draws": 1,
    "boundary.strips": 1, "boundary.pairs_shown": 1, "boundary.n_boot": 50,
    "boundary.p_points": 2, "boundary.p_past": 1, "boundary.transfer_samples": 2,
    "boundary.paths_shown": 1, "motion.samples_per_unit": 1,
    "invariances.n_conditions": 2, "invariances.samples_per_condition": 2, "invariances.n_mix": 2,
    "invariances.part_metric_train": 4, "invariances.part_metric_test": 2, "invariances.epochs": 1,
    "population.n_items": 8, "population.n_boot": 50, "population.n_perm": 50,
    "report.n_top": 1, "report.n_bottom": 1, "report.strip_samples": 1, "report.n_counterfactuals": 1,
}


def _config(path: str = "configs/linear.py"):
  s = importlib.util.spec_from_file_location("config", path)
  m = importlib.util.module_from_spec(s)
  s.loader.exec_module(m)
  return m.get_config()


# ----------------------------------------------------------------------------- models


@functools.lru_cache(maxsize=None)
def generator():
  """The reduced-width 256-px StyleGAN-XL with seeded random weights ("module:function")."""
  return stylegan_xl.random_generator(stylegan_xl.build_spec(**REDUCED), jax.random.PRNGKey(0))


@functools.lru_cache(maxsize=None)
def classifier_():
  """A ResNet-50 with seeded random weights ("module:function")."""
  module = archs.module_for("resnet50")
  return classifier.Classifier.create(module, classifier.random_variables(module, jax.random.PRNGKey(1)),
                                      "resnet50")


@functools.lru_cache(maxsize=None)
def full_generator():
  """The released StyleGAN-XL ImageNet-256 architecture (233M parameters) with seeded
  random weights ("module:function")."""
  return stylegan_xl.random_generator(stylegan_xl.build_spec(**FULL), jax.random.PRNGKey(3))


def abstract_full_generator():
  spec = stylegan_xl.build_spec(**FULL)
  return stylegan_xl.Generator(stylegan_xl.expected_variables(spec), spec)


def abstract_classifier():
  module = archs.module_for("resnet50")
  return classifier.Classifier.create(module, classifier.variable_shapes(module), "resnet50")


# ----------------------------------------------------------------------------- estimate


def lowered_flops(fn, args, w_dim: int, batch: int = 1) -> float:
  """FLOPs per image of fn(*args, w [batch, w_dim]) from the lowered (uncompiled) HLO."""
  low = jax.jit(fn).lower(*args, jax.ShapeDtypeStruct((batch, w_dim), jnp.float32))
  cost = low.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"]) / batch


def measured_rate(G, clf, batch: int = 2) -> float:
  """FLOP/s this machine reaches on fn = synthesise + classify (reduced-width G)."""
  fn, args = plan._synthesise_classify, (G, clf)
  c = memory.compiled(fn, args, jax.ShapeDtypeStruct((batch, G.w_dim), jnp.float32), batch)
  cost = c.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  w = jnp.zeros((batch, G.w_dim))
  jax.block_until_ready(c(*args, w))
  t = time.perf_counter()
  jax.block_until_ready(c(*args, w))
  return float(cost["flops"]) / (time.perf_counter() - t)


def estimate() -> None:
  config = _config()
  G, clf = abstract_full_generator(), abstract_classifier()
  sections = plan.merged_sections(config)
  dims = plan.Dims(n_classes=5, feature_dim=clf.feature_dim)   # config.classes = dogs: 5 classes
  per_image = {"synthesise": lowered_flops(plan._synthesise, (G, clf), G.w_dim),
               "synthesise+classify": lowered_flops(plan._synthesise_classify, (G, clf), G.w_dim)}
  fn, params = plan._segment_measure_fn(sections["quantify"], G)
  per_image["segment+measure"] = lowered_flops(fn, (G, clf, params), G.w_dim)
  print("FLOPs per image (XLA cost analysis of the lowered functions, released architectures):")
  for k, v in per_image.items():
    print(f"  {k:<22} {v / 1e12:.2f} TFLOP")
  t = time.time()
  rate = measured_rate(generator(), classifier_())
  print(f"this CPU: {rate / 1e9:.0f} GFLOP/s measured on the reduced-width network "
        f"({time.time() - t:.0f} s incl. compile), load {os.getloadavg()[0]:.1f}")
  print(f"\n{'stage':<15} {'images':>12} {'FLOPs':>10} {'this CPU':>10} " +
        " ".join(f"{k:>24}" for k in plan.DEVICE_PEAKS))
  total = 0.0
  for name in plan.WORK:
    work = plan.WORK[name](sections, dims)
    flops = sum(n * per_image[k] for k, n in work.images.items())
    total += flops
    n = sum(work.images.values())
    est = plan.device_estimates(flops)
    print(f"{name:<15} {('<=' if work.upper_bound else '') + str(n):>12} {plan._si(flops):>10} "
          f"{plan._duration(flops / rate):>10} " + " ".join(f"{plan._duration(v):>24}" for v in est.values()))
  est = plan.device_estimates(total)
  print(f"{'total':<15} {'':>12} {plan._si(total):>10} {plan._duration(total / rate):>10} " +
        " ".join(f"{plan._duration(v):>24}" for v in est.values()))
  print(f"(devices: peak FLOP/s {', '.join(f'{k} {v / 1e12:.0f} T' for k, v in plan.DEVICE_PEAKS.items())}"
        f" at an assumed {plan.ASSUMED_UTILISATION:.0%} utilisation; estimates)")


# ----------------------------------------------------------------------------- run


def synthetic_labels(workdir: str, G, n: int, res: int, seed: int = 0) -> str:
  """n labelled masks (random ellipses, 3 parts) for quantify in workdir/seg_labels/dogs."""
  d = os.path.join(workdir, "seg_labels", "dogs")
  os.makedirs(os.path.join(d, "w"), exist_ok=True)
  os.makedirs(os.path.join(d, "labels"), exist_ok=True)
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:res, :res] / res
  for i in range(n):
    lab = np.zeros((res, res), np.int32)
    for part in (1, 2):
      cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.25)
      lab[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = part
    np.save(os.path.join(d, "labels", f"s{i:04d}_c0232.npy"), lab)
    np.save(os.path.join(d, "w", f"s{i:04d}_c0232.npy"), rng.normal(size=(G.w_dim,)).astype(np.float32))
  with open(os.path.join(d, "part_names.json"), "w") as f:
    json.dump(["background", "head", "body"], f)
  return "seg_labels/dogs"


def _vm_hwm_reset() -> None:
  """Resets this process's peak resident size (VmHWM) to its current one (Linux)."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
  except OSError:
    pass


def _vm_hwm() -> float:
  with open("/proc/self/status") as f:
    return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:")) / memory.GiB


def run(workdir: str, full: bool = False, generator_ref: str = "", classifier_ref: str = "",
        with_plan: bool = True) -> None:
  """configs/linear.py's stages, one at a time (time, batches, peaks per stage).

  full: the released architectures with FULL_COUNTS (generator_ref / classifier_ref: a
  converted checkpoint or "module:function"; default: seeded random weights), else the
  reduced-width network with COUNTS.
  """
  from lis_jax import pipeline, context   # the runner (this benchmark plays main's part)
  config = _config()
  config.generator = generator_ref or ("benchmarks.real_size:full_generator" if full
                                       else "benchmarks.real_size:generator")
  config.classifier = classifier_ref or "benchmarks.real_size:classifier_"
  config.plan_at_start = False   # printed below, before the stages
  for k, v in (FULL_COUNTS if full else COUNTS).items():
    section, _, field = k.rpartition(".")
    (config[section] if section else config)[field] = v
  os.makedirs(workdir, exist_ok=True)
  G, clf = context.load_models(config, workdir)
  config.quantify.labels = synthetic_labels(workdir, G, config.quantify.n_labelled,
                                            config.quantify.resolution)
  budget = memory.config_budget(config)
  soft, _ = resource.getrlimit(resource.RLIMIT_AS)
  print(f"{'full-size' if full else 'reduced-width'} run; budget {budget}; address-space cap "
        f"{'none' if soft == resource.RLIM_INFINITY else f'{soft / memory.GiB:.1f} GiB'}; "
        f"load {os.getloadavg()[0]:.1f}", flush=True)
  if with_plan:
    t = time.time()
    plans = plan.make(config, G, clf, budget)
    print(plan.table(plans, budget), flush=True)
    print(f"(plan: {time.time() - t:.0f} s)", flush=True)
  status = "completed"
  for name in tuple(config.stages):
    config.stages = (name,)
    seen = set(memory._CHOICES)
    memory.MEASURED.clear()
    _vm_hwm_reset()
    t = time.time()
    try:
      pipeline.run(config, workdir)
    except Exception as e:   # report the line a user would see, then the calls so far
      status = f"stopped in {name}: {type(e).__name__}: {' '.join(str(e).split())[:300]}"
    print(f"\n[{name}] {time.time() - t:.0f} s, peak RSS {_vm_hwm():.2f} GiB, load "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    for k, choice in memory._CHOICES.items():
      if k not in seen:
        print("  chosen   " + choice.line(), flush=True)
    for m in memory.MEASURED.values():
      print("  measured " + m.line(), flush=True)
    if status != "completed":
      break
  print(f"\nrun {status}; peak RSS of the process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} "
        f"GiB; budget {budget}", flush=True)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("part", choices=("estimate", "run", "full"))
  p.add_argument("--workdir", default="/tmp/lis_jax_real_size")
  p.add_argument("--generator", default="", help="full: a converted checkpoint (default: random weights)")
  p.add_argument("--classifier", default="", help="a converted checkpoint (default: random ResNet-50)")
  p.add_argument("--no-plan", action="store_true", help="skip the plan before the stages")
  a = p.parse_args()
  if a.part == "estimate":
    estimate()
  else:
    run(a.workdir, full=a.part == "full", generator_ref=a.generator, classifier_ref=a.classifier,
        with_plan=not a.no_plan)


if __name__ == "__main__":
  main()
