"""From an inverted photo's w to explanations: its representation, counterfactuals and
unit sweeps, and the degraded renders the built-in world's checks invert.

    r = representation(G, clf, w)                                   # [N, D]
    cf = counterfactuals(G, clf, link, w, r, origin, target, shift0, **search_settings)
    strips = unit_sweeps(G, link, r, units, lo, hi, n_steps)        # [N, k, n_steps, H, W, 3]

The counterfactual search is the counterfactual stage's (`analysis.counterfactual.search`
and `outcome`, the same jitted functions), started from r of the photo's reconstruction
G(w): what the classifier sees in the image the explanation is about. A unit sweep sets
r_i of that r to `n_steps` values from lo_i to hi_i (the unit's range over the paired
data) and regenerates link(r).

`degrade` and `write_renders` make "photos" of the built-in world from known w: JPEG
(quality 75), Gaussian noise (sigma 4/255), a 1-2 px shift, as a camera and a web page
would; `write_renders` writes them as PNG / JPEG files with their true w beside them
(`TRUTH_FILE`, hidden: the folder's photo listing skips it).
"""
from __future__ import annotations

import io as _io
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from lis_jax import generators
from lis_jax import images
from lis_jax import io
from lis_jax.analysis import counterfactual as cf_lib

JPEG_QUALITY = 75
NOISE_SIGMA = 4 / 255  # in [0, 1] units
DEGRADATIONS = ("clean", "jpeg", "noise", "shift", "all")
TRUTH_FILE = ".truth.npz"   # beside write_renders' files: w [N, w_dim], cls [N], files [N]


