"""Part masks in, integer label maps out: the readers behind `python -m lis_jax.label import`.

Every reader returns one `[H, W]` int32 map of part indices (0 = background, index =
position in `part_names.json`) for one image, and raises `LabelError` with the file's
path in its one-line message for anything it cannot read unambiguously.

Formats (`read_mask` picks by file, `collect` by directory):
  * indexed PNG (palette mode 'P', or grayscale 'L' / 'I'): the pixel value is the part
    index (the labeller page saves these);
  * RGB(A) PNG with one colour per part: colours are the labeller's palette
    (`palette`, the PASCAL VOC colour map) unless a colour table is given
    ({part name: [r, g, b] or "#rrggbb"}); alpha is ignored;
  * LabelMe JSON: `shapes` of type polygon / rectangle / circle with a `label` each, drawn
    in file order (a later shape covers an earlier one) on an `imageHeight x imageWidth`
    background;
  * CVAT "Segmentation mask" export (a directory holding `labelmap.txt` and
    `SegmentationClass/<name>.png`): RGB masks whose colours `labelmap.txt` names.
"""
from __future__ import annotations

import json
import os
import re
from typing import Callable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from lis_jax import errors

FORMATS = ("auto", "indexed", "rgb", "labelme", "cvat")
CVAT_LABELMAP = "labelmap.txt"
CVAT_MASK_DIR = "SegmentationClass"
# A browser saving "x.png" twice names the second "x (1).png": the newest copy wins.
_DOWNLOAD_COPY = re.compile(r"^(.*) \((\d+)\)$")


class LabelError(errors.PipelineError):
  """A mask file that cannot be imported; the message names the file."""


def palette(n: int) -> np.ndarray:
  """The PASCAL VOC colour map: [n, 3] uint8, index 0 black, 1 (128, 0, 0), 2 (0, 128, 0), ...

  Colour of part i: bits 0, 1, 2 of i go to the top bits of red, green, blue, then
  bits 3, 4, 5 to the next bits down, and so on (the labeller page computes the same).
  """
  out = np.zeros((n, 3), np.uint8)
  for i in range(n):
    c, r, g, b = i, 0, 0, 0
    for shift in range(7, -1, -1):
      r |= (c & 1) << shift
      g |= ((c >> 1) & 1) << shift
      b |= ((c >> 2) & 1) << shift
      c >>= 3
    out[i] = (r, g, b)
  return out


def parse_colour(path: str, value) -> tuple[int, int, int]:
  """'#rrggbb', 'r,g,b' or [r, g, b] -> (r, g, b); LabelError naming `path` otherwise."""
  try:
    if isinstance(value, str) and value.startswith("#") and len(value) == 7:
      rgb = tuple(int(value[i:i + 2], 16) for i in (1, 3, 5))
    elif isinstance(value, str):
      rgb = tuple(int(v) for v in value.split(","))
    else:
      rgb = tuple(int(v) for v in value)
  except ValueError:
    rgb = ()
  if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
    raise LabelError(f"{path}: colour {value!r} is not '#rrggbb', 'r,g,b' or [r, g, b]")
  return rgb  # type: ignore[return-value]


def colour_table(part_names: Sequence[str], colours: Mapping[str, object] | None = None,
                 path: str = "colour table") -> dict[tuple[int, int, int], int]:
  """(r, g, b) -> part index: the palette, with `colours` ({part name: colour}) overriding."""
  table = {tuple(int(v) for v in c): i for i, c in enumerate(palette(len(part_names)))}
  if colours:
    unknown = [n for n in colours if n not in part_names]
    if unknown:
      raise LabelError(f"{path}: label(s) {unknown} not in part_names.json ({', '.join(part_names)})")
    table = {rgb: i for rgb, i in table.items() if part_names[i] not in colours}
    for name, value in colours.items():
      table[parse_colour(path, value)] = part_names.index(name)
  return table


# ----------------------------------------------------------------------------- readers


def _open_png(path: str) -> Image.Image:
  try:
    img = Image.open(path)
    img.load()
  except (OSError, SyntaxError, ValueError) as e:
    raise LabelError(f"{path}: not a readable image ({e})") from None
  return img


def _check_indices(path: str, labels: np.ndarray, n_parts: int) -> np.ndarray:
  bad = (labels < 0) | (labels >= n_parts)
  if bad.any():
    y, x = np.argwhere(bad)[0]
    raise LabelError(f"{path}: label {int(labels[y, x])} at pixel (x={x}, y={y}) is outside "
                     f"part_names.json (0..{n_parts - 1})")
  return labels.astype(np.int32)


