"""Dense motion of parts (lis_jax.analysis.motion) against the built-in world's true motion.

Sweeps of the 'shapes' world that move one pose factor (pos_x: translation; rotation;
scale) over `--steps` images, the other factors fixed at random values; each pair of
consecutive images has a known true flow (`motion.pose_flow` of the decoded poses). Per
part (the world's masks of frame 1, > 0.5), the mean end-point error in pixels of:
  flow      the dense flow (`motion.dense_flow` on --features; 'masks': the world's part
            masks, as the motion stage matches them by default)
  affine    the flow of the part's affine fit (`motion.part_motion`)
  centroid  today's measure: every pixel of the part moves by its mask centroid's shift
  phasecorr a classical baseline: the translation found by phase correlation (numpy FFT,
            parabolic sub-pixel peak) of the part's masked grey images
and the affine fit's error in rotation (degrees) and scale (ratio) against the truth.

Usage:
  python benchmarks/bench_motion.py --n 16 --steps 5 --features image,masks,L2_64
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from lis_jax import generators
from lis_jax.analysis import motion
from lis_jax.generators import shapes

POSE = ("pos_x", "pos_y", "rotation", "scale")
Z_SPAN = 2.5        # the swept factor's z goes from -Z_SPAN to Z_SPAN (sigmoid 0.08..0.92)


def sweeps(G, factor: str, n: int, steps: int, seed: int = 0):
  """ws [n, steps, num_ws, w_dim] moving `factor` only (psi 1); z of the others ~ N(0, 0.7^2)."""
  rng = np.random.default_rng(seed)
  z = np.repeat(rng.normal(0, 0.7, (n, 1, len(shapes.FACTOR_NAMES))), steps, 1).astype(np.float32)
  z[:, :, shapes.FACTOR_NAMES.index(factor)] = np.linspace(-Z_SPAN, Z_SPAN, steps)
  cls = np.repeat(rng.integers(0, G.num_classes, n), steps)
  ws = G.mapping(jnp.asarray(z.reshape(n * steps, -1)), jnp.asarray(cls), psi=1.0)
  return ws.reshape((n, steps) + ws.shape[1:])


def truth(G, ws):
  """Masks [S, T, R, R, P], true flows [S, T-1, R, R, 2], true rotation/scale changes [S, T-1]."""
  s, t = ws.shape[:2]
  gt = G.ground_truth(ws.reshape((s * t,) + ws.shape[2:]))
  masks = np.asarray(gt["masks"]).reshape((s, t) + gt["masks"].shape[1:])
  pose = {k: np.asarray(gt["factors"][k]).reshape(s, t) for k in POSE}
  p1 = {k: v[:, :-1].ravel() for k, v in pose.items()}
  p2 = {k: v[:, 1:].ravel() for k, v in pose.items()}
  flow = np.asarray(motion.pose_flow(p1, p2, G.resolution)).reshape((s, t - 1) + masks.shape[2:4] + (2,))
  drot = (pose["rotation"][:, 1:] - pose["rotation"][:, :-1])
  dscale = pose["scale"][:, 1:] / pose["scale"][:, :-1]
  return masks, flow, drot, dscale


def phase_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """(dx, dy) with b(x) ~ a(x - d), from [H, W] images (numpy; parabolic sub-pixel peak)."""
  fa, fb = np.fft.fft2(a), np.fft.fft2(b)
  cross = fb * np.conj(fa)
  corr = np.real(np.fft.ifft2(cross / (np.abs(cross) + 1e-12)))
  h, w = corr.shape
  iy, ix = np.unravel_index(np.argmax(corr), corr.shape)

  def sub(c_m, c_0, c_p):
    den = c_m - 2 * c_0 + c_p
    return 0.0 if abs(den) < 1e-12 else 0.5 * (c_m - c_p) / den

  dx = ix + sub(corr[iy, (ix - 1) % w], corr[iy, ix], corr[iy, (ix + 1) % w])
  dy = iy + sub(corr[(iy - 1) % h, ix], corr[iy, ix], corr[(iy + 1) % h, ix])
  return np.array([(dx + w / 2) % w - w / 2, (dy + h / 2) % h - h / 2])


def affine_flow(affine: np.ndarray, size: int) -> np.ndarray:
  """[..., 2, 3] affine maps -> their flow [..., R, R, 2]."""
  xy = np.asarray(motion.pixel_grid(size, size))
  moved = np.einsum("...ij,hwj->...hwi", affine[..., :2], xy) + affine[..., None, None, :, 2]
  return moved - xy


def evaluate(G, factor: str, features: str, n: int, steps: int) -> dict:
  ws = sweeps(G, factor, n, steps)
  masks, true, drot, dscale = truth(G, ws)
  t0 = time.perf_counter()
  out = jax.tree_util.tree_map(np.asarray, motion.consecutive_motion(G, ws, masks, features))
  seconds = time.perf_counter() - t0
  img = np.asarray(G.synthesis(ws.reshape((-1,) + ws.shape[2:]))).mean(-1).reshape(masks.shape[:4])
  cent = np.asarray(motion.centroid_shift(jnp.asarray(masks[:, :-1].reshape((-1,) + masks.shape[2:])),
                                          jnp.asarray(masks[:, 1:].reshape((-1,) + masks.shape[2:]))))
  cent = cent.reshape(masks.shape[:2][:1] + (steps - 1,) + cent.shape[1:])   # [S, T-1, P, 2]
  res = {}
  for p, part in enumerate(shapes.PART_NAMES[1:], start=1):
    sel = masks[:, :-1, ..., p] > 0.5                                         # [S, T-1, R, R]
    epe = lambda f: float(np.linalg.norm(f - true, axis=-1)[sel].mean())
    pc = np.zeros(cent.shape[:2] + (2,))
    for i in range(cent.shape[0]):
      for j in range(cent.shape[1]):
        pc[i, j] = phase_correlation(img[i, j] * masks[i, j, ..., p], img[i, j + 1] * masks[i, j + 1, ..., p])
    ok = np.isfinite(out["rotation"][..., p])
    res[part] = {
        "flow": epe(out["flow"]),
        "affine": epe(affine_flow(np.nan_to_num(out["affine"][:, :, p]), G.resolution)),
        "centroid": epe(np.broadcast_to(cent[:, :, p, None, None], true.shape)),
        "phasecorr": epe(np.broadcast_to(pc[:, :, None, None], true.shape)),
        "rot_err_deg": float(np.degrees(np.abs(out["rotation"][..., p] - drot)[ok].mean())),
        "scale_err": float(np.abs(out["scale"][..., p] - dscale)[ok].mean()),
        "true_px": float(np.linalg.norm(true, axis=-1)[sel].mean()),
    }
  return {"parts": res, "seconds": seconds}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--n", type=int, default=16, help="sweeps per factor")
  p.add_argument("--steps", type=int, default=5, help="images per sweep")
  p.add_argument("--features", default="image,L2_64", help="comma list of motion.sweep_features specs")
  args = p.parse_args()
  G = generators.load("shapes")
  print(f"'shapes' world {G.resolution} px; {args.n} sweeps x {args.steps} images per factor; "
        f"mean end-point error (px) over the pixels of each part (mask > 0.5); {jax.devices()[0].platform}")
  print(f"{'features':12s} {'factor':9s} {'part':6s} {'|true|':>7s} {'flow':>6s} {'affine':>7s} "
        f"{'centroid':>8s} {'phasecorr':>9s} {'rot err':>8s} {'scale err':>9s}")
  for features in args.features.split(","):
    for factor in ("pos_x", "rotation", "scale"):
      r = evaluate(G, factor, features, args.n, args.steps)
      for part, v in r["parts"].items():
        print(f"{features:12s} {factor:9s} {part:6s} {v['true_px']:7.2f} {v['flow']:6.3f} {v['affine']:7.3f} "
              f"{v['centroid']:8.3f} {v['phasecorr']:9.3f} {v['rot_err_deg']:7.2f}d {v['scale_err']:9.4f}")
      means = {k: np.mean([v[k] for v in r["parts"].values()]) for k in ("flow", "affine", "centroid", "phasecorr")}
      print(f"{features:12s} {factor:9s} {'mean':6s} {'':7s} {means['flow']:6.3f} {means['affine']:7.3f} "
            f"{means['centroid']:8.3f} {means['phasecorr']:9.3f}   ({r['seconds']:.1f} s incl. compile)")


if __name__ == "__main__":
  main()
