"""The work of `python -m lis_jax.invert` (see __main__.py): photos in, W and reports out.

Outputs under WORKDIR/invert/ (WORKSPACE.md):
  config.json      what the results depend on (models, settings; not batch size)
  <key>.npz        w [w_dim] float32, photo and recon [H, W, 3] uint8 (checksummed)
  <key>.json       file name, its sha256, lpips, psnr, loss, steps, pred_photo, pred_recon, match
  <key>.png        photo | reconstruction
  summary.json     counts, means, the photos whose reconstruction the classifier reads
                   as another class (`flagged`), the refused files and why
`<key>` is `photos.photo_key(file name)`. A photo is done when its .json names the
same file content (sha256) and its .npz verifies; everything is written atomically.
"""
from __future__ import annotations

import os
import sys
from typing import Iterator

import jax
import numpy as np
from tqdm import tqdm

from lis_jax import errors
from lis_jax import images
from lis_jax import io
from lis_jax import lpips
from lis_jax import context
from lis_jax import spec
from lis_jax.invert import photos
from lis_jax.invert import projector as proj

OUT = "invert"
NOT_FINGERPRINTED = ("batch_size", "chunk_steps", "max_pixels")  # results do not depend on them
LPIPS_HINT = "python -m converters.lpips --vgg vgg16.pth --out {path}"
RANDOM_LPIPS = "random"
RANDOM_LPIPS_WIDTH_DIVISOR = 8  # a 1/8-width random VGG16: cheap, and only a texture prior


def settings(config, overrides: dict):
  """The inversion's settings: `projector.default_config()` plus the CLI's own fields,
  then `config.invert` (if the config has that section), then `overrides` (the flags)."""
  c = proj.default_config()
  c.lpips = "checkpoints/lpips_vgg16"  # python -m converters.lpips --vgg vgg16.pth --out ...
  c.max_pixels = photos.MAX_PIXELS     # larger photos are refused (checked from the header)
  c.seed = 0                           # noise keys and the class statistics' z samples
  c.update(dict(config.get("invert", {})))
  c.update(overrides)
  for name in ("num_steps", "batch_size", "w_avg_samples", "class_top_k", "chunk_steps",
               "max_pixels", "restarts"):
    if int(c[name]) < 1:
      raise errors.PipelineError(f"invert.{name} must be >= 1, got {c[name]}")
  return c


def load_lpips(spec: str, workdir: str, seed: int) -> tuple[lpips.LPIPS, str]:
  """The LPIPS named by `spec` and its identity for the fingerprint."""
  if spec == RANDOM_LPIPS:
    key = jax.random.key(seed)
    return (lpips.random_lpips(key, RANDOM_LPIPS_WIDTH_DIVISOR),
            f"random vgg16/{RANDOM_LPIPS_WIDTH_DIVISOR} seed {seed}")
  path = context.resolve_path(workdir, spec)
  if not os.path.exists(path):
    raise errors.PipelineError(f"LPIPS checkpoint not found: {path}; convert it first: "
                               f"{LPIPS_HINT.format(path=path)} (or --lpips=random)")
  return lpips.load(path), io.params_sha256(path)


def fingerprint(config, settings, G, lpips_id: str) -> dict:
  return dict(generator=str(config.generator), classifier=str(config.classifier),
              resolution=int(G.resolution), lpips=lpips_id,
              invert={k: v for k, v in settings.to_dict().items() if k not in NOT_FINGERPRINTED})


def check_fingerprint(out_dir: str, fp: dict) -> None:
  """Records `fp` in out_dir/config.json, or refuses a workdir written with another one."""
  path = os.path.join(out_dir, "config.json")
  if io.create_json(path, fp):
    return
  old = io.read_json_checked(path, "invert config")
  flat_old, flat_new = spec.flat_dict(old), spec.flat_dict(fp)
  diffs = [f"{k}: {flat_old.get(k)!r} -> {flat_new.get(k)!r}"
           for k in sorted(set(flat_old) | set(flat_new)) if flat_old.get(k) != flat_new.get(k)]
  if diffs:
    raise errors.PipelineError(f"{out_dir} was written by a different config ({'; '.join(diffs[:3])}); "
                               "use another --workdir or delete that directory")


def is_done(out_dir: str, key: str, sha: str) -> bool:
  try:
    meta = io.read_json(os.path.join(out_dir, f"{key}.json"))
  except (OSError, ValueError):
    return False
  return (isinstance(meta, dict) and meta.get("sha256") == sha
          and io.npz_ok(os.path.join(out_dir, f"{key}.npz"))
          and os.path.isfile(os.path.join(out_dir, f"{key}.png")))


def _display(path: str) -> str:
  name = os.path.basename(path)
  return name if name.isprintable() else ascii(name)


