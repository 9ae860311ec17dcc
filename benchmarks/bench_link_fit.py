"""The OLS link at the paper's size on ill-conditioned data, against scikit-learn float64.

Builds float32 r [N, D] whose centred singular values span 1 .. --low (a random rotation of
a scaled latent z, around a mean --offset times their spread) and w [N, w_dim] that depends
on every latent direction equally (dropping a small direction loses real signal), fits

  ours:    linking.fit_linear (float64 host solve: centred QR + SVD, rcond linking.RCOND)
  sklearn: LinearRegression on the same float32 r cast to float64 (the reference)
  old:     the previous solve, jnp.linalg.lstsq in float32 (cutoff eps32 x max(N, D))

and prints, on --n_test held-out rows, the predictions' distance to scikit-learn's
(||p - p_ref|| / ||p_ref - mean||) for our float64 params, for the float32 `Link` the
pipeline stores and evaluates, and for the old solve; seconds per fit; the condition
number and rank the fit reports.

Usage (the README's numbers):
  python benchmarks/bench_link_fit.py                       # N 25000, D 2048, w_dim 512
  python benchmarks/bench_link_fit.py --n 3000 --d 256 --w_dim 64
"""
import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout
from lis_jax import linking  # noqa: E402


def problem(n: int, d: int, k: int, low: float, offset: float, seed: int = 0):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n, d))
  rot = np.linalg.qr(rng.normal(size=(d, d)))[0]
  r = (z * np.geomspace(1.0, low, d)) @ rot + offset * rng.normal(size=d)
  w = z @ rng.normal(size=(d, k)) / np.sqrt(d) + 0.01 * rng.normal(size=(n, k))
  return r.astype(np.float32), w.astype(np.float32)


def rel(p, ref):
  ref = np.asarray(ref, np.float64)
  return float(np.linalg.norm(np.asarray(p, np.float64) - ref) / np.linalg.norm(ref - ref.mean(0)))


@jax.jit
def old_lstsq(x, y):
  xm, ym = x.mean(0), y.mean(0)
  A = jnp.linalg.lstsq(x - xm, y - ym)[0]
  return A, ym - xm @ A


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--n", type=int, default=25000)
  ap.add_argument("--n_test", type=int, default=5000)
  ap.add_argument("--d", type=int, default=2048)
  ap.add_argument("--w_dim", type=int, default=512)
  ap.add_argument("--low", type=float, default=1e-4)
  ap.add_argument("--offset", type=float, default=1.0)
  ap.add_argument("--skip_old", action="store_true")
  a = ap.parse_args()
  r, w = problem(a.n + a.n_test, a.d, a.w_dim, a.low, a.offset)
  rt, wt, re, x_test = r[:a.n], w[:a.n], r[a.n:], r[a.n:].astype(np.float64)
  print(f"N {a.n}, D {a.d}, w_dim {a.w_dim}, spectrum 1 .. {a.low:g}, mean offset {a.offset:g}, "
        f"held-out {a.n_test}")

  from sklearn import linear_model
  t = time.perf_counter()
  sk = linear_model.LinearRegression().fit(rt.astype(np.float64), wt.astype(np.float64))
  t_sk = time.perf_counter() - t
  ref = sk.predict(x_test)

  t = time.perf_counter()
  p, info = linking.fit_linear_info(rt, wt, float64=True)
  t_ours = time.perf_counter() - t
  link32 = linking.Link(params=jax.tree_util.tree_map(lambda v: v.astype(np.float32), p))
  print(f"ours    {t_ours:7.1f} s  predictions vs sklearn: float64 params {rel(x_test @ p['A'] + p['b'], ref):.2e}"
        f", float32 Link {rel(link32(re), ref):.2e}; condition number {info['condition_number']:.3g}, "
        f"rank {info['rank']}/{info['dims']}, identifiable {info['identifiable']}")
  print(f"sklearn {t_sk:7.1f} s  (LinearRegression, float64)")
  if not a.skip_old:
    t = time.perf_counter()
    A, b = jax.block_until_ready(old_lstsq(jnp.asarray(rt), jnp.asarray(wt)))
    t_old = time.perf_counter() - t
    A64 = np.asarray(A, np.float64)
    print(f"old     {t_old:7.1f} s  predictions vs sklearn {rel(re @ np.asarray(A) + np.asarray(b), ref):.2e}"
          f" (float32 lstsq), coefficients {np.linalg.norm(A64 - sk.coef_.T) / np.linalg.norm(sk.coef_):.2e}")


if __name__ == "__main__":
  main()