def rgb_to_labels(path: str, rgb: np.ndarray, table: Mapping[tuple[int, int, int], int]) -> np.ndarray:
  """[H, W, 3] uint8 colours -> [H, W] int32 part indices through `table`; unknown colours raise."""
  code = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
  keys = np.array([(r << 16) | (g << 8) | b for r, g, b in table], np.int64)
  vals = np.array(list(table.values()), np.int32)
  order = np.argsort(keys)
  keys, vals = keys[order], vals[order]
  pos = np.clip(np.searchsorted(keys, code), 0, len(keys) - 1)
  known = keys[pos] == code
  if not known.all():
    y, x = np.argwhere(~known)[0]
    r, g, b = (int(v) for v in rgb[y, x, :3])
    n = int((~known).sum())
    raise LabelError(f"{path}: unknown colour ({r}, {g}, {b}) at pixel (x={x}, y={y}) "
                     f"({n} pixels); known: {_describe(table)}")
  return vals[pos]


def _describe(table: Mapping[tuple[int, int, int], int]) -> str:
  return ", ".join(f"{i}=({r},{g},{b})" for (r, g, b), i in sorted(table.items(), key=lambda t: t[1]))


def read_png(path: str, part_names: Sequence[str],
             colours: Mapping[str, object] | None = None) -> np.ndarray:
  """An indexed / grayscale PNG (values = part indices) or an RGB(A) one (colour per part)."""
  img = _open_png(path)
  if img.mode in ("P", "L", "I", "I;16"):
    return _check_indices(path, np.asarray(img).astype(np.int64), len(part_names))
  if img.mode in ("RGB", "RGBA"):
    return rgb_to_labels(path, np.asarray(img)[..., :3], colour_table(part_names, colours))
  raise LabelError(f"{path}: image mode {img.mode!r} is neither indexed (P, L) nor RGB")


def read_labelme(path: str, part_names: Sequence[str]) -> np.ndarray:
  """A LabelMe JSON file -> [imageHeight, imageWidth] label map, shapes drawn in file order."""
  try:
    with open(path) as f:
      doc = json.load(f)
    h, w = int(doc["imageHeight"]), int(doc["imageWidth"])
    shapes = list(doc.get("shapes") or [])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise LabelError(f"{path}: not a LabelMe JSON file with imageHeight, imageWidth and shapes "
                     f"({type(e).__name__}: {e})") from None
  canvas = Image.new("I", (w, h), 0)
  draw = ImageDraw.Draw(canvas)
  for k, shape in enumerate(shapes):
    label = shape.get("label")
    if label not in part_names:
      raise LabelError(f"{path}: shape {k} has label {label!r}, which is not in part_names.json "
                       f"({', '.join(part_names)})")
    kind = shape.get("shape_type") or "polygon"
    pts = [tuple(float(v) for v in p) for p in shape.get("points", [])]
    value = part_names.index(label)
    if kind == "polygon" and len(pts) >= 3:
      draw.polygon(pts, fill=value)
    elif kind == "rectangle" and len(pts) == 2:
      (x0, y0), (x1, y1) = pts
      draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=value)
    elif kind == "circle" and len(pts) == 2:
      (cx, cy), (px, py) = pts
      r = float(np.hypot(px - cx, py - cy))
      draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=value)
    else:
      raise LabelError(f"{path}: shape {k} ({label!r}) is a {kind} with {len(pts)} points; "
                       f"only polygons (>= 3 points), rectangles and circles are read")
  return np.asarray(canvas).astype(np.int32)


def read_cvat_labelmap(path: str, part_names: Sequence[str]) -> dict[tuple[int, int, int], int]:
  """CVAT's labelmap.txt ('name:r,g,b:parts:actions' lines) -> (r, g, b) -> part index."""
  table: dict[tuple[int, int, int], int] = {}
  try:
    with open(path) as f:
      lines = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
  except OSError as e:
    raise LabelError(f"{path}: cannot read ({e})") from None
  for ln in lines:
    name, _, rest = ln.partition(":")
    rgb = parse_colour(path, rest.split(":")[0])
    if name not in part_names:
      raise LabelError(f"{path}: label {name!r} is not in part_names.json ({', '.join(part_names)})")
    table[rgb] = part_names.index(name)
  if not table:
    raise LabelError(f"{path}: no labels")
  return table


# ----------------------------------------------------------------------------- collecting


def mask_name(path: str) -> str:
  """The image name a mask file belongs to: its stem, without a browser's ' (k)' copy suffix."""
  stem = os.path.splitext(os.path.basename(path))[0]
  m = _DOWNLOAD_COPY.match(stem)
  return m.group(1) if m else stem