def run(config, settings, workdir: str, images_dir: str) -> int:
  """Inverts every usable photo of `images_dir` not done yet; returns the exit code."""
  if not os.path.isdir(images_dir):
    raise errors.PipelineError(f"--images {images_dir} is not a directory")
  os.makedirs(workdir, exist_ok=True)
  with io.workdir_lock(workdir):
    G, clf = context.load_models(config, workdir)
    P, lpips_id = load_lpips(str(settings.lpips), workdir, int(settings.seed))
    out_dir = os.path.join(workdir, OUT)
    os.makedirs(out_dir, exist_ok=True)
    check_fingerprint(out_dir, fingerprint(config, settings, G, lpips_id))
    summary = invert_folder(G, clf, P, settings, images_dir, out_dir)
  print(f"inverted {summary['n_done']} photos into {out_dir}: mean LPIPS {summary['mean_lpips']}, "
        f"PSNR {summary['mean_psnr']} dB; {summary['n_flagged']} flagged (reconstruction "
        f"classified differently)", file=sys.stderr)
  if summary["refused"]:
    print(f"error: {len(summary['refused'])} of {summary['n_files']} files refused (listed "
          f"above); the others were processed", file=sys.stderr)
    return 1
  return 0


def invert_folder(G, clf, P, settings, images_dir: str, out_dir: str) -> dict:
  """Inverts the photos of `images_dir` not done yet in `out_dir` (layout above); refuses
  bad files with one line each on stderr; writes and returns summary.json's dict.
  Shared by the command line and the `photos` stage."""
  files = photos.list_photos(images_dir)
  refused: dict[str, str] = {}
  todo = []
  for path in files:
    key = photos.photo_key(path)
    try:
      sha = photos.file_sha256(path)
    except OSError as e:
      refused[_display(path)] = f"cannot read: {e.strerror or e}"
      print(f"refused {_display(path)}: {refused[_display(path)]}", file=sys.stderr)
      continue
    if not is_done(out_dir, key, sha):
      todo.append((path, key, sha))
  print(f"{len(files)} files in {images_dir}: {len(files) - len(todo) - len(refused)} done "
        f"before, {len(todo)} to read and invert", file=sys.stderr)
  stats = proj.StatsCache(G, int(settings.w_avg_samples),
                          jax.random.fold_in(jax.random.key(int(settings.seed)), 1))
  bar = tqdm(total=len(todo), desc="invert", unit="photo", file=sys.stderr)
  for batch in _batches(todo, G.resolution, settings, refused, bar):
    _invert_batch(G, clf, P, batch, settings, stats, out_dir, bar)
  bar.close()
  summary = _summary(out_dir, files, refused)
  io.write_json(os.path.join(out_dir, "summary.json"), summary)
  return summary


def _batches(todo, resolution: int, settings, refused: dict, bar) -> Iterator[list]:
  """Reads photos lazily into batches of `settings.batch_size`; refuses bad ones."""
  batch = []
  for path, key, sha in todo:
    try:
      img = photos.read_photo(path, resolution, int(settings.max_pixels))
    except photos.PhotoError as e:
      refused[_display(path)] = str(e)
      bar.write(f"refused {_display(path)}: {e}", file=sys.stderr)
      bar.update(1)
      continue
    batch.append((path, key, sha, img))
    if len(batch) == int(settings.batch_size):
      yield batch
      batch = []
  if batch:
    yield batch


def _invert_batch(G, clf, P, batch, settings, stats, out_dir: str, bar) -> None:
  targets = np.stack([b[3] for b in batch])
  root = jax.random.fold_in(jax.random.key(int(settings.seed)), 0)
  keys = jax.numpy.stack([jax.random.fold_in(root, int(b[2][:7], 16)) for b in batch])
  res = proj.project(G, clf, P, targets, key=root, config=settings, keys=keys, stats=stats,
                     progress=bar.update)
  recon = images.render(G, res.w)
  for i, (path, key, sha, img) in enumerate(batch):
    photo = images.to_uint8(img)
    io.save_npz(os.path.join(out_dir, f"{key}.npz"), w=res.w[i], photo=photo, recon=recon[i])
    images.save_png(os.path.join(out_dir, f"{key}.png"), images.row([photo, recon[i]]))
    io.write_json(os.path.join(out_dir, f"{key}.json"), dict(
        file=os.path.basename(path), sha256=sha, lpips=float(res.lpips[i]),
        psnr=float(res.psnr[i]), loss=float(res.loss[i]), steps=int(res.steps[i]),
        pred_photo=int(res.pred_photo[i]), pred_recon=int(res.pred_recon[i]),
        match=bool(res.match[i])))


def _summary(out_dir: str, files: list[str], refused: dict) -> dict:
  rows, keys = [], []
  for path in files:
    try:
      meta = io.read_json(os.path.join(out_dir, f"{photos.photo_key(path)}.json"))
    except (OSError, ValueError):
      continue
    rows.append(meta)
    keys.append(photos.photo_key(path))
  mean = lambda k: round(float(np.mean([r[k] for r in rows])), 4) if rows else None
  flagged = [r["file"] for r in rows if not r["match"]]
  return dict(n_files=len(files), n_done=len(rows), mean_lpips=mean("lpips"),
              mean_psnr=mean("psnr"), match_rate=mean("match"), n_flagged=len(flagged),
              flagged=flagged, refused=refused, keys=keys)
