"""The labeller page: `lis_jax/assets/labeller.html` with the images, part names and
starting masks embedded as JSON, so the written `label.html` needs no server or network.
"""
from __future__ import annotations

import base64
import os
from typing import Sequence

import numpy as np

from lis_jax import io
from lis_jax import page as lis_page

TEMPLATE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "labeller.html")
PLACEHOLDER = "__LIS_DATA__"


def rle(labels: np.ndarray) -> list[int]:
  """[H, W] ints -> [value, run length, value, run length, ...] in row-major order."""
  flat = np.asarray(labels).reshape(-1)
  starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
  lengths = np.diff(np.r_[starts, flat.size])
  return np.stack([flat[starts], lengths], 1).reshape(-1).astype(int).tolist()


def item(name: str, png: bytes, size: int, start: np.ndarray | None = None,
         status: str = "new") -> dict:
  """One image of the page: its PNG bytes, side, optional starting mask [s, s] and status."""
  out = {"name": name, "size": int(size), "status": status,
         "src": "data:image/png;base64," + base64.b64encode(png).decode()}
  if start is not None:
    out["mask"] = {"size": int(start.shape[0]), "rle": rle(start)}
  return out


def render(items: Sequence[dict], part_names: Sequence[str], title: str = "lis_jax labeller") -> str:
  """The page's HTML with `items` (see `item`) and `part_names` embedded."""
  with open(TEMPLATE, encoding="utf-8") as f:
    html = f.read()
  # <, >, & and U+2028/9 as JSON escapes: no name can close the <script> block or put the
  # HTML parser into a comment / double-escaped state (`<!--<script>`).
  data = lis_page.script_json({"title": str(title), "parts": [str(p) for p in part_names],
                               "images": list(items)})
  return html.replace(PLACEHOLDER, data, 1)


def write(path: str, items: Sequence[dict], part_names: Sequence[str]) -> None:
  with io.atomic_file(path, "w") as f:
    f.write(render(items, part_names))
