"""Sweep stage overhead over bare synthesis of the same number of images.

Runs the real `sweep` stage (`lis_jax.stages.sweep`: link, vmapped block, re-classification,
PNG strips, npz blocks, CSV index, unit table) on a workdir with synthetic paired data and a random
linear link, for a random-weight StyleGAN-XL preset, and compares its wall time with
jitted `G.synthesis` alone on the same number of images in the same batch size. Both
are timed after compilation (a one-block warm-up run compiles the block function).

Usage (issue 4, item 4; target: overhead < 15%):
  python benchmarks/bench_sweep.py --arch mid --units 8 --samples 2 --steps 3 --batch 8
  python benchmarks/bench_sweep.py --arch tiny --units 64 --samples 4 --steps 3 --batch 32
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for configs/
from configs import linear  # noqa: E402
from lis_jax import classifiers, context, generators, images, io, linking, pipeline
from lis_jax.generators import stylegan_xl


def _workdir(root, cfg, G, clf, n_per_class, classes, seed=0):
  """Synthetic paired data (non-negative r like a ResNet's) and a random linear link,
  recorded as finished with `cfg` (pipeline.mark_done)."""
  rng = np.random.default_rng(seed)
  pd = os.path.join(root, "paired_data")
  per_class = {}
  for c in classes:
    r = np.abs(rng.normal(size=(n_per_class, clf.feature_dim))).astype(np.float32)
    io.save_npz(os.path.join(pd, f"shard_c{c:04d}_00000.npz"), cls=np.full(n_per_class, c, np.int32),
                seed_index=np.arange(n_per_class, dtype=np.int32),
                w=rng.normal(size=(n_per_class, G.w_dim)).astype(np.float32), r=r,
                logits=np.zeros((n_per_class, clf.num_classes), np.float32))
    per_class[str(c)] = {"tried": n_per_class, "kept": n_per_class,
                         "shards": [f"shard_c{c:04d}_00000.npz"]}
  io.write_json(os.path.join(pd, "manifest.json"), {"classes": list(classes), "complete": True,
                                                    "per_class": per_class})
  A = (rng.normal(size=(clf.feature_dim, G.w_dim)) / np.sqrt(clf.feature_dim)).astype(np.float32)
  link = linking.Link(params={"A": A, "b": np.zeros(G.w_dim, np.float32)}, kind="ols")
  linking.save(os.path.join(root, "link", "model"), link)
  io.save_npz(os.path.join(root, "link", "split.npz"), train=np.arange(1), test=np.arange(1))
  io.write_json(os.path.join(root, "link", "metrics.json"), {})
  for name in ("paired_data", "link"):
    pipeline.mark_done(cfg, root, name)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--arch", choices=sorted(stylegan_xl.PRESETS), default="mid")
  p.add_argument("--classifier", default="tiny-resnet-random")
  p.add_argument("--units", type=int, default=8)
  p.add_argument("--units-per-block", type=int, default=2)
  p.add_argument("--samples", type=int, default=2, help="start samples per class (2 classes)")
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args()

  G = stylegan_xl.random_generator(args.arch, jax.random.PRNGKey(0))
  clf = classifiers.load(args.classifier)
  context.load_models = lambda config, workdir: (G, clf)   # the benchmark's own models
  classes = (1, 2)
  root = tempfile.mkdtemp(prefix="bench_sweep-")

  def config(reclassify=True, save_png=True):
    cfg = linear.get_config()
    cfg.stages = ("sweep",)
    cfg.classes = ",".join(map(str, classes))
    s = cfg.sweep
    s.samples_per_class, s.n_steps, s.batch_size = args.samples, args.steps, args.batch
    s.units_per_block, s.reclassify, s.save_png = args.units_per_block, reclassify, save_png
    return cfg

  _workdir(root, config(), G, clf, max(args.samples, 4), classes)
  n_img = args.units * args.samples * len(classes) * args.steps
  print(f"devices: {jax.devices()}; G '{args.arch}' {G.resolution} px, {G.num_ws} ws; "
        f"classifier {args.classifier}; {n_img} images in blocks of "
        f"{args.units_per_block * args.samples * len(classes) * args.steps}, batch {args.batch}")

  warm = set()

  def sweep_seconds(reclassify, save_png):
    cfg = config(reclassify, save_png)
    s = cfg.sweep
    if (reclassify, save_png) not in warm:
      s.units = f"0:{args.units_per_block}"        # warm-up: one block compiles everything
      pipeline.run(cfg, root)
      shutil.rmtree(os.path.join(root, "sweep"))
      warm.add((reclassify, save_png))
    s.units = f"0:{args.units}"
    t = time.perf_counter()
    pipeline.run(cfg, root)
    t = time.perf_counter() - t   # includes loading paired data, link and writing index.csv
    shutil.rmtree(os.path.join(root, "sweep"))
    return t

  # Bare synthesis of the same images, chunked as the sweep chunks a block (lax.map over
  # batches inside one jitted call per block), outputs brought to the host.
  block = args.units_per_block * args.samples * len(classes) * args.steps
  n_chunks = -(-block // args.batch)
  synth = jax.jit(lambda G, w: jax.lax.map(
      lambda wb: images.to_uint8(G.synthesis(generators.broadcast_ws(wb, G.num_ws))), w))
  w = jax.random.normal(jax.random.PRNGKey(1), (n_chunks, args.batch, G.w_dim))  # [K, B, w_dim]
  synth(G, w).block_until_ready()

  def bare_seconds():   # all blocks dispatched, then fetched: the best case for bare synthesis
    t = time.perf_counter()
    outs = [synth(G, w) for _ in range(-(-args.units // args.units_per_block))]
    [np.asarray(o) for o in outs]
    return time.perf_counter() - t

  rows = [("bare synthesis", bare_seconds)] + [
      (f"sweep stage reclassify={r!s:5} png={s!s:5}", lambda r=r, s=s: sweep_seconds(r, s))
      for r, s in ((False, False), (False, True), (True, True))]
  times = {name: [] for name, _ in rows}
  cpu = {name: [] for name, _ in rows}
  for _ in range(args.repeats):                           # interleaved: load drifts hit all alike
    for name, fn in rows:
      c = time.process_time()
      times[name].append(fn())
      cpu[name].append(time.process_time() - c)
  bare, bare_cpu = (float(np.median(d["bare synthesis"])) for d in (times, cpu))
  for name, _ in rows:
    t, c = float(np.median(times[name])), float(np.median(cpu[name]))
    print(f"{name}: wall {t:.2f} s ({n_img / t:.1f} img/s, {100 * (t / bare - 1):+.1f}%), "
          f"CPU {c:.2f} s ({100 * (c / bare_cpu - 1):+.1f}%)  [medians of {args.repeats}]")
  shutil.rmtree(root)


if __name__ == "__main__":
  main()