def _shift_noise(im: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
  """uint8 [H, W, 3]: the 2 px ('shift') or 1 px ('all') shift, then the noise."""
  if kind in ("shift", "all"):
    d = 2 if kind == "shift" else 1
    im = np.pad(im, ((d, 0), (d, 0), (0, 0)), mode="edge")[:im.shape[0], :im.shape[1]]
  if kind in ("noise", "all"):
    im = np.clip(im + rng.normal(0, NOISE_SIGMA * 255, im.shape), 0, 255).round().astype(np.uint8)
  return im


def _jpeg_bytes(im: np.ndarray) -> bytes:
  buf = _io.BytesIO()
  Image.fromarray(im).save(buf, format="JPEG", quality=JPEG_QUALITY)
  return buf.getvalue()


def degrade(u8: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
  """uint8 [N, H, W, 3] -> the degraded uint8 images (`kind` one of DEGRADATIONS)."""
  if kind not in DEGRADATIONS:
    raise ValueError(f"degradation {kind!r}; known: {', '.join(DEGRADATIONS)}")
  out = []
  for im in u8:
    im = _shift_noise(im, kind, rng)
    if kind in ("jpeg", "all"):
      im = np.asarray(Image.open(_io.BytesIO(_jpeg_bytes(im))).convert("RGB"))
    out.append(im)
  return np.stack(out)


def write_renders(G: Any, folder: str, n: int, key: jax.Array, psi: float, kind: str,
                  rng: np.random.Generator, classes: np.ndarray) -> list[str]:
  """Writes n degraded renders of G (classes round robin, z from `key`, truncation psi)
  into `folder` as render_<i>.jpg (kinds with JPEG) or .png, and TRUTH_FILE; returns the
  file names. Written atomically; a folder that holds TRUTH_FILE already is left alone."""
  if os.path.exists(os.path.join(folder, TRUTH_FILE)):
    return [str(f) for f in io.load_npz(os.path.join(folder, TRUTH_FILE))["files"]]
  os.makedirs(folder, exist_ok=True)
  cls = np.asarray(classes, np.int32)[np.arange(n) % len(classes)]
  z = jax.random.normal(key, (n, G.z_dim))
  ws = G.mapping(z, jnp.asarray(cls), psi=psi)
  u8 = images.to_uint8(np.asarray(G.synthesis(ws)))
  jpeg = kind in ("jpeg", "all")
  names = []
  for i, im in enumerate(u8):
    name = f"render_{i:02d}.{'jpg' if jpeg else 'png'}"
    im = _shift_noise(im, kind, rng)
    with io.atomic_file(os.path.join(folder, name)) as f:
      if jpeg:
        f.write(_jpeg_bytes(im))
      else:
        Image.fromarray(im).save(f, format="PNG")
    names.append(name)
  io.save_npz(os.path.join(folder, TRUTH_FILE), w=np.asarray(ws[:, 0]), cls=cls,
              files=np.asarray(names))
  return names


def read_truth(folder: str) -> dict | None:
  """TRUTH_FILE of `folder` ({file name: (w [w_dim], class)}), or None if it has none."""
  path = os.path.join(folder, TRUTH_FILE)
  if not os.path.exists(path):
    return None
  t = io.load_npz(path)
  return {str(f): (t["w"][i], int(t["cls"][i])) for i, f in enumerate(t["files"])}


@jax.jit
def representation(G: Any, clf: Any, w: jax.Array) -> jax.Array:
  """r [N, D] of the images G(w) [N, w_dim] (the classifier's features)."""
  img = G.synthesis(generators.broadcast_ws(w, G.num_ws))
  return clf.features(clf.preprocess(img))


def counterfactuals(G: Any, clf: Any, link: Any, w: np.ndarray, r: np.ndarray,
                    origin: np.ndarray, target: np.ndarray, shift0: np.ndarray, *,
                    batch: int, top_units: int, **search: Any) -> dict[str, np.ndarray]:
  """The counterfactual stage's search and outcome for N starts, padded to `batch` rows
  (the stage's jitted shapes: one compile for both). w [N, w_dim], r, shift0 [N, D],
  origin, target [N]; `search`: lr, max_steps, check_every, w_origin, w_cos, mode.
  Returns numpy: shift [N, D], steps, success [N], w_after, probs_before / after,
  img_before / after, top_units, top_shift."""
  n = w.shape[0]
  out = []
  for s in range(0, n, batch):
    rows = np.minimum(np.arange(s, s + batch), n - 1)
    active = np.arange(s, s + batch) < n
    res = cf_lib._search(G, clf, link, jnp.asarray(r[rows]), jnp.asarray(origin[rows]),
                         jnp.asarray(target[rows]), jnp.asarray(shift0[rows]),
                         jnp.asarray(active), **search)
    post = cf_lib._outcome(G, clf, link, jnp.asarray(w[rows]), jnp.asarray(r[rows]),
                           res["shift"], top_units=top_units)
    m = int(active.sum())
    out.append({k: np.asarray(v)[:m] for k, v in {**res, **post}.items()})
  return {k: np.concatenate([o[k] for o in out]) for k in out[0]}


@jax.jit
def _sweep_images(G, link, r, units, values):
  """r [N, D], units [N, k], values [N, k, S] -> uint8 [N, k, S, H, W, 3]."""
  n, k, steps = values.shape
  rs = jnp.broadcast_to(r[:, None, None], (n, k, steps, r.shape[1]))
  onehot = jax.nn.one_hot(units, r.shape[1], dtype=r.dtype)[:, :, None]     # [N, k, 1, D]
  rs = rs * (1 - onehot) + values[..., None] * onehot
  w = link(rs.reshape(n * k * steps, -1))
  img = G.synthesis(generators.broadcast_ws(w, G.num_ws))
  return images.to_uint8(img).reshape((n, k, steps) + img.shape[1:])


def unit_sweeps(G: Any, link: Any, r: np.ndarray, units: np.ndarray, lo: np.ndarray,
                hi: np.ndarray, n_steps: int) -> np.ndarray:
  """Each photo's units swept from its r: r [N, D], units [N, k] int, lo / hi [D] the
  units' ranges -> uint8 [N, k, n_steps, H, W, 3] (r_i = linspace(lo_i, hi_i))."""
  t = np.linspace(0.0, 1.0, n_steps, dtype=np.float32)
  values = lo[units][..., None] + (hi[units] - lo[units])[..., None] * t      # [N, k, S]
  return np.asarray(_sweep_images(G, link, jnp.asarray(r), jnp.asarray(units, jnp.int32),
                                  jnp.asarray(values, jnp.float32)))


def moved_units(shift: np.ndarray, shift0: np.ndarray, k: int) -> np.ndarray:
  """[N, k] the units the search moved most, by |shift - shift0| (the start shift is shared
  by the searches compared, so |shift| alone would compare mostly the start)."""
  return np.argsort(-np.abs(shift - shift0), axis=1, kind="stable")[:, :k]


def overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Per row, |A & B| / |A | B| of the unit sets a[i], b[i] [N, k] (Jaccard)."""
  return np.array([len(set(x) & set(y)) / max(len(set(x) | set(y)), 1)
                   for x, y in zip(a.tolist(), b.tolist())])
