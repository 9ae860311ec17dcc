"""Inversion on the built-in world: how well W projection recovers known w and factors.

    python benchmarks/bench_invert.py [--n 32] [--steps 1000] [--restarts 1] [--refine 10]
        [--conditions clean,all] [--link_workdir DEMO_WORKDIR] [--timing]

Images are rendered by the `shapes` world (64 px, the demo's) from known w (psi 0.7, the
pipeline's truncation, n / 8 per class), then degraded as a photo would be: JPEG (quality
75), Gaussian noise (sigma 4/255 per channel), a 2 px shift (edge pixels repeated), and
all three at once (JPEG, noise, a 1 px shift). Each set is projected with
`lis_jax.invert.project` (the reference's settings; loss: pixel MSE only, because
ImageNet VGG features say nothing about this world's images: `lpips_weight` 0; the
reported LPIPS is a seeded random VGG16 at 1/8 width). Printed per condition:
- w error: ||w_inv - w_true|| / ||w_true - w_avg[class]|| (mean over images);
- factor recovery: correlation over images of `decode_factors(w_inv)` with the truth,
  per factor (Pearson; circular correlation for the hue factors), and the mean;
- PSNR and LPIPS of the reconstruction vs the photo it was given and vs the clean render;
- the share of reconstructions the classifier gives the photo's class;
- the images stuck in a local minimum (reconstruction < STUCK_PSNR_DB from its photo)
  and the mean factor correlation over the others.
`--link_workdir`: with a finished demo workdir's link, the counterfactual from each
inverted w vs from its true w (same origin, target = the next class, start shift): target
reached, same outcome, Jaccard overlap of the 10 units moved most, and its chance level.
`--timing`: seconds per image of 16 images projected together vs one at a time
(`--timing_steps` steps each, compile excluded).
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from lis_jax import classifiers, generators, images, lpips
from lis_jax.invert import explain, projector
from lis_jax.invert.explain import degrade

CONDITIONS = explain.DEGRADATIONS
# A reconstruction further than this from its photo is stuck in a local minimum (measured
# on the clean set: converged 42-52 dB, one stuck at 13.5 dB; degraded photos: about 35 dB).
STUCK_PSNR_DB = 25.0


def correlation(a: np.ndarray, b: np.ndarray, circular: bool) -> float:
  """Pearson, or for angles in turns the circular correlation (Jammalamadaka-SenGupta)."""
  if not circular:
    return float(np.corrcoef(a, b)[0, 1])
  ta, tb = 2 * np.pi * a, 2 * np.pi * b
  ma, mb = np.angle(np.exp(1j * ta).mean()), np.angle(np.exp(1j * tb).mean())
  sa, sb = np.sin(ta - ma), np.sin(tb - mb)
  return float((sa * sb).sum() / np.sqrt((sa ** 2).sum() * (sb ** 2).sum()))


def factor_correlations(G, w_true, w_inv) -> dict[str, float]:
  bc = lambda w: jnp.repeat(jnp.asarray(w)[:, None], G.num_ws, 1)
  ft, fi = G.decode_factors(bc(w_true))[0], G.decode_factors(bc(w_inv))[0]
  return {k: correlation(np.asarray(ft[k]), np.asarray(fi[k]), k in G.circular_factors)
          for k in G.factor_names}


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  return 10 * np.log10(4.0 / np.maximum(np.mean((a - b) ** 2, axis=(1, 2, 3)), 1e-12))


def run_condition(G, clf, P, kind, w_true, classes, u8, cfg, rng):
  photo_u8 = degrade(u8, kind, rng) if kind != "clean" else u8
  photo = photo_u8.astype(np.float32) / 127.5 - 1
  t0 = time.perf_counter()
  res = projector.project(G, clf, P, photo, key=jax.random.key(0), config=cfg)
  secs = time.perf_counter() - t0
  w_avg = np.asarray(G.params["w_avg"])[classes]
  w_err = np.linalg.norm(res.w - w_true, axis=1) / np.linalg.norm(w_true - w_avg, axis=1)
  cors = factor_correlations(G, w_true, res.w)
  clean = u8.astype(np.float32) / 127.5 - 1
  recon = images.render(G, res.w).astype(np.float32) / 127.5 - 1
  ok = res.psnr >= STUCK_PSNR_DB   # vs the photo it was given
  cors_ok = factor_correlations(G, w_true[ok], res.w[ok])
  lp_clean = np.asarray(jax.jit(lambda P, a, b: P(a, b))(P, recon, clean))
  return dict(kind=kind, secs=secs, w_err=float(w_err.mean()), cors=cors,
              mean_cor=float(np.mean(list(cors.values()))), n_stuck=int((~ok).sum()),
              mean_cor_ok=float(np.mean(list(cors_ok.values()))), psnr=float(res.psnr.mean()),
              psnr_clean=float(psnr(recon, clean).mean()), lpips=float(res.lpips.mean()),
              lpips_clean=float(lp_clean.mean()), match=float(res.match.mean()),
              class_kept=float((res.pred_recon == classes).mean()),
              steps=float(res.steps.mean()), w_inv=res.w)


def counterfactual_check(G, clf, link, w_true, w_inv, classes, top_units=10, **search):
  """The counterfactual from each inverted w vs from its true w: the same origin (the
  photo's class), target (the next class) and start shift, the search of the pipeline's
  counterfactual stage. Returns success rates, the share with the same outcome, and the
  Jaccard overlap of the top_units units the search moved most (|shift - start shift|),
  with its chance level."""
  n = w_true.shape[0]
  ws = np.concatenate([w_true, w_inv]).astype(np.float32)
  r = np.asarray(explain.representation(G, clf, ws))
  origin = np.tile(classes, 2).astype(np.int32)
  target = ((origin + 1) % G.num_classes).astype(np.int32)
  shift0 = np.asarray(jax.random.uniform(jax.random.key(3), (n, clf.feature_dim)))
  res = explain.counterfactuals(G, clf, link, ws, r, origin, target, np.tile(shift0, (2, 1)),
                                batch=2 * n, top_units=top_units, **search)
  ok_t, ok_i = res["success"][:n], res["success"][n:]
  moved = explain.moved_units(res["shift"], np.tile(shift0, (2, 1)), top_units)
  jac = explain.overlap(moved[:n], moved[n:])
  d, k = clf.feature_dim, top_units
  inter = k * k / d     # chance: two random k-sets of d units
  return dict(success_true=float(ok_t.mean()), success_inverted=float(ok_i.mean()),
              same_outcome=float((ok_t == ok_i).mean()), both=float((ok_t & ok_i).mean()),
              overlap=float(jac.mean()), overlap_both=float(jac[ok_t & ok_i].mean()),
              chance=inter / (2 * k - inter))


def timing(G, clf, P, photos, steps: int) -> tuple[float, float]:
  """Seconds per image: all together (one batch) vs one at a time; compile excluded."""
  cfg = projector.default_config()
  cfg.update(num_steps=steps, lpips_weight=0.0, w_avg_samples=2000, plateau_patience=10 ** 6)
  out = []
  for bs in (len(photos), 1):
    cfg.batch_size = bs
    projector.project(G, clf, P, photos[:bs], key=jax.random.key(0), config=cfg)  # compile
    t0 = time.perf_counter()
    projector.project(G, clf, P, photos, key=jax.random.key(0), config=cfg)
    out.append((time.perf_counter() - t0) / len(photos))
  return out[0], out[1]


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--n", type=int, default=32)
  ap.add_argument("--steps", type=int, default=1000)
  ap.add_argument("--conditions", default=",".join(CONDITIONS))
  ap.add_argument("--restarts", type=int, default=1, help="starts per image (lowest loss kept)")
  ap.add_argument("--refine", type=int, default=10, help="Levenberg-Marquardt steps after Adam")
  ap.add_argument("--timing", action="store_true")
  ap.add_argument("--link_workdir", default=None,
                  help="a demo workdir: also compare counterfactuals from inverted vs true w "
                       "with its link")
  ap.add_argument("--timing_steps", type=int, default=100)
  args = ap.parse_args()
  G = generators.load("shapes")
  clf = classifiers.load("shapes-resnet")
  P = lpips.random_lpips(jax.random.key(0), width_divisor=8)
  classes = np.arange(args.n) % G.num_classes
  z = jax.random.normal(jax.random.key(2024), (args.n, G.z_dim))
  ws = G.mapping(z, classes, psi=0.7)
  w_true = np.asarray(ws[:, 0])
  u8 = images.to_uint8(np.asarray(G.synthesis(ws)))
  cfg = projector.default_config()
  cfg.update(num_steps=args.steps, lpips_weight=0.0, batch_size=min(args.n * args.restarts, 64),
             restarts=args.restarts, refine_steps=args.refine)
  print(f"shapes world 64 px, {args.n} images (psi 0.7), {args.steps} steps, "
        f"{args.restarts} start(s) per image, {args.refine} LM steps, loss: MSE; "
        f"LPIPS: random VGG16/8; backend {jax.default_backend()}")
  rows = []
  for kind in args.conditions.split(","):
    r = run_condition(G, clf, P, kind, w_true, classes, u8, cfg, np.random.default_rng(0))
    rows.append(r)
    print(f"{kind:6s} mean factor corr {r['mean_cor']:.3f}  w err {r['w_err']:.3f}  "
          f"PSNR {r['psnr']:.1f} dB (vs clean {r['psnr_clean']:.1f})  LPIPS {r['lpips']:.4f} "
          f"(vs clean {r['lpips_clean']:.4f})  same class {r['match']:.3f}  "
          f"steps {r['steps']:.0f}  {r['secs']:.0f} s", flush=True)
    print(f"       stuck (PSNR vs its photo < {STUCK_PSNR_DB:.0f} dB): {r['n_stuck']} of "
          f"{args.n}; mean factor corr without them {r['mean_cor_ok']:.3f}", flush=True)
  names = list(rows[0]["cors"])
  print("\nper-factor correlation | " + " | ".join(r["kind"] for r in rows))
  for k in names:
    print(f"{k:16s} " + " ".join(f"{r['cors'][k]:6.3f}" for r in rows))
  if args.link_workdir:
    from lis_jax import stages   # pylint: disable=import-outside-toplevel
    link = stages.REGISTRY["link"].load(args.link_workdir).link
    search = dict(lr=0.5, max_steps=1000, check_every=1, w_origin=0.6, w_cos=10.0,
                  mode="reference")   # the demo's counterfactual settings
    print("\ncounterfactual from the inverted w vs the true w (target: the next class; "
          "demo link and search settings):")
    for r in rows:
      c = counterfactual_check(G, clf, link, w_true, r["w_inv"], classes, **search)
      print(f"{r['kind']:6s} target reached from true w {c['success_true']:.3f}, from inverted "
            f"w {c['success_inverted']:.3f}; same outcome {c['same_outcome']:.3f}; the 10 units "
            f"moved most overlap (Jaccard) {c['overlap']:.3f}, {c['overlap_both']:.3f} where "
            f"both reached (chance {c['chance']:.3f})", flush=True)
  if args.timing:
    photos = u8[:16].astype(np.float32) / 127.5 - 1
    together, alone = timing(G, clf, P, photos, args.timing_steps)
    print(f"\ntiming ({args.timing_steps} steps, 16 images, {jax.default_backend()}): batched "
          f"{together:.3f} s/image, one at a time {alone:.3f} s/image "
          f"({alone / together:.1f}x)")


if __name__ == "__main__":
  main()
