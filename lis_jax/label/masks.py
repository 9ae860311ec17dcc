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
import warnings
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
    elif isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool)
                                                  for v in value):
      rgb = tuple(value)
    else:
      rgb = ()
  except (ValueError, TypeError):
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
      _add_colour(path, table, parse_colour(path, value), part_names.index(name), part_names)
  return table


def _add_colour(path: str, table: dict, rgb: tuple[int, int, int], index: int,
                part_names: Sequence[str]) -> None:
  """table[rgb] = index; LabelError if `rgb` already stands for another part (one colour
  for two parts would import all of one as the other)."""
  other = table.get(rgb)
  if other is not None and other != index:
    raise LabelError(f"{path}: colour {rgb} is given to both {part_names[other]!r} and "
                     f"{part_names[index]!r}; each part needs its own colour")
  table[rgb] = index


# ----------------------------------------------------------------------------- readers


# The largest mask read when no image size is known: PIL's own decompression-bomb limit
# (89 Mpx); with the exported image's size known, only that size (or quantify's) is read.
MAX_MASK_PIXELS = Image.MAX_IMAGE_PIXELS


def check_size(path: str, width: int, height: int, sizes: Sequence[int] | None) -> None:
  """Refuses a declared mask size other than the image's (any of `sizes`, square), or more
  than MAX_MASK_PIXELS when no size is known; called before any pixel is allocated."""
  if sizes:
    if width != height or width not in sizes:
      want = " or ".join(f"{s} x {s}" for s in sorted(set(sizes), reverse=True))
      raise LabelError(f"{path}: size mismatch: the mask is {width} x {height} but its image is {want}")
  elif width < 1 or height < 1 or width * height > (MAX_MASK_PIXELS or 1 << 30):
    raise LabelError(f"{path}: a {width} x {height} mask is beyond the {MAX_MASK_PIXELS} pixels read")


def _open_png(path: str, sizes: Sequence[int] | None = None) -> Image.Image:
  try:
    with warnings.catch_warnings():        # PIL's bomb warning: check_size decides instead
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      img = Image.open(path)               # reads the header only
    check_size(path, *img.size, sizes)     # before the pixels are decoded
    img.load()
  except Image.DecompressionBombError as e:
    raise LabelError(f"{path}: image too large to read ({e})") from None
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


open_png = _open_png  # public: a PNG whose declared size is checked before it is decoded


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
             colours: Mapping[str, object] | None = None,
             sizes: Sequence[int] | None = None) -> np.ndarray:
  """An indexed / grayscale PNG (values = part indices) or an RGB(A) one (colour per part)."""
  img = _open_png(path, sizes)
  if img.mode in ("P", "L", "I", "I;16"):
    return _check_indices(path, np.asarray(img).astype(np.int64), len(part_names))
  if img.mode in ("RGB", "RGBA"):
    return rgb_to_labels(path, np.asarray(img)[..., :3], colour_table(part_names, colours))
  raise LabelError(f"{path}: image mode {img.mode!r} is neither indexed (P, L) nor RGB")


def read_labelme(path: str, part_names: Sequence[str],
                 sizes: Sequence[int] | None = None) -> np.ndarray:
  """A LabelMe JSON file -> [imageHeight, imageWidth] label map, shapes drawn in file order.

  The declared size is checked (against `sizes`, the image's) before the canvas is made;
  shapes must be objects with a label, a type and a list of [x, y] pairs of finite numbers
  within the image (give or take one image size); anything else is one LabelError line.
  """
  doc = _read_json(path)
  if not isinstance(doc, dict) or "imageHeight" not in doc or "imageWidth" not in doc:
    raise LabelError(f"{path}: not a LabelMe JSON file (an object with imageHeight, imageWidth "
                     f"and shapes)")
  h, w = _dimension(path, doc, "imageHeight"), _dimension(path, doc, "imageWidth")
  check_size(path, w, h, sizes)
  shapes = doc.get("shapes")
  shapes = [] if shapes is None else shapes
  if not isinstance(shapes, list):
    raise LabelError(f"{path}: 'shapes' is a {type(shapes).__name__}, expected a list of shapes")
  drawn = [_labelme_shape(path, k, shape, part_names, w, h) for k, shape in enumerate(shapes)]
  canvas = Image.new("I", (w, h), 0)
  draw = ImageDraw.Draw(canvas)
  for kind, pts, value in drawn:
    if kind == "polygon":
      draw.polygon(pts, fill=value)
    elif kind == "rectangle":
      (x0, y0), (x1, y1) = pts
      draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=value)
    else:
      (cx, cy), (px, py) = pts
      r = float(np.hypot(px - cx, py - cy))
      draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=value)
  return np.asarray(canvas).astype(np.int32)


