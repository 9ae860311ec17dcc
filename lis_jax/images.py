"""Images: the one uint8 conversion, PNG encoding and figure grids of lis_jax.

Generator images are float NHWC in [-1, 1]; stored and shown images are uint8. The
conversion is the reference's (`(x + 1) * 255 / 2`, clamped, truncated), used for PNGs,
the report and every measurement made on saved images.
"""
from __future__ import annotations

import base64
import io as _io

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from lis_jax import memory
from lis_jax import io


def to_uint8(img):
  """[-1, 1] float image (numpy or jax) -> uint8, as the reference saves it."""
  if isinstance(img, np.ndarray):
    return np.clip((img + 1) * (255 / 2.0), 0, 255).astype(np.uint8)
  return jnp.clip((img + 1) * (255 / 2.0), 0, 255).astype(jnp.uint8)


def render(G, w: np.ndarray, batch_size: int = 256, budget: memory.Budget | None = None,
           setting: str = "report.batch_size") -> np.ndarray:
  """w [N, w_dim] -> uint8 images [N, H, W, 3] (one w broadcast over G's ws), in
  fixed-size batches (one compile) of at most `batch_size`: fewer when the memory budget
  (default: the device's; lis_jax/memory.py) holds fewer. `setting` is named when even
  one image does not fit."""
  return memory.map_batches(_render, np.asarray(w, np.float32), batch_size, G,
                            budget=budget or memory.default_budget(), call="render",
                            setting=setting)


@jax.jit
def _render(G, w):
  ws = jnp.broadcast_to(w[:, None, :], (w.shape[0], G.num_ws, w.shape[-1]))
  return to_uint8(G.synthesis(ws))


def unit_to_uint8(img: np.ndarray) -> np.ndarray:
  """[0, 1] float image -> uint8 (the same truncation as `to_uint8`)."""
  return to_uint8(np.asarray(img, np.float32) * 2 - 1)


def upscale(img: np.ndarray, scale: int) -> np.ndarray:
  """Nearest-neighbour upscaling of [H, W, C] by an integer factor."""
  return img.repeat(scale, 0).repeat(scale, 1) if scale > 1 else img


def png_bytes(img: np.ndarray, scale: int = 1, compress_level: int = 6) -> bytes:
  """uint8 [H, W, 3] -> PNG bytes (optionally upscaled)."""
  buf = _io.BytesIO()
  Image.fromarray(upscale(np.asarray(img, np.uint8), scale)).save(buf, "PNG", compress_level=compress_level)
  return buf.getvalue()


def png_uri(img: np.ndarray, scale: int = 1) -> str:
  """uint8 [H, W, 3] -> a data: URI for inline HTML."""
  return "data:image/png;base64," + base64.b64encode(png_bytes(img, scale)).decode()


def save_png(path: str, img: np.ndarray, compress_level: int = 6) -> None:
  """Writes uint8 [H, W, 3] as a PNG, atomically."""
  with io.atomic_file(path, "wb") as f:
    f.write(png_bytes(img, compress_level=compress_level))


def row(images) -> np.ndarray:
  """[K, H, W, 3] (or a list) -> one strip [H, K * W, 3], left to right."""
  return np.concatenate(list(images), axis=1)


def grid(images: np.ndarray) -> np.ndarray:
  """[R, K, H, W, 3] -> [R * H, K * W, 3]: rows of strips."""
  return np.concatenate([row(r) for r in images], axis=0)


def labelled_grid(items: list[tuple[str, np.ndarray]], label_w: int = 110, pad: int = 4) -> np.ndarray:
  """uint8 images stacked vertically, a text label on the left of each: [sum H, label_w + max W, 3]."""
  width = max(im.shape[1] for _, im in items)
  rows = []
  for label, im in items:
    canvas = Image.new("RGB", (label_w + width, im.shape[0] + pad), "white")
    canvas.paste(Image.fromarray(np.asarray(im, np.uint8)), (label_w, 0))
    ImageDraw.Draw(canvas).text((4, im.shape[0] // 2 - 6), label, fill="black")
    rows.append(np.asarray(canvas))
  return np.concatenate(rows, 0)


def titled_row(items: list[tuple[str, np.ndarray]], head: int = 18, gap: int = 16) -> np.ndarray:
  """uint8 images side by side, each with a title above: one figure."""
  h = max(im.shape[0] for _, im in items) + head
  canvas = Image.new("RGB", (sum(im.shape[1] for _, im in items) + gap * (len(items) - 1), h), "white")
  x = 0
  for title, im in items:
    canvas.paste(Image.fromarray(np.asarray(im, np.uint8)), (x, head))
    ImageDraw.Draw(canvas).text((x + 4, 3), title, fill="black")
    x += im.shape[1] + gap
  return np.asarray(canvas)

