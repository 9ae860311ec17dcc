"""Reading photographs for inversion: checked one by one, refused with one line each.

`read_photo(path, resolution)` -> [resolution, resolution, 3] float32 in [-1, 1]: the
file's EXIF orientation applied, grey / palette / alpha images made RGB (alpha dropped),
centre-cropped to a square and resized with Lanczos (as the reference's
`run_projection`). Refused with a `PhotoError` (one line): not an image, a format other
than PNG or JPEG, a truncated or corrupt file, 16-bit samples, CMYK, more than
`max_pixels` pixels (checked from the header, before decoding).
"""
from __future__ import annotations

import hashlib
import os
import re
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

FORMATS = ("PNG", "JPEG", "MPO")  # MPO: the JPEG variant many cameras write
EXTENSIONS = (".png", ".jpg", ".jpeg", ".jpe")
MAX_PIXELS = 40_000_000  # default refusal size (a 40 MP photo decodes to ~120 MB of RGB)
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class PhotoError(ValueError):
  """A file that cannot be used as a photo; the message is one line without the path."""


def list_photos(images_dir: str) -> list[str]:
  """Every regular file in `images_dir` (sorted, not recursive, hidden files skipped)."""
  names = sorted(n for n in os.listdir(images_dir) if not n.startswith("."))
  return [os.path.join(images_dir, n) for n in names
          if os.path.isfile(os.path.join(images_dir, n))]


def photo_key(path: str) -> str:
  """A safe, unique output name for `path`: its sanitised stem and a hash of its name."""
  name = os.path.basename(path)
  stem = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.splitext(name)[0])[:60] or "image"
  return f"{stem}-{hashlib.sha1(name.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


def file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def read_photo(path: str, resolution: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """The photo at `path` as [resolution, resolution, 3] float32 in [-1, 1] (PhotoError)."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      im = Image.open(path)
  except UnidentifiedImageError:
    raise PhotoError("not an image PIL can read") from None
  except (Image.DecompressionBombError, Image.DecompressionBombWarning):
    raise PhotoError(f"too large (more than {max_pixels} pixels)") from None
  except OSError as e:
    raise PhotoError(f"cannot open: {e.strerror or e}") from None
  with im:
    _check_header(im, max_pixels)
    try:
      im.load()
    except (OSError, SyntaxError, ValueError) as e:  # PIL: "image file is truncated", ...
      raise PhotoError(f"truncated or corrupt {im.format} file ({' '.join(str(e).split())[:80]})"
                       ) from None
    im = ImageOps.exif_transpose(im)
    return _square_resized(im.convert("RGB"), resolution)


def _check_header(im: Image.Image, max_pixels: int) -> None:
  if im.format not in FORMATS:
    raise PhotoError(f"unsupported format {im.format} (PNG or JPEG)")
  w, h = im.size
  if w * h > max_pixels:
    raise PhotoError(f"too large: {w} x {h} pixels (at most {max_pixels})")
  if w < 1 or h < 1:
    raise PhotoError("empty image")
  if im.mode == "CMYK":
    raise PhotoError("CMYK image: convert it to RGB first")
  rawmode = im.tile[0][3] if im.tile and isinstance(im.tile[0][3], str) else ""
  if im.mode in _SIXTEEN_BIT_MODES or ";16" in rawmode or ";48" in rawmode or ";64" in rawmode:
    raise PhotoError("16-bit image: save it with 8 bits per channel first")


def _square_resized(im: Image.Image, resolution: int) -> np.ndarray:
  w, h = im.size
  s = min(w, h)
  im = im.crop(((w - s) // 2, (h - s) // 2, (w + s) // 2, (h + s) // 2))
  im = im.resize((resolution, resolution), Image.LANCZOS)
  return np.asarray(im, np.float32) / 127.5 - 1.0