def _read_json(path: str):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except RecursionError:
    raise LabelError(f"{path}: JSON nested too deeply to be a LabelMe file") from None
  except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
    raise LabelError(f"{path}: not a LabelMe JSON file ({type(e).__name__}: {e})") from None


def _dimension(path: str, doc: dict, key: str) -> int:
  v = doc[key]
  ok = isinstance(v, int) and not isinstance(v, bool)
  ok = ok or (isinstance(v, float) and np.isfinite(v) and v == int(v))
  if not ok or int(v) < 1:
    raise LabelError(f"{path}: {key} {v!r} is not a positive whole number of pixels")
  return int(v)


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _labelme_shape(path, k, shape, part_names, w, h):
  """One LabelMe shape -> (kind, [(x, y), ...], part index), or a LabelError line."""
  if not isinstance(shape, dict):
    raise LabelError(f"{path}: shape {k} is a {type(shape).__name__}, expected an object with "
                     f"label, shape_type and points")
  label = shape.get("label")
  if not isinstance(label, str) or label not in part_names:
    raise LabelError(f"{path}: shape {k} has label {label!r}, which is not in part_names.json "
                     f"({', '.join(part_names)})")
  kind = shape.get("shape_type") or "polygon"
  points = shape.get("points")
  if not isinstance(points, list) or not all(
      isinstance(p, list) and len(p) == 2 and all(_is_number(v) for v in p) for p in points):
    raise LabelError(f"{path}: shape {k} ({label!r}): points must be a list of [x, y] number "
                     f"pairs, got {_preview(points)}")
  pts = [(float(x), float(y)) for x, y in points]
  for j, (x, y) in enumerate(pts):
    # LabelMe keeps points near the image; one image size beyond each edge is generous.
    if not (np.isfinite(x) and np.isfinite(y) and -w <= x <= 2 * w and -h <= y <= 2 * h):
      raise LabelError(f"{path}: shape {k} ({label!r}) point {j} ({x!r}, {y!r}) is not a finite "
                       f"coordinate near the {w} x {h} image")
  need = {"polygon": (3, None), "rectangle": (2, 2), "circle": (2, 2)}.get(kind)
  if need is None or len(pts) < need[0] or (need[1] is not None and len(pts) != need[1]):
    raise LabelError(f"{path}: shape {k} ({label!r}) is a {kind} with {len(pts)} points; "
                     f"only polygons (>= 3 points), rectangles and circles are read")
  return kind, pts, part_names.index(label)


def _preview(v, n: int = 60) -> str:
  text = repr(v)
  return text if len(text) <= n else text[:n] + "..."


