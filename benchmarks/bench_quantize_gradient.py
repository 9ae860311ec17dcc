"""What classifying the reference's 8-bit image (`quantize=True`) costs the image-mode
counterfactual's gradient.

`preprocess(quantize=True)` floors the image to 8-bit levels in the forward pass and
passes the gradient straight through (the derivative of the floor is taken as 1). The
true gradient of the quantised loss is 0 almost everywhere, so the straight-through
gradient is a surrogate; this script measures how good a surrogate it is, on the built-in
world ('shapes' + 'shapes-resnet', an OLS link fitted on generated pairs):
  1. cosine between the straight-through gradient (quantize on) and the continuous one
     (quantize off) of the image-mode search loss w.r.t. the shift, at the searches'
     start shifts and after --steps SGD steps of the continuous search;
  2. the first SGD step's decrease of the *quantised* loss when stepping along the
     straight-through gradient, against the continuous loss's decrease along its own;
  3. the image-mode search itself, quantize off vs on: success rate and mean steps.

Usage:
  python benchmarks/bench_quantize_gradient.py --n 32 --max-steps 60
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np

from lis_jax import classifiers, generators, linking
from lis_jax.stages import counterfactual as cf
from lis_jax.stages import paired_data

W_ORIGIN, W_COS, LR = 0.6, 10.0, 0.5   # the reference's loss weights and learning rate


def setup(n: int, n_fit: int = 1024):
  G = generators.load("shapes")
  clfs = {q: classifiers.load("shapes-resnet", quantize=q) for q in (False, True)}
  key = jax.random.PRNGKey(0)
  cls = jnp.asarray(np.arange(n_fit) % G.num_classes, jnp.int32)
  ws, r, logits = paired_data._generate(G, clfs[True], key, cls, jnp.arange(n_fit, dtype=jnp.int32),
                                        psi=0.7)
  link = linking.Link(params=linking.fit_linear(np.asarray(r), np.asarray(ws[:, 0])), kind="ols")
  r, logits = np.asarray(r)[:n], np.asarray(logits)[:n]
  origin = logits.argmax(-1).astype(np.int32)
  target = ((origin + 1 + np.arange(n) % (G.num_classes - 1)) % G.num_classes).astype(np.int32)
  shift0 = np.asarray(cf.initial_shift(key, jnp.arange(n), r.shape[1]))
  return G, clfs, link, r, origin, target, shift0


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--n", type=int, default=32, help="number of searches")
  p.add_argument("--max-steps", type=int, default=60)
  p.add_argument("--steps", type=int, default=10, help="continuous SGD steps before the 2nd cosine")
  args = p.parse_args()
  G, clfs, link, r, origin, target, shift0 = setup(args.n)

  def loss(clf, s):   # [B] per-search losses
    return cf.search_loss(G, clf, link, r, s, origin, target, w_origin=W_ORIGIN, w_cos=W_COS,
                          mode="image")

  grad = {q: jax.jit(jax.grad(lambda s, c=c: loss(c, s).sum())) for q, c in clfs.items()}
  lossj = {q: jax.jit(lambda s, c=c: loss(c, s)) for q, c in clfs.items()}

  def cosines(s):
    a, b = np.asarray(grad[True](s)), np.asarray(grad[False](s))
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))

  s = shift0
  c0 = cosines(s)
  for _ in range(args.steps):
    s = s - LR * np.asarray(grad[False](s))
  c1 = cosines(s)
  print(f"{args.n} image-mode searches on 'shapes' + 'shapes-resnet', OLS link, lr {LR}")
  for name, c in ((f"at the start shift", c0), (f"after {args.steps} continuous steps", c1)):
    print(f"  cos(straight-through grad, continuous grad) {name}: median {np.median(c):.4f}, "
          f"min {c.min():.4f}, mean {c.mean():.4f}")

  # One SGD step from the start: decrease of each loss along its own gradient.
  dq = np.asarray(lossj[True](shift0 - LR * np.asarray(grad[True](shift0))) - lossj[True](shift0))
  dc = np.asarray(lossj[False](shift0 - LR * np.asarray(grad[False](shift0))) - lossj[False](shift0))
  print(f"  first step: quantised loss change along the straight-through grad: median {np.median(dq):.4f} "
        f"(decreased in {np.mean(dq < 0):.0%}); continuous loss along its grad: median {np.median(dc):.4f} "
        f"(decreased in {np.mean(dc < 0):.0%})")

  for q, clf in clfs.items():
    res = cf._search(G, clf, link, r, origin, target, shift0, np.ones(args.n, bool), lr=LR,
                     max_steps=args.max_steps, check_every=1, w_origin=W_ORIGIN, w_cos=W_COS,
                     mode="image")
    ok, steps = np.asarray(res["success"]), np.asarray(res["steps"])
    mean_steps = steps[ok].mean() if ok.any() else float("nan")
    print(f"  search, quantize={q!s:5}: success {ok.mean():.1%} ({ok.sum()}/{args.n}), "
          f"mean steps of the successes {mean_steps:.1f} (max_steps {args.max_steps})")


if __name__ == "__main__":
  main()
