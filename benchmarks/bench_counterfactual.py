"""64 counterfactual searches batched in one jitted while_loop versus one at a time.

Random-weight StyleGAN-XL preset + built-in classifier, an OLS link fitted on generated
pairs, searches from generated samples toward another class. "One at a time" runs the
same jitted search with a batch of 1, 64 times (already faster than the reference's
Python loop, which also re-dispatches every step); "batched" runs all 64 in one call,
each stopping on its own. Both are timed after compilation; the script prints wall
times, their ratio, and checks that both give the same steps and successes.

Usage (issue 4, item 5):
  python benchmarks/bench_counterfactual.py --arch tiny --n 64 --max-steps 40 --check-every 1
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from lis_jax import classifiers, generators, linking
from lis_jax.stages import counterfactual as counterfactuals
from lis_jax.stages import paired_data
from lis_jax.generators import stylegan_xl


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--arch", choices=sorted(stylegan_xl.PRESETS), default="tiny")
  p.add_argument("--generator", default=None,
                 help="a built-in generator name (e.g. 'shapes') instead of a random --arch")
  p.add_argument("--classifier", default="tiny-resnet-random")
  p.add_argument("--n", type=int, default=64, help="number of searches")
  p.add_argument("--max-steps", type=int, default=40)
  p.add_argument("--check-every", type=int, default=1)
  p.add_argument("--lr", type=float, default=0.5)
  p.add_argument("--mode", choices=counterfactuals.MODES, default="reference")
  p.add_argument("--compact-rows", type=int, default=0, help="batched only: counterfactual.compact_rows")
  args = p.parse_args()

  G = (generators.load(args.generator) if args.generator
       else stylegan_xl.random_generator(args.arch, jax.random.PRNGKey(0)))
  clf = classifiers.load(args.classifier)
  key = jax.random.PRNGKey(0)
  n_fit = max(4 * clf.feature_dim, 256)
  cls = jnp.asarray(np.arange(n_fit) % min(8, G.num_classes), jnp.int32)
  ws, r, logits = paired_data._generate(G, clf, key, cls, jnp.arange(n_fit, dtype=jnp.int32), psi=0.7)
  link = linking.Link(params=linking.fit_linear(np.asarray(r), np.asarray(ws[:, 0])), kind="ols")
  r = np.asarray(r)[: args.n]
  origin = np.asarray(logits).argmax(-1)[: args.n].astype(np.int32)   # what clf says it is
  target = np.asarray(np.argsort(np.asarray(logits)[: args.n], -1)[:, -2], np.int32)  # runner-up
  shift0 = np.asarray(counterfactuals.initial_shift(key, jnp.arange(args.n), clf.feature_dim))
  statics = dict(lr=args.lr, max_steps=args.max_steps, check_every=args.check_every,
                 w_origin=0.6, w_cos=10.0, mode=args.mode)
  print(f"devices: {jax.devices()}; G '{args.generator or args.arch}' {G.resolution} px; {args.classifier}; "
        f"{args.n} searches, max_steps {args.max_steps}, check_every {args.check_every}, {args.mode}, "
        f"compact_rows {args.compact_rows}")

  def batched():
    res = counterfactuals._search(G, clf, link, r, origin, target, shift0, np.ones(args.n, bool),
                                  compact_rows=args.compact_rows, **statics)
    return jax.tree_util.tree_map(np.asarray, res)

  def one_at_a_time():
    outs = [counterfactuals._search(G, clf, link, r[i:i + 1], origin[i:i + 1], target[i:i + 1],
                                    shift0[i:i + 1], np.ones(1, bool), **statics)
            for i in range(args.n)]
    return {k: np.concatenate([np.asarray(o[k]) for o in outs]) for k in outs[0]}

  def loss(s, r_i, o_i, t_i):
    return counterfactuals.search_loss(G, clf, link, r_i, s, o_i, t_i, w_origin=0.6, w_cos=10.0,
                                       mode=args.mode).sum()
  sgd = jax.jit(lambda s, r_i, o_i, t_i: s - args.lr * jax.grad(loss)(s, r_i, o_i, t_i))
  pred = jax.jit(lambda s, r_i: counterfactuals.image_logits(G, clf, link, r_i - s).argmax(-1)[0])

  def python_loop():   # the reference's structure: one search, one step, one host sync at a time
    steps, success = [], []
    for i in range(args.n):
      s, r_i, o_i, t_i = shift0[i:i + 1], r[i:i + 1], origin[i:i + 1], target[i:i + 1]
      ok = False
      for step in range(1, args.max_steps + 1):
        s = sgd(s, r_i, o_i, t_i)
        if step % args.check_every == 0 and int(pred(s, r_i)) == target[i]:
          ok = True
          break
      steps.append(step)
      success.append(ok)
    return {"steps": np.asarray(steps), "success": np.asarray(success)}

  rows = {"batched (one while_loop)": batched, "one at a time (jitted search, B=1)": one_at_a_time,
          "one at a time (Python step loop, as the reference)": python_loop}
  for fn in rows.values():   # compile
    fn()
  res, wall, cpu = {}, {}, {}
  for name, fn in rows.items():
    t, c = time.perf_counter(), time.process_time()
    res[name] = fn()
    wall[name], cpu[name] = time.perf_counter() - t, time.process_time() - c
  rb = res["batched (one while_loop)"]
  differ = {name: int(((rb["steps"] != o["steps"]) | (rb["success"] != o["success"])).sum())
            for name, o in res.items()}
  print(f"success {int(rb['success'].sum())}/{args.n}, steps mean {rb['steps'].mean():.1f} "
        f"max {rb['steps'].max()}; searches whose steps/success differ from batched "
        f"(float32 summation order near the decision boundary): {differ}")
  tb = wall["batched (one while_loop)"]
  for name in rows:
    print(f"{name}: wall {wall[name]:.2f} s (x{wall[name] / tb:.1f} of batched), CPU {cpu[name]:.2f} s")


if __name__ == "__main__":
  main()
