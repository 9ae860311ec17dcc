"""`python -m lis_jax.label import`: masks from the labeller or other tools -> labels/<name>.npy.

Every mask is read and checked before anything is written, so a bad file (its path is
in the one-line error) leaves the label directory as it was.
"""
from __future__ import annotations

import json
import os
from typing import Mapping

import numpy as np

from lis_jax import io
from lis_jax.label import layout, masks


def read_colours(path: str | None) -> dict | None:
  """A colour table file {part name: '#rrggbb' | [r, g, b]} (None: the labeller's palette)."""
  if not path:
    return None
  try:
    with open(path, encoding="utf-8") as f:
      table = json.load(f)
  except RecursionError:
    raise masks.LabelError(f"{path}: cannot read the colour table (nested too deeply)") from None
  except (OSError, ValueError) as e:
    raise masks.LabelError(f"{path}: cannot read the colour table ({e})") from None
  if not isinstance(table, dict):
    raise masks.LabelError(f"{path}: expected {{part name: colour}}, got {type(table).__name__}")
  for name, value in table.items():
    masks.parse_colour(path, value)  # null, nested lists, ...: one line before any mask is read
  return table


def import_masks(d: layout.LabelDir, source: str | None = None, fmt: str = "auto",
                 colours: Mapping[str, object] | None = None) -> list[str]:
  """Reads every mask under `source` (default d/masks), writes d/labels/<name>.npy.

  Masks must be the exported image's size or quantify.resolution (checked from each file's
  header before its pixels are read); they are resampled with
  nearest neighbour to quantify.resolution. Returns the names imported.
  Raises:
    masks.LabelError: naming the file: unreadable, unknown colour, a label outside
      part_names.json, size mismatch, no latent (w/<name>.npy) for it, an empty mask,
      or no masks at all.
  """
  meta = layout.read_export(d)
  part_names = layout.read_part_names(d)
  source = source or d.masks
  res, sizes = int(meta["resolution"]), (int(meta["image_size"]), int(meta["resolution"]))
  found = masks.collect(source, fmt, part_names, colours, sizes)
  if not found:
    raise masks.LabelError(f"{source}: no masks found (.png, LabelMe .json, or a CVAT export "
                           f"directory with {masks.CVAT_LABELMAP})")
  out = {}
  for name, (path, read) in found.items():
    if not os.path.exists(d.w(name)):
      raise masks.LabelError(f"{path}: no latent for image {name!r} ({d.w(name)} missing); masks "
                             f"are matched to exported images by file name")
    labels = read()
    masks.check_mask(path, labels, sizes)
    out[name] = masks.resample_nearest(labels, res).astype(np.int32)
  for name, labels in out.items():
    with io.atomic_file(d.labels(name)) as f:
      np.save(f, labels)
  return sorted(out)