def collect(path: str, fmt: str, part_names: Sequence[str],
            colours: Mapping[str, object] | None = None) -> dict[str, tuple[str, Callable[[], np.ndarray]]]:
  """Mask files under `path` (a directory or one file) -> {image name: (file, reader)}.

  fmt: 'auto' (CVAT if `path` holds labelmap.txt, else by extension: .json LabelMe,
  .png indexed or RGB by the image mode), or one of FORMATS to insist on.
  Of several browser copies of one name ('x.png', 'x (1).png') the newest file wins.
  """
  if fmt not in FORMATS:
    raise LabelError(f"--format={fmt!r}: expected one of {', '.join(FORMATS)}")
  if not os.path.exists(path):
    raise LabelError(f"{path}: no such file or directory")
  if os.path.isdir(path) and (fmt == "cvat" or (fmt == "auto" and
                                                os.path.exists(os.path.join(path, CVAT_LABELMAP)))):
    return _collect_cvat(path, part_names)
  if fmt == "cvat":
    raise LabelError(f"{path}: a CVAT export is a directory with {CVAT_LABELMAP} and {CVAT_MASK_DIR}/")
  files = ([os.path.join(path, f) for f in sorted(os.listdir(path))] if os.path.isdir(path) else [path])
  want = {"indexed": (".png",), "rgb": (".png",), "labelme": (".json",), "auto": (".png", ".json")}[fmt]
  files = [f for f in files if f.lower().endswith(want) and os.path.isfile(f)]
  newest: dict[str, str] = {}
  for f in sorted(files, key=os.path.getmtime):
    newest[mask_name(f)] = f
  out = {}
  for name, f in sorted(newest.items()):
    if f.lower().endswith(".json"):
      out[name] = (f, lambda f=f: read_labelme(f, part_names))
    elif fmt == "indexed":
      out[name] = (f, lambda f=f: _read_indexed_only(f, part_names))
    elif fmt == "rgb":
      out[name] = (f, lambda f=f: rgb_to_labels(f, np.asarray(_open_png(f).convert("RGB")),
                                                 colour_table(part_names, colours)))
    else:
      out[name] = (f, lambda f=f: read_png(f, part_names, colours))
  return out


def _read_indexed_only(path: str, part_names: Sequence[str]) -> np.ndarray:
  img = _open_png(path)
  if img.mode not in ("P", "L", "I", "I;16"):
    raise LabelError(f"{path}: --format=indexed but the PNG is {img.mode} (use --format=rgb)")
  return _check_indices(path, np.asarray(img).astype(np.int64), len(part_names))


def _collect_cvat(path: str, part_names: Sequence[str]) -> dict:
  table = read_cvat_labelmap(os.path.join(path, CVAT_LABELMAP), part_names)
  mask_dir = os.path.join(path, CVAT_MASK_DIR)
  if not os.path.isdir(mask_dir):
    raise LabelError(f"{path}: CVAT export without {CVAT_MASK_DIR}/")
  out = {}
  for f in sorted(os.listdir(mask_dir)):
    if f.lower().endswith(".png"):
      full = os.path.join(mask_dir, f)
      out[mask_name(full)] = (full, lambda full=full: rgb_to_labels(
          full, np.asarray(_open_png(full).convert("RGB")), table))
  return out


def indexed_png(labels: np.ndarray, n_parts: int) -> bytes:
  """[H, W] part indices -> PNG bytes, palette mode with the labeller's colours."""
  import io as _io
  labels = np.ascontiguousarray(labels, np.uint8)
  img = Image.frombytes("P", labels.shape[::-1], labels.tobytes())
  img.putpalette(palette(max(n_parts, 1)).reshape(-1).tolist())
  buf = _io.BytesIO()
  img.save(buf, "PNG")
  return buf.getvalue()


# ----------------------------------------------------------------------------- checks


def resample_nearest(labels: np.ndarray, size: int) -> np.ndarray:
  """[H, W] -> [size, size] by nearest neighbour: output pixel i takes input floor((i + 0.5) H / size)."""
  h, w = labels.shape
  rows = np.minimum(((np.arange(size) + 0.5) * h / size).astype(np.int64), h - 1)
  cols = np.minimum(((np.arange(size) + 0.5) * w / size).astype(np.int64), w - 1)
  return labels[rows[:, None], cols[None, :]]


def check_mask(path: str, labels: np.ndarray, sizes: Sequence[int]) -> None:
  """Refuses a mask of another size than the image's (any of `sizes`) or one with no part painted."""
  if labels.ndim != 2 or labels.shape[0] != labels.shape[1] or labels.shape[0] not in sizes:
    shape = " x ".join(str(s) for s in labels.shape[::-1])
    want = " or ".join(f"{s} x {s}" for s in sorted(set(sizes), reverse=True))
    raise LabelError(f"{path}: size mismatch: the mask is {shape} but its image is {want}")
  if not labels.any():
    raise LabelError(f"{path}: empty mask (every pixel is background, no part labelled)")