def read_cvat_labelmap(path: str, part_names: Sequence[str]) -> dict[tuple[int, int, int], int]:
  """CVAT's labelmap.txt ('name:r,g,b:parts:actions' lines) -> (r, g, b) -> part index."""
  table: dict[tuple[int, int, int], int] = {}
  try:
    with open(path, encoding="utf-8") as f:
      lines = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
  except OSError as e:
    raise LabelError(f"{path}: cannot read ({e})") from None
  except UnicodeDecodeError as e:
    raise LabelError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); CVAT writes "
                     f"labelmap.txt as UTF-8") from None
  for ln in lines:
    name, _, rest = ln.partition(":")
    rgb = parse_colour(path, rest.split(":")[0])
    if name not in part_names:
      raise LabelError(f"{path}: label {name!r} is not in part_names.json ({', '.join(part_names)})")
    _add_colour(path, table, rgb, part_names.index(name), part_names)
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
            colours: Mapping[str, object] | None = None,
            sizes: Sequence[int] | None = None) -> dict[str, tuple[str, Callable[[], np.ndarray]]]:
  """Mask files under `path` (a directory or one file) -> {image name: (file, reader)}.

  fmt: 'auto' (CVAT if `path` holds labelmap.txt, else by extension: .json LabelMe,
  .png indexed or RGB by the image mode), or one of FORMATS to insist on.
  Of several browser copies of one name ('x.png', 'x (1).png') the newest file wins; files
  of two formats for one image (x.json and x.png) are refused (LabelError naming both).
  sizes: the image's allowed mask sides; a reader checks a file's declared size against
  them before it allocates anything.
  """
  if fmt not in FORMATS:
    raise LabelError(f"--format={fmt!r}: expected one of {', '.join(FORMATS)}")
  if not os.path.exists(path):
    raise LabelError(f"{path}: no such file or directory")
  if os.path.isdir(path) and (fmt == "cvat" or (fmt == "auto" and
                                                os.path.exists(os.path.join(path, CVAT_LABELMAP)))):
    return _collect_cvat(path, part_names, sizes)
  if fmt == "cvat":
    raise LabelError(f"{path}: a CVAT export is a directory with {CVAT_LABELMAP} and {CVAT_MASK_DIR}/")
  files = ([os.path.join(path, f) for f in sorted(os.listdir(path))] if os.path.isdir(path) else [path])
  want = {"indexed": (".png",), "rgb": (".png",), "labelme": (".json",), "auto": (".png", ".json")}[fmt]
  files = [f for f in files if f.lower().endswith(want) and os.path.isfile(f)]
  newest: dict[str, str] = {}
  for f in sorted(files, key=os.path.getmtime):
    other = newest.get(mask_name(f))
    if other is not None and os.path.splitext(other)[1].lower() != os.path.splitext(f)[1].lower():
      a, b = sorted((other, f))
      raise LabelError(f"{a}: two label files for image {mask_name(f)!r} ({a} and {b}); "
                       f"keep the one you mean and move the other away")
    newest[mask_name(f)] = f
  out = {}
  for name, f in sorted(newest.items()):
    if f.lower().endswith(".json"):
      out[name] = (f, lambda f=f: read_labelme(f, part_names, sizes))
    elif fmt == "indexed":
      out[name] = (f, lambda f=f: _read_indexed_only(f, part_names, sizes))
    elif fmt == "rgb":
      out[name] = (f, lambda f=f: rgb_to_labels(f, np.asarray(_open_png(f, sizes).convert("RGB")),
                                                 colour_table(part_names, colours)))
    else:
      out[name] = (f, lambda f=f: read_png(f, part_names, colours, sizes))
  return out


def _read_indexed_only(path: str, part_names: Sequence[str],
                       sizes: Sequence[int] | None = None) -> np.ndarray:
  img = _open_png(path, sizes)
  if img.mode not in ("P", "L", "I", "I;16"):
    raise LabelError(f"{path}: --format=indexed but the PNG is {img.mode} (use --format=rgb)")
  return _check_indices(path, np.asarray(img).astype(np.int64), len(part_names))


def _collect_cvat(path: str, part_names: Sequence[str], sizes: Sequence[int] | None = None) -> dict:
  table = read_cvat_labelmap(os.path.join(path, CVAT_LABELMAP), part_names)
  mask_dir = os.path.join(path, CVAT_MASK_DIR)
  if not os.path.isdir(mask_dir):
    raise LabelError(f"{path}: CVAT export without {CVAT_MASK_DIR}/")
  out = {}
  for f in sorted(os.listdir(mask_dir)):
    if f.lower().endswith(".png"):
      full = os.path.join(mask_dir, f)
      out[mask_name(full)] = (full, lambda full=full: rgb_to_labels(
          full, np.asarray(_open_png(full, sizes).convert("RGB")), table))
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
