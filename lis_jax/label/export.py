"""`python -m lis_jax.label export`: seeded images to label, their ws, part names, the page.

Image `s<i>_c<class>` is `G.synthesis(G.mapping(z, class, psi))` with
`z = normal(ctx.key("label", class, i))` (the run context's named stream 'label'):
the same image for the same config whatever the batch size, and exporting more images
later (a larger --n) keeps the ones already written. Files are written per batch, ws last
(existence of w/<name>.npy = done), so a killed export resumes.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from lis_jax import context, errors, images, io, memory, spec
from lis_jax.generators import base
from lis_jax.label import layout, masks, page

# Starting part lists for the paper's class groups (edit part_names.json before labelling).
GROUP_PARTS: dict[str, tuple[str, ...]] = spec.SEG_LABELS   # the reference's lists
PLACEHOLDER_PARTS = ("background", "part_1")
# Labelling is by hand (tens to hundreds of images); past this many the list of names alone
# is a memory problem (--n=1e8 with two classes: 2e8 names). Export more later: a larger
# --n keeps the images already written.
MAX_EXPORT_IMAGES = 1_000_000
# Images per generator call; a [1e6, 3, 256, 256] float32 batch is 98 GB.
MAX_BATCH = 1024


def check_counts(n: int, batch_size: int, n_classes: int) -> None:
  """Refuses --n / --batch_size before anything is loaded or written (one line)."""
  if not isinstance(n, int) or n < 1:
    raise errors.PipelineError(f"--n={n}: export at least one image per class")
  if n * n_classes > MAX_EXPORT_IMAGES:
    raise errors.PipelineError(f"--n={n}: {n} x {n_classes} classes = {n * n_classes} images to "
                               f"label by hand; at most {MAX_EXPORT_IMAGES} per export (a later, "
                               f"larger --n keeps the images already written)")
  if not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH:
    raise errors.PipelineError(f"--batch_size={batch_size}: expected 1..{MAX_BATCH} images per "
                               f"generator call")


def names_in_order(classes: Sequence[int], n: int) -> list[str]:
  """n names per class, interleaved: s0000_c<a>, s0000_c<b>, ..., s0001_c<a>, ..."""
  return [layout.image_name(i, int(c)) for i in range(n) for c in classes]


def starting_parts(config: ml_collections.ConfigDict, G: Any, classes: np.ndarray) -> tuple[str, ...]:
  """The world's own parts, a class group's list, or background + a placeholder."""
  if isinstance(G, base.GroundTruthWorld):
    return tuple(G.part_names)
  given = config.classes   # not `spec`: that is the module
  group = given if isinstance(given, str) and given in GROUP_PARTS else next(
      (g for g, ids in spec.CLASS_GROUPS.items() if sorted(ids) == sorted(classes.tolist())), None)
  return GROUP_PARTS.get(group, PLACEHOLDER_PARTS)


@functools.partial(jax.jit, static_argnames=("small",))
def _generate(G, key, cls, idx, psi, small):
  """[B] classes and indices -> (ws [B, num_ws, w_dim], uint8 images [B, H, W, 3] and
  [B, small, small, 3]); z of (class c, index i) = normal(fold_in(fold_in(key, c), i))."""
  from lis_jax.quantify import segment
  z = jax.vmap(lambda c, i: jax.random.normal(
      jax.random.fold_in(jax.random.fold_in(key, c), i), (G.z_dim,)))(cls, idx)
  ws = G.mapping(z, cls, psi=psi)
  img = G.synthesis(ws)
  return ws, images.to_uint8(img), images.to_uint8(segment.resize_images(img, small))


def _generate_rows(G, key, psi, rows, small):
  """`_generate` with (classes, indices) as one batch of rows (memory.choose_batch's form)."""
  return _generate(G, key, rows[0], rows[1], psi, small)


def _write(path: str, data: bytes) -> None:
  with io.atomic_file(path, "wb") as f:
    f.write(data)


def export(ctx: context.RunContext, n: int, batch_size: int = 16) -> layout.LabelDir:
  """Writes n images per class of config.classes into config.quantify.labels (resumable).

  Models come from the run context (the pipeline's loader). Returns the label directory.
  Raises PipelineError for a bad config or a directory exported with a different
  generator / classes / psi / seed / resolution.
  """
  check_counts(n, batch_size, len(ctx.classes))
  c = ctx.cfg("quantify")
  d = layout.label_dir(c.labels, ctx.workdir)
  G, classes, config = ctx.G, ctx.classes, ctx.config
  res = int(c.resolution or G.resolution)
  # The generator by content (its weights' sha256), not by path: a moved checkpoint is the
  # same generator, a replaced one at the same path is not.
  context.check_stage_config(d.root, {"generator": ctx.uses_value("generator"),
                                       "classes": classes.tolist(), "psi": config.psi,
                                       "seed": config.seed, "resolution": res})
  names = names_in_order(classes, n)
  todo = [(i, int(k)) for i in range(n) for k in classes
          if not os.path.exists(d.w(layout.image_name(i, int(k))))]
  key = ctx.key("label")
  batch_size = max(1, min(batch_size, len(todo)))  # fixed shapes; no padding past the work
  if todo:   # the most images per call that fit the memory (the same images at any batch)
    batch_size = memory.choose_batch(
        functools.partial(_generate_rows, small=res), (jax.ShapeDtypeStruct((batch_size,), np.int32),) * 2,
        batch_size, G, key, jnp.float32(config.psi), budget=ctx.budget, call="export",
        setting="--batch_size", stage="label export").batch
  for s in tqdm(range(0, len(todo), batch_size), desc="[label] export", unit="batch",
                disable=not todo):
    chunk = todo[s:s + batch_size]
    pad = chunk + [chunk[-1]] * (batch_size - len(chunk))  # fixed shapes: one compile
    ws, full, small = _generate(G, key, jnp.asarray([k for _, k in pad], jnp.int32),
                                jnp.asarray([i for i, _ in pad], jnp.int32), config.psi, res)
    ws, full, small = np.asarray(ws), np.asarray(full), np.asarray(small)
    for j, (i, k) in enumerate(chunk):
      name = layout.image_name(i, k)
      _write(d.image(name), images.png_bytes(full[j]))
      _write(d.image_small(name), images.png_bytes(small[j]))
      with io.atomic_file(d.w(name)) as f:
        np.save(f, ws[j].astype(np.float32))
      errors.maybe_interrupt("label_export", s + j + 1)
  if not os.path.exists(d.part_names_file):
    io.write_json(d.part_names_file, list(starting_parts(config, G, classes)))
  old = io.read_json(d.export_file)["names"] if os.path.exists(d.export_file) else []
  all_names = names + [m for m in old if m not in names]
  io.write_json(d.export_file, {"names": all_names, "image_size": int(G.resolution),
                                "resolution": res, "classes": classes.tolist(), "n_per_class": n})
  write_page(d)
  return d


def write_page(d: layout.LabelDir) -> int:
  """(Re)writes label.html: every exported image, starting from its imported labels, else
  its suggestion, else empty. Returns the number of images on the page."""
  meta = layout.read_export(d)
  part_names = layout.read_part_names(d)
  items = []
  for name in meta["names"]:
    with open(d.image(name), "rb") as f:
      png = f.read()
    start, status = None, "new"
    if os.path.exists(d.labels(name)):
      start, status = layout.load_array(d.labels(name), "iu"), "labelled"
    elif os.path.exists(d.suggestion(name)):
      sizes = (int(meta["image_size"]), int(meta["resolution"]))
      start, status = np.asarray(masks.open_png(d.suggestion(name), sizes)), "suggested"
    if start is not None:
      start = np.where(start < len(part_names), start, 0)  # part_names.json may have shrunk
    items.append(page.item(name, png, meta["image_size"], start, status))
  page.write(d.page, items, part_names)
  return len(items)
