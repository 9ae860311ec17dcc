"""Stage `photos`: explain real images. A folder of photos is inverted into W, and from
each photo's w the counterfactual search and unit sweeps run as for generated images.

`photos.images` names the folder (relative: inside the workdir; '' leaves the stage
with nothing to do, as in the paper's run). `photos.renders` > 0 first writes that many
degraded renders of the generator into it (`explain.write_renders`: the demo's own
"photos", with their true w kept beside them); with true w the counterfactual also
runs from the true w, and the report compares the two (same target reached, overlap of
the most shifted units). Files that cannot be used are refused with one line each and
the rest processed. The computation lives in `lis_jax/invert/` (cli.invert_folder,
projector, explain); outputs: WORKSPACE.md, section `photos/`.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import ml_collections
import numpy as np

from lis_jax import errors
from lis_jax import images
from lis_jax import io
from lis_jax import page
from lis_jax import validate as V
from lis_jax.generators.base import GroundTruthWorld
from lis_jax.invert import cli
from lis_jax.invert import explain
from lis_jax.stages.base import Stage

NAME = "photos"
INVERT_FIELDS = ("num_steps", "restarts", "refine_steps", "w_avg_samples", "lpips",
                 "lpips_weight", "mse_weight", "batch_size", "max_pixels")
SEARCH_FIELDS = ("lr", "max_steps", "check_every", "w_origin", "w_cos", "mode")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.images = ""  # folder of PNG / JPEG photos (relative: inside the workdir); '': nothing to do
  c.renders = 0  # > 0: first write this many degraded renders of the generator into `images`
  c.degrade = "all"  # their degradation: clean, jpeg, noise, shift or all (JPEG + noise + 1 px)
  # the inversion (lis_jax/invert/projector.py default_config(); the reference's values)
  c.num_steps = 1000
  c.restarts = 1
  c.refine_steps = 0  # Levenberg-Marquardt steps after Adam
  c.w_avg_samples = 10000
  c.lpips = "checkpoints/lpips_vgg16"  # python -m converters.lpips; 'random' for the built-in world
  c.lpips_weight = 1.0
  c.mse_weight = 1.0
  c.batch_size = 16  # photos inverted together
  c.max_pixels = 40_000_000  # larger photos are refused
  # the counterfactual from each photo's w (the counterfactual stage's search and defaults)
  c.targets = "next"  # 'next': the class after the photo's in config.classes; or one class id
  c.lr = 0.5
  c.max_steps = 2000
  c.check_every = 1
  c.w_origin = 0.6
  c.w_cos = 10.0
  c.mode = "reference"
  c.search_batch = 64  # searches per jitted call (the counterfactual stage's batch_size)
  c.top_units = 10  # most shifted units recorded (and compared with the true w's)
  # unit sweeps from each photo's r: its counterfactual's most shifted units
  c.sweep_units = 3
  c.sweep_steps = 5
  c.n_show = 8  # photos in the report
  return c


RULES = {
    "renders": V.nonneg_int(), "degrade": V.choice(*explain.DEGRADATIONS),
    "num_steps": V.pos_int(), "restarts": V.pos_int(), "refine_steps": V.nonneg_int(),
    "w_avg_samples": V.pos_int(), "lpips_weight": V.nonneg_float(),
    "mse_weight": V.nonneg_float(), "batch_size": V.pos_int(), "max_pixels": V.pos_int(),
    "lr": V.pos_float(), "max_steps": V.pos_int(), "check_every": V.pos_int(),
    "w_origin": V.any_float(), "w_cos": V.any_float(), "mode": V.choice("reference", "image"),
    "search_batch": V.pos_int(), "top_units": V.pos_int(), "sweep_units": V.nonneg_int(),
    "sweep_steps": V.pos_int(), "n_show": V.pos_int(),
}


@dataclasses.dataclass(frozen=True)
class PhotosResult:
  """results.npz and summary.json of the stage (empty when `images` is '').

  arrays: files [N] str; w [N, w_dim]; photo, recon, after uint8 [N, H, W, 3]; lpips,
  psnr [N]; pred_photo, pred_recon [N] (the classifier's argmax); match [N] bool; origin,
  target [N]; success [N] bool; steps [N]; p_target [N] (after); top_units, top_shift
  [N, top_units]; sweeps uint8 [N, sweep_units, sweep_steps, H, W, 3]; with true w also w_true, success_true, top_units_true, unit_overlap [N].
  summary: counts and means, `flagged` (files whose reconstruction the classifier reads
  as another class), `refused` {file: reason}, `validation` (or None).
  """
  arrays: dict
  summary: dict


def _settings(c, seed: int) -> ml_collections.ConfigDict:
  s = cli.settings(ml_collections.ConfigDict(), {f: c[f] for f in INVERT_FIELDS})
  s.seed = seed
  return s


def _targets(spec: str, pred: np.ndarray, classes: np.ndarray) -> np.ndarray:
  """Per photo the counterfactual's target: 'next' class of `classes` after pred, or an id."""
  if spec == "next":
    idx = np.searchsorted(classes, pred)
    nxt = classes[(idx + 1) % len(classes)]
    return np.where(np.isin(pred, classes), nxt, classes[0]).astype(np.int32)
  try:
    t = int(spec)
  except ValueError:
    raise errors.PipelineError(f"photos.targets={spec!r}: 'next' or a class id") from None
  return np.full(pred.shape, t, np.int32)


def photo_folder(workdir: str, images: str) -> str:
  """`photos.images` as a path: absolute as given, relative inside the workdir (also before
  the stage has written it: the demo's renders never land in the current directory)."""
  return images if os.path.isabs(images) else os.path.join(workdir, images)


def run(ctx) -> None:
  c = ctx.cfg(NAME)
  out_dir = ctx.out_dir(NAME)
  os.makedirs(out_dir, exist_ok=True)
  if not c.images:
    io.write_json(os.path.join(out_dir, "summary.json"), {"n": 0, "images": ""})
    io.save_npz(os.path.join(out_dir, "results.npz"), files=np.zeros((0,), "U1"))
    return
  folder = photo_folder(ctx.workdir, c.images)
  G, clf = ctx.G, ctx.clf
  if c.renders:
    explain.write_renders(G, folder, c.renders, ctx.key("photos.renders"), float(ctx.config.psi),
                          c.degrade, ctx.rng("photos.degrade"), ctx.classes)
  settings = _settings(c, ctx.seed("photos.invert"))
  P, _ = cli.load_lpips(str(settings.lpips), ctx.workdir, int(settings.seed))
  inv_dir = os.path.join(out_dir, "invert")
  os.makedirs(inv_dir, exist_ok=True)
  inv = cli.invert_folder(G, clf, P, settings, folder, inv_dir)
  if not inv["keys"]:
    raise errors.PipelineError(f"photos: no usable photo in {folder} "
                               f"({len(inv['refused'])} refused, listed above)")
  arrays = _explain(ctx, c, inv, folder)
  io.save_npz(os.path.join(out_dir, "results.npz"), **arrays)
  io.write_json(os.path.join(out_dir, "summary.json"), _summary(arrays, inv))
  ctx.log(f"[photos] {arrays['w'].shape[0]} photos: mean LPIPS {inv['mean_lpips']}, PSNR "
          f"{inv['mean_psnr']} dB, {inv['n_flagged']} flagged; counterfactual success "
          f"{arrays['success'].mean():.2f}; {len(inv['refused'])} refused")


def _explain(ctx, c, inv: dict, folder: str) -> dict:
  """Counterfactuals (and, with true w, the same from the true w) and sweeps."""
  G, clf = ctx.G, ctx.clf
  link = ctx.result("link").link
  data = ctx.result("paired_data")
  per = [io.load_npz(os.path.join(ctx.out_dir(NAME), "invert", f"{k}.npz")) for k in inv["keys"]]
  meta = [io.read_json(os.path.join(ctx.out_dir(NAME), "invert", f"{k}.json")) for k in inv["keys"]]
  w = np.stack([p["w"] for p in per]).astype(np.float32)
  pred_recon = np.array([m["pred_recon"] for m in meta], np.int32)
  a = dict(files=np.array([m["file"] for m in meta]), w=w,
           photo=np.stack([p["photo"] for p in per]), recon=np.stack([p["recon"] for p in per]),
           lpips=np.array([m["lpips"] for m in meta], np.float32),
           psnr=np.array([m["psnr"] for m in meta], np.float32),
           pred_photo=np.array([m["pred_photo"] for m in meta], np.int32),
           pred_recon=pred_recon, match=np.array([m["match"] for m in meta], bool))
  n = w.shape[0]
  a["origin"] = pred_recon
  a["target"] = _targets(str(c.targets), pred_recon, np.asarray(ctx.classes))
  truth = explain.read_truth(folder) or {}
  known = np.array([i for i, f in enumerate(a["files"]) if f in truth], np.int64)
  ws = np.concatenate([w] + [np.stack([truth[a["files"][i]][0] for i in known]).astype(np.float32)]
                      if known.size else [w])
  rows = np.concatenate([np.arange(n), known])    # each start's photo
  r = np.asarray(explain.representation(G, clf, ws))
  shift0 = np.asarray(jax.vmap(lambda i: jax.random.uniform(
      jax.random.fold_in(ctx.key(NAME), i), (clf.feature_dim,)))(np.arange(n)))
  top = min(int(c.top_units), clf.feature_dim)
  res = explain.counterfactuals(
      G, clf, link, ws, r, a["origin"][rows], a["target"][rows], shift0[rows],
      batch=int(c.search_batch), top_units=top, **{f: c[f] for f in SEARCH_FIELDS})
  a.update(success=res["success"][:n], steps=res["steps"][:n], w_after=res["w_after"][:n],
           after=res["img_after"][:n],
           p_target=res["probs_after"][np.arange(n), a["target"]].astype(np.float32),
           top_units=res["top_units"][:n], top_shift=res["top_shift"][:n],
           r_dim=np.int32(clf.feature_dim))
  if known.size:
    moved = explain.moved_units(res["shift"], shift0[rows], top)
    a.update(truth_rows=known, w_true=ws[n:], success_true=res["success"][n:],
             moved_units=moved[known], moved_units_true=moved[n:],
             unit_overlap=explain.overlap(moved[known], moved[n:]))
  k = min(int(c.sweep_units), top)
  if k:
    strips = explain.unit_sweeps(G, link, r[:n], a["top_units"][:, :k], data.r.min(0),
                                 data.r.max(0), int(c.sweep_steps))
    a["sweeps"] = strips
    for i in range(n):
      images.save_png(os.path.join(ctx.out_dir(NAME), "sweeps", f"{i:04d}.png"), _strip(strips[i]))
  return a


def _strip(sweeps: np.ndarray) -> np.ndarray:
  """[k, S, H, W, 3] -> one image: a row of S images per unit."""
  return np.concatenate([images.row(list(s)) for s in sweeps], axis=0)


def _chance(a: dict) -> float:
  """Jaccard of two random k-sets of the D units (k = top_units): k^2/D / (2k - k^2/D)."""
  k, d = a["top_units"].shape[1], int(a["r_dim"])
  inter = k * k / d
  return float(inter / (2 * k - inter))


def _summary(a: dict, inv: dict) -> dict:
  out = dict(n=int(a["w"].shape[0]), mean_lpips=inv["mean_lpips"], mean_psnr=inv["mean_psnr"],
             match_rate=inv["match_rate"], flagged=inv["flagged"], refused=inv["refused"],
             success_rate=float(a["success"].mean()), validation=None)
  if "w_true" in a:
    inv = a["success"][a["truth_rows"]]
    both = inv & a["success_true"]
    out["validation"] = dict(
        n=int(inv.size), success_inverted=float(inv.mean()),
        success_true=float(a["success_true"].mean()),
        same_outcome=float((inv == a["success_true"]).mean()),
        both_reached=float(both.mean()),
        unit_overlap_mean=float(a["unit_overlap"].mean()),
        top_units=int(a["top_units"].shape[1]), chance_overlap=_chance(a))
  return out


def load(workdir: str) -> PhotosResult:
  out_dir = os.path.join(workdir, NAME)
  path = errors.require(os.path.join(out_dir, "results.npz"), NAME)
  return PhotosResult(arrays=io.load_npz(path, finite=False),
                      summary=io.read_json(os.path.join(out_dir, "summary.json")))


# ----------------------------------------------------------------------------- report


def section(ctx) -> str | None:
  """photo | reconstruction | counterfactual, the reconstruction's quality beside each,
  flags where the classifier reads the reconstruction as another class."""
  if not os.path.exists(os.path.join(ctx.out_dir(NAME), "results.npz")):
    return None
  res = ctx.result(NAME)
  a, s = res.arrays, res.summary
  if not s.get("n"):
    return None
  scale = ctx.cfg("report").image_scale
  G = ctx.G
  names = G.class_names if isinstance(G, GroundTruthWorld) else None
  name = (lambda k: f"{names[k]} ({k})") if names else str
  rows = []
  for i in range(min(s["n"], ctx.cfg(NAME).n_show)):
    trio = images.row([a["photo"][i], a["recon"][i], a["after"][i]])
    flag = ("" if a["match"][i] else
            f"FLAGGED: the reconstruction is read as {name(int(a['pred_recon'][i]))}")
    strip = page.img(_strip(a["sweeps"][i]), scale) if "sweeps" in a else ""
    rows.append((page.escape(str(a["files"][i])), page.img(trio, scale),
                 f"{a['lpips'][i]:.4f}", f"{a['psnr'][i]:.1f}", page.escape(name(int(a["pred_photo"][i]))),
                 page.escape(flag or "same class"),
                 page.escape(f"{name(int(a['target'][i]))}: {'reached' if a['success'][i] else 'not reached'}"
                             f" (p {a['p_target'][i]:.2f})"),
                 page.escape(", ".join(str(u) for u in a["top_units"][i][:5])), strip))
  refused = "".join(f"<li>{page.escape(f)}: {page.escape(r)}</li>" for f, r in s["refused"].items())
  val = s.get("validation")
  val_html = "" if not val else (
      f"<p>Validation ({val['n']} photos are renders of known w): the counterfactual reaches its "
      f"target from {val['success_inverted']:.2f} of their inverted w and {val['success_true']:.2f} "
      f"of the true w (same outcome for {val['same_outcome']:.2f}); the {val['top_units']} units "
      f"the two searches moved most overlap by {val['unit_overlap_mean']:.2f} (Jaccard, mean; "
      f"chance {val['chance_overlap']:.2f}).</p>")
  return ("<h2>Photos: inversion and counterfactuals</h2>"
          f"<p><b>{s['n']} photos</b> inverted into W: mean LPIPS {s['mean_lpips']}, PSNR "
          f"{s['mean_psnr']} dB; the classifier gives {len(s['flagged'])} reconstruction(s) "
          f"another class than the photo (flagged: their explanations would be about another "
          f"image); counterfactual success {s['success_rate']:.2f}.</p>" + val_html
          + page.table(["file", "photo | reconstruction | counterfactual", "LPIPS", "PSNR (dB)",
                        "class (photo)", "reconstruction", "counterfactual target",
                        "most shifted units", "their sweeps"], rows, escape_cells=False)
          + (f"<p>Refused files:</p><ul>{refused}</ul>" if refused else ""))


def summary(ctx) -> dict | None:
  if not os.path.exists(os.path.join(ctx.out_dir(NAME), "summary.json")):
    return None
  s = ctx.result(NAME).summary
  return s if s.get("n") else None


def check(ctx) -> None:
  """The folder exists (unless the stage writes it), and the counterfactual's rule: r
  must be a ReLU output (link(relu(r - s)))."""
  c = ctx.cfg(NAME)
  folder = photo_folder(ctx.workdir, c.images) if c.images else ""
  if c.images and not c.renders and not os.path.isdir(folder):
    raise errors.PipelineError(f"photos.images: {folder} is not a directory")
  if c.images and not getattr(ctx.clf, "features_nonnegative", True):
    raise errors.PipelineError(
        f"photos: {ctx.clf.arch}'s feature_layer='{ctx.clf.feature_layer}' r can be negative; "
        f"use --config.feature_layer=penultimate for this classifier")


STAGE = Stage(name=NAME, requires=("paired_data", "link"), default_config=default_config,
              run=run, load=load, uses=("classes", "seed", "psi"), section=section,
              summary=summary, ignores=("batch_size", "search_batch", "n_show"),
              check=check, rules=RULES)
