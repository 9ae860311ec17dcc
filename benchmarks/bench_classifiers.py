"""Throughput of the classifiers' preprocess + features + head, jitted, random weights.

For each architecture: builds it with random torchvision-style weights, preprocesses a
batch of [-1, 1] generator-size images (default 256 px, the StyleGAN-XL ImageNet size),
and times `clf.head(clf.features(clf.preprocess(img)))` after compilation (median of
--repeats runs). Prints compile seconds, milliseconds per batch and images per second.
Timings on a shared CPU are noisy; run alone for numbers worth comparing.

Usage:
  python benchmarks/bench_classifiers.py --archs resnet50 vgg16 densenet121 --batch 16
  python benchmarks/bench_classifiers.py --archs tiny-resnet-random --size 64 --batch 256
"""
import argparse
import time

import jax
import numpy as np

from lis_jax import classifiers


def bench(name: str, size: int, batch: int, repeats: int) -> dict:
  if name in classifiers.BUILTINS:
    clf = classifiers.load(name)
  else:
    clf = classifiers.build(name, key=jax.random.key(0))
  img = jax.random.uniform(jax.random.key(1), (batch, size, size, 3), minval=-1, maxval=1)

  @jax.jit
  def run(clf, img):
    r = clf.features(clf.preprocess(img))                     # [N, D]
    return r, clf.head(r)                                     # [N, num_classes]

  t0 = time.perf_counter()
  jax.block_until_ready(run(clf, img))
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(run(clf, img))
    times.append(time.perf_counter() - t0)
  ms = 1e3 * float(np.median(times))
  return dict(arch=name, compile_s=compile_s, ms_per_batch=ms, images_per_s=batch / ms * 1e3)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--archs", nargs="+", default=["resnet50"],
                 help=f"architectures ({', '.join(sorted(classifiers.ARCHS))}) or built-ins")
  p.add_argument("--size", type=int, default=256, help="generator image side (px)")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--repeats", type=int, default=5)
  args = p.parse_args()
  print(f"device: {jax.devices()[0].device_kind}; images {args.size} px, batch {args.batch}")
  print(f"{'arch':22s} {'compile s':>10s} {'ms/batch':>10s} {'images/s':>10s}")
  for name in args.archs:
    r = bench(name, args.size, args.batch, args.repeats)
    print(f"{r['arch']:22s} {r['compile_s']:10.1f} {r['ms_per_batch']:10.1f} {r['images_per_s']:10.1f}")


if __name__ == "__main__":
  main()
