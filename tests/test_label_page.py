"""The labeller page in headless Chromium: real pointer and key input, the saved PNG checked
pixel by pixel against the page's documented brush and fill rules (computed here with numpy
and scipy.ndimage)."""
import base64
import io as _io
import time

import numpy as np
from PIL import Image
from scipy import ndimage
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.actions.action_builder import ActionBuilder

from lis_jax.label import masks, page
from tests.browser import browser, console_errors  # noqa: F401  (fixture)

SIZE = 32  # mask and image side
PARTS = ("background", "cap", "stem")
DOWNLOAD_WAIT_S = 10.0  # a 1 KB download lands well within this even on a loaded machine


def _image() -> bytes:
  rng = np.random.default_rng(0)
  buf = _io.BytesIO()
  Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(buf, "PNG")
  return buf.getvalue()


def _capsule(mask, a, b, r, v):
  """The page's brush rule: pixels whose centre is within r of segment a-b get v."""
  ys, xs = np.mgrid[:SIZE, :SIZE] + 0.5
  a, b = np.asarray(a, float), np.asarray(b, float)
  d = b - a
  t = np.clip(((xs - a[0]) * d[0] + (ys - a[1]) * d[1]) / max(d @ d, 1e-300), 0, 1)
  ex, ey = xs - a[0] - t * d[0], ys - a[1] - t * d[1]
  mask[ex ** 2 + ey ** 2 <= r * r] = v


def _fill(mask, x, y, v):
  """The page's fill rule: the 4-connected region holding the clicked pixel's label gets v."""
  regions, _ = ndimage.label(mask == mask[y, x])  # default structure: 4-connectivity
  mask[regions == regions[y, x]] = v


class Page:
  """Drives the page with real input events at mask coordinates."""

  def __init__(self, driver):
    self.d = driver
    rect = driver.execute_script("return document.getElementById('mask').getBoundingClientRect().toJSON()")
    self.left, self.top, self.scale = rect["left"], rect["top"], rect["width"] / SIZE

  def client(self, x, y):
    """Viewport pixel nearest to mask point (x, y), and the mask point it really is."""
    cx, cy = round(self.left + x * self.scale), round(self.top + y * self.scale)
    return (cx, cy), ((cx - self.left) / self.scale, (cy - self.top) / self.scale)

  def stroke(self, *points):
    """Press at the first point, move through the others, release; returns the mask points."""
    ab = ActionBuilder(self.d)
    got = []
    for k, (x, y) in enumerate(points):
      (cx, cy), p = self.client(x, y)
      got.append(p)
      ab.pointer_action.move_to_location(cx, cy)
      if k == 0:
        ab.pointer_action.pointer_down()
    ab.pointer_action.pointer_up()
    ab.perform()
    return got

  def keys(self, keys):
    ActionChains(self.d).send_keys(keys).perform()

  def state(self, field):
    return self.d.execute_script(f"return window.lisLabeller.state.{field}")


def _wait_file(path):
  t0 = time.time()
  while time.time() - t0 < DOWNLOAD_WAIT_S:
    if path.exists() and path.stat().st_size > 0:
      return path.read_bytes()
    time.sleep(0.1)
  raise AssertionError(f"download {path} did not appear")


def test_labeller_draw_fill_erase_undo_save(browser, tmp_path):
  start = np.zeros((SIZE // 2, SIZE // 2), int)
  start[0, :] = 2  # a starting mask at half size: the page upsamples it (nearest)
  items = [page.item("img_a", _image(), SIZE, start, "suggested"), page.item("img_b", _image(), SIZE)]
  html = tmp_path / "label.html"
  page.write(str(html), items, PARTS)
  downloads = tmp_path / "downloads"
  downloads.mkdir()
  browser.execute_cdp_cmd("Browser.setDownloadBehavior",
                          {"behavior": "allow", "downloadPath": str(downloads)})
  browser.get(html.as_uri())
  p = Page(browser)
  assert p.scale >= 8, p.scale  # the page zooms a small image up to fit ~640 px

  expected = masks.resample_nearest(start, SIZE).astype(np.int64)
  # Radius 1.5 from the keyboard: no pixel centre lies exactly on the brush's edge.
  p.keys("1")
  while p.state("radius") > 1.5:
    p.keys("[")
  while p.state("radius") < 1.5:
    p.keys("]")
  assert p.state("radius") == 1.5 and p.state("part") == 1
  # A closed rectangle outline in part 1 ...
  pts = p.stroke((6.5, 8.5), (24.5, 8.5), (24.5, 22.5), (6.5, 22.5), (6.5, 8.5))
  for a, b in zip(pts[:-1], pts[1:]):
    _capsule(expected, a, b, 1.5, 1)
  # ... filled inside with part 2 (the fill tool, key F) ...
  p.keys("2f")
  (fx, fy), = p.stroke((15.5, 15.5))
  _fill(expected, int(fx), int(fy), 2)
  assert (expected == 2).sum() > 100  # the fill covered the rectangle's inside
  # ... a brush stroke of part 1 elsewhere, an eraser stroke that is undone (Z) ...
  p.keys("1b")
  a, b = p.stroke((2.5, 28.5), (29.5, 28.5))
  _capsule(expected, a, b, 1.5, 1)
  p.keys("e")
  p.stroke((15.5, 2.5), (15.5, 30.5))
  p.keys("z")
  # ... and an eraser stroke that stays.
  a, b = p.stroke((28.5, 3.5), (28.5, 12.5))
  _capsule(expected, a, b, 1.5, 0)
  assert p.state("tool") == "eraser"

  # Opacity and zoom from the keyboard change the view, not the mask.
  p.keys(",")
  assert abs(p.state("opacity") - 0.4) < 1e-9
  p.keys("-")
  assert p.state("zoom") < p.scale

  p.keys("s")
  saved = Image.open(_io.BytesIO(_wait_file(downloads / "img_a.png")))
  assert saved.mode == "P" and saved.size == (SIZE, SIZE)
  got = np.asarray(saved)
  np.testing.assert_array_equal(got, expected)
  # The palette is the one import reads RGB masks with.
  pal = np.asarray(saved.getpalette()[:3 * len(PARTS)], np.uint8).reshape(-1, 3)
  np.testing.assert_array_equal(pal, masks.palette(len(PARTS)))
  # The page's own copy of the bytes is the same file.
  last = browser.execute_script("return window.lisLabeller.lastSaved")
  assert last["name"] == "img_a.png"
  np.testing.assert_array_equal(np.asarray(Image.open(_io.BytesIO(base64.b64decode(last["base64"])))), got)
  # Next image (key N) starts empty; Ctrl+Z there has nothing to undo.
  p.keys("n")
  assert p.state("idx") == 1
  assert console_errors(browser) == []
