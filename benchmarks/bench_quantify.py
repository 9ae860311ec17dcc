"""Cost of the quantify stage's pieces on the built-in world: segmenter training, and per
image the synthesis, features, head, local entropy and all part metrics.

All timings are after compilation (one warm-up call), batch of `--batch` images.

Usage:
  python benchmarks/bench_quantify.py                     # demo recipe, 64 px
  python benchmarks/bench_quantify.py --resolution 128 --batch 32
  python benchmarks/bench_quantify.py --no-entropy --truth  # the demo's quantify since issue 15
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from lis_jax import generators
from lis_jax.quantify import metrics, segment
from lis_jax.stages import quantify as stage


def _time(fn, *args, repeats=3):
  jax.block_until_ready(fn(*args))
  t0 = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(fn(*args))
  return (time.perf_counter() - t0) / repeats


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--resolution", type=int, default=64)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--labelled", type=int, default=20)
  p.add_argument("--epochs", type=int, default=40)
  p.add_argument("--head", default="XXS", help="head size (the demo's: XXS)")
  p.add_argument("--no-entropy", action="store_true", help="skip the local entropy (quantify.concepts='calibrated')")
  p.add_argument("--truth", action="store_true", help="also measure with the world's true masks")
  args = p.parse_args()

  G = generators.load("shapes", resolution=args.resolution)
  key = jax.random.PRNGKey(0)
  classes = np.arange(G.num_classes)
  ws_tr = segment.sample_ws(G, classes, args.labelled, 0.7, jax.random.fold_in(key, 0))
  ws_te = segment.sample_ws(G, classes, 64, 0.7, jax.random.fold_in(key, 1))
  y_tr, names = segment.ground_truth_labels(G, ws_tr)
  y_te, _ = segment.ground_truth_labels(G, ws_te)
  t0 = time.perf_counter()
  seg = segment.fit(G, ws_tr, y_tr, names, layers="all", size=args.head, key=key, epochs=args.epochs,
                    batch_size=1, lr=3e-3, weight_decay=1e-3, lr_step_epochs=int(args.epochs * 0.75),
                    lr_gamma=0.1)
  train_s = time.perf_counter() - t0
  ev = segment.evaluate(seg, G, ws_te, y_te)
  print(f"segmenter: {args.labelled} labelled, {args.epochs} epochs, head {args.head}: "
        f"{train_s:.1f} s (incl. compile), held-out mean IoU {ev['mean_iou']:.3f} "
        f"({', '.join(f'{k} {v:.3f}' for k, v in ev['iou'].items())})")

  w = np.asarray(segment.sample_ws(G, classes, args.batch, 0.7, jax.random.fold_in(key, 2))[:, 0])
  ws = generators.broadcast_ws(jnp.asarray(w), G.num_ws)
  n = args.batch
  synth = jax.jit(lambda G, ws: G.synthesis(ws))
  feats = jax.jit(lambda G, ws: segment.feature_stack(G, ws, seg.layers, seg.resolution))
  head = jax.jit(lambda p, f: segment.apply_head(p, f, seg.num_parts, seg.size))
  f = feats(G, ws)
  img = synth(G, ws)
  grey = metrics.grey_levels(metrics.to_levels(img))
  masks = jax.nn.one_hot(jnp.argmax(head(seg.params, f), -1), seg.num_parts)[..., 1:]
  rows = [
      ("synthesis", _time(synth, G, ws)),
      ("features (upsampled, concatenated)", _time(feats, G, ws)),
      ("segmentation head", _time(head, seg.params, f)),
      ("local entropy (disk r=5)", _time(jax.jit(jax.vmap(metrics.local_entropy)), grey)),
      ("all part metrics", _time(lambda a, b: metrics.part_metrics(a, b), img, masks)),
      ("stage.measure (all of the above)",
       _time(lambda w: stage.measure(G, seg, w, n, 3, entropy=not args.no_entropy, truth=args.truth), w)),
  ]
  print(f"per image, {args.resolution} px, batch {n}, {jax.devices()[0].platform}:")
  for name, t in rows:
    print(f"  {name:38s} {1e3 * t / n:8.2f} ms")


if __name__ == "__main__":
  main()
