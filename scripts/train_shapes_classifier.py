"""Trains the built-in 'shapes-resnet' classifier on the built-in 'shapes' world.

    python scripts/train_shapes_classifier.py                       # writes the shipped asset
    python scripts/train_shapes_classifier.py --out=/tmp/ck --steps=200

Every batch is drawn fresh from the world (classes uniform, z normal, truncation half
psi 1, half uniform in [0.5, 1]), so there is no fixed training set. Deterministic
given --seed (on the same JAX version and backend). Held-out accuracy is measured on
images drawn with a different seed (--eval_seed) and written into the checkpoint's
meta.json. About 5-10 minutes on 2 CPU cores with the defaults.
"""
from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lis_jax import generators, io
from lis_jax.classifiers import shapes_resnet
from lis_jax.classifiers.classifier import Classifier, init_variables


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default=shapes_resnet.ASSET_DIR, help="checkpoint directory to write")
  p.add_argument("--steps", type=int, default=1500, help="optimiser steps")
  p.add_argument("--batch", type=int, default=64, help="images per step")
  p.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate (cosine decay)")
  p.add_argument("--weight_decay", type=float, default=1e-4, help="AdamW weight decay")
  p.add_argument("--seed", type=int, default=0, help="seed of the init and of the training images")
  p.add_argument("--eval_seed", type=int, default=1000, help="seed of the held-out images")
  p.add_argument("--eval_n", type=int, default=2000, help="held-out images")
  p.add_argument("--world_seed", type=int, default=0, help="seed of the shapes world")
  return p.parse_args(argv)


def make_train_step(G, mod, tx, batch):
  """A jitted step: draw a batch from the world, one AdamW update. (variables, opt_state, key)."""
  spec = shapes_resnet.INPUT_SPEC
  dummy = Classifier.create(mod, None, arch=shapes_resnet.ARCH, input_spec=spec)

  def loss_fn(params, batch_stats, x, y):
    logits, updates = mod.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, (updates["batch_stats"], jnp.mean(jnp.argmax(logits, -1) == y))

  @jax.jit
  def step(variables, opt_state, key):
    img, y = shapes_resnet.sample_images(G, key, batch)
    x = dummy.preprocess(img)  # [B, 64, 64, 3]
    (loss, (stats, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        variables["params"], variables["batch_stats"], x, y)
    updates, opt_state = tx.update(grads, opt_state, variables["params"])
    params = optax.apply_updates(variables["params"], updates)
    return {"params": params, "batch_stats": stats}, opt_state, loss, acc

  return step


# (world_seed, steps, batch, lr, weight_decay) -> (G, module, optimiser, jitted step): a
# second run in the same process (tests call main() twice) reuses the traced and compiled
# step instead of building a new jitted closure; the same program, so the same weights.
_SETUPS = {}


def training_setup(args):
  """(G, module, optax optimiser, jitted train step) for args' world and optimiser, once per process."""
  static = (args.world_seed, args.steps, args.batch, args.lr, args.weight_decay)
  if static not in _SETUPS:
    G = generators.load("shapes", seed=args.world_seed)
    mod = shapes_resnet.module(G.num_classes)
    schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, min(100, args.steps // 10),
                                                  args.steps)
    tx = optax.adamw(schedule, weight_decay=args.weight_decay)
    _SETUPS[static] = (G, mod, tx, make_train_step(G, mod, tx, args.batch))
  return _SETUPS[static]


def train(args) -> dict:
  for name in ("steps", "batch", "eval_n"):
    if getattr(args, name) < 1:
      raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
  G, mod, tx, step = training_setup(args)
  key = jax.random.PRNGKey(args.seed)
  init_key, data_key = jax.random.split(key)
  variables = init_variables(mod, init_key, shapes_resnet.IMAGE_SIZE)
  opt_state = tx.init(variables["params"])
  t0 = time.time()
  for i in range(args.steps):
    variables, opt_state, loss, acc = step(variables, opt_state, jax.random.fold_in(data_key, i))
    if i % 100 == 0 or i == args.steps - 1:
      print(f"step {i:5d}  loss {float(loss):.4f}  batch acc {float(acc):.3f}  "
            f"{time.time() - t0:.0f}s", flush=True)
  train_s = time.time() - t0
  clf = Classifier.create(mod, variables, arch=shapes_resnet.ARCH, input_spec=shapes_resnet.INPUT_SPEC)
  eval_key = jax.random.PRNGKey(args.eval_seed)
  acc_mixed = shapes_resnet.accuracy(clf, G, eval_key, args.eval_n)
  acc_psi1 = shapes_resnet.accuracy(clf, G, jax.random.fold_in(eval_key, 1), args.eval_n, psi=1.0)
  acc_psi07 = shapes_resnet.accuracy(clf, G, jax.random.fold_in(eval_key, 2), args.eval_n, psi=0.7)
  print(f"held-out accuracy: mixed psi {acc_mixed:.4f}, psi 1.0 {acc_psi1:.4f}, psi 0.7 {acc_psi07:.4f}"
        f"  (train {train_s:.0f}s)")
  meta = {
      "kind": shapes_resnet.KIND, "arch": shapes_resnet.ARCH, "num_classes": G.num_classes,
      "module": {k: list(v) if isinstance(v, tuple) else v for k, v in shapes_resnet.MODULE_FIELDS.items()},
      "world": {"name": "shapes", "seed": args.world_seed, "resolution": G.resolution},
      "train": {k: getattr(args, k) for k in ("steps", "batch", "lr", "weight_decay", "seed")},
      "heldout": {"eval_seed": args.eval_seed, "n": args.eval_n, "accuracy_mixed_psi": acc_mixed,
                  "accuracy_psi_1.0": acc_psi1, "accuracy_psi_0.7": acc_psi07},
      "train_seconds": round(train_s, 1), "jax_version": jax.__version__,
      "backend": jax.default_backend(),
  }
  io.save_checkpoint(args.out, jax.tree_util.tree_map(np.asarray, variables), meta)
  print(f"wrote {args.out}")
  return meta


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    train(args)
  except (io.CheckpointError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
