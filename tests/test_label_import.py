"""Mask import: each format read against masks built here, nearest resampling against PIL,
and every bad input refused with one line naming the file (nothing written)."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from lis_jax import io
from lis_jax.label import importer, layout, masks

PARTS = ["background", "cap", "stem"]
IMAGE = 16  # exported image side
RES = 8  # quantify.resolution


@pytest.fixture
def d(tmp_path):
  """A label directory as export leaves it (two images), without running a generator."""
  d = layout.LabelDir(str(tmp_path / "labels_dir"))
  io.write_json(d.part_names_file, PARTS)
  io.write_json(d.export_file, {"names": ["a", "b"], "image_size": IMAGE, "resolution": RES})
  os.makedirs(d.sub("w"))
  for n in ("a", "b"):
    np.save(d.w(n), np.zeros((3, 4), np.float32))
  return d


def _truth():
  y = np.zeros((IMAGE, IMAGE), np.int32)
  y[2:9, 3:13] = 1
  y[9:15, 6:10] = 2
  return y


def _save_indexed(path, y):
  with open(path, "wb") as f:
    f.write(masks.indexed_png(y, len(PARTS)))


def test_palette_is_the_voc_colour_map():
  # PASCAL VOC's published colours of classes 0..8 (VOCdevkit's labelcolormap).
  want = [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128),
          (0, 128, 128), (128, 128, 128), (64, 0, 0)]
  np.testing.assert_array_equal(masks.palette(9), want)


@pytest.mark.parametrize("src,dst", [(16, 8), (16, 16), (7, 16), (256, 128), (10, 4)])
def test_nearest_resampling_matches_pil(src, dst):
  y = np.random.default_rng(src).integers(0, 200, (src, src)).astype(np.uint8)
  want = np.asarray(Image.fromarray(y).resize((dst, dst), Image.Resampling.NEAREST))
  np.testing.assert_array_equal(masks.resample_nearest(y, dst), want)


def test_formats_read_and_resampled(d, tmp_path):
  y = _truth()
  src = tmp_path / "src"
  src.mkdir()
  _save_indexed(src / "a.png", y)  # indexed, full size
  # RGB with a colour table naming other colours than the palette, at quantify.resolution.
  colours = {"cap": "#ff0000", "stem": [0, 0, 255], "background": "10,10,10"}
  rgb = np.array([(10, 10, 10), (255, 0, 0), (0, 0, 255)], np.uint8)[masks.resample_nearest(y, RES)]
  Image.fromarray(rgb).save(src / "b.png")
  assert importer.import_masks(d, str(src), colours=colours) == ["a", "b"]
  np.testing.assert_array_equal(np.load(d.labels("a")), masks.resample_nearest(y, RES))
  np.testing.assert_array_equal(np.load(d.labels("b")), masks.resample_nearest(y, RES))
  assert np.load(d.labels("a")).dtype == np.int32


def test_labelme_shapes_in_order(d, tmp_path):
  doc = {"imageHeight": IMAGE, "imageWidth": IMAGE, "shapes": [
      {"label": "cap", "shape_type": "rectangle", "points": [[2, 1], [11, 6]]},
      {"label": "stem", "shape_type": "polygon", "points": [[4, 4], [7, 4], [7, 12], [4, 12]]}]}
  path = tmp_path / "a.json"
  path.write_text(json.dumps(doc))
  got = masks.read_labelme(str(path), PARTS)
  want = np.zeros((IMAGE, IMAGE), int)
  want[1:7, 2:12] = 1  # PIL's shapes include both corner pixels
  want[4:13, 4:8] = 2  # drawn later: covers the cap
  np.testing.assert_array_equal(got, want)


def test_cvat_export(d, tmp_path):
  y = _truth()
  cvat = tmp_path / "cvat"
  (cvat / "SegmentationClass").mkdir(parents=True)
  (cvat / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\n"
                                     "stem:250,50,83::\ncap:51,221,255::\n")
  cols = np.array([(0, 0, 0), (51, 221, 255), (250, 50, 83)], np.uint8)
  Image.fromarray(cols[y]).save(cvat / "SegmentationClass" / "b.png")
  assert importer.import_masks(d, str(cvat)) == ["b"]
  np.testing.assert_array_equal(np.load(d.labels("b")), masks.resample_nearest(y, RES))


def test_newest_browser_copy_wins(d, tmp_path):
  src = tmp_path / "downloads"
  src.mkdir()
  first, second = _truth(), np.where(_truth() == 2, 1, _truth())
  _save_indexed(src / "a.png", first)
  _save_indexed(src / "a (1).png", second)
  now = time.time()
  os.utime(src / "a.png", (now - 60, now - 60))
  importer.import_masks(d, str(src))
  np.testing.assert_array_equal(np.load(d.labels("a")), masks.resample_nearest(second, RES))


def _bad_indexed(src):
  y = _truth()
  y[5, 4] = 7
  img = Image.frombytes("P", (IMAGE, IMAGE), y.astype(np.uint8).tobytes())
  img.putpalette(masks.palette(256).reshape(-1).tolist())  # 8-bit: room for the 7
  img.save(src / "a.png")
  return src / "a.png", r"label 7 at pixel \(x=4, y=5\) is outside part_names.json"


def _bad_colour(src):
  rgb = masks.palette(3)[_truth()]
  rgb[3, 2] = (1, 2, 3)
  Image.fromarray(rgb).save(src / "a.png")
  return src / "a.png", r"unknown colour \(1, 2, 3\) at pixel \(x=2, y=3\)"


def _bad_labelme_label(src):
  doc = {"imageHeight": IMAGE, "imageWidth": IMAGE,
         "shapes": [{"label": "gills", "shape_type": "polygon", "points": [[1, 1], [5, 1], [5, 5]]}]}
  (src / "a.json").write_text(json.dumps(doc))
  return src / "a.json", "label 'gills', which is not in part_names.json"


def _bad_cvat_label(src):
  (src / "SegmentationClass").mkdir()
  (src / "labelmap.txt").write_text("background:0,0,0::\ngills:1,2,3::\n")
  Image.fromarray(np.zeros((IMAGE, IMAGE, 3), np.uint8)).save(src / "SegmentationClass" / "a.png")
  return src / "labelmap.txt", "label 'gills' is not in part_names.json"


def _bad_size(src):
  _save_indexed(src / "a.png", np.ones((12, 12), np.int32))
  return src / "a.png", "size mismatch: the mask is 12 x 12 but its image is 16 x 16 or 8 x 8"


def _bad_labelme_size(src):
  doc = {"imageHeight": 20, "imageWidth": 16,
         "shapes": [{"label": "cap", "shape_type": "polygon", "points": [[1, 1], [5, 1], [5, 5]]}]}
  (src / "a.json").write_text(json.dumps(doc))
  return src / "a.json", "size mismatch: the mask is 16 x 20"


def _no_latent(src):
  _save_indexed(src / "zz.png", _truth())
  return src / "zz.png", "no latent for image 'zz'"


def _empty(src):
  _save_indexed(src / "a.png", np.zeros((IMAGE, IMAGE), np.int32))
  return src / "a.png", "empty mask"


def _empty_labelme(src):
  (src / "a.json").write_text(json.dumps({"imageHeight": IMAGE, "imageWidth": IMAGE, "shapes": []}))
  return src / "a.json", "empty mask"


def _not_an_image(src):
  (src / "a.png").write_bytes(b"not a png")
  return src / "a.png", "not a readable image"


BAD = [_bad_indexed, _bad_colour, _bad_labelme_label, _bad_cvat_label, _bad_size, _bad_labelme_size,
       _no_latent, _empty, _empty_labelme, _not_an_image]


@pytest.mark.parametrize("make", BAD, ids=[f.__name__.strip("_") for f in BAD])
def test_bad_input_one_line_naming_the_file(d, tmp_path, make):
  src = tmp_path / "src"
  src.mkdir()
  _save_indexed(src / "b.png", _truth())  # a good mask beside the bad one: not written either
  path, msg = make(src)
  with pytest.raises(masks.LabelError, match=msg) as e:
    importer.import_masks(d, str(src))
  text = str(e.value)
  assert "\n" not in text and text.startswith(str(path)), text
  assert not os.path.exists(d.sub("labels"))


def test_cli_prints_one_error_line(tmp_path):
  workdir = tmp_path / "work"
  d = layout.LabelDir(str(workdir / "seg"))
  io.write_json(d.part_names_file, PARTS)
  io.write_json(d.export_file, {"names": ["a"], "image_size": IMAGE, "resolution": RES})
  src = tmp_path / "src"
  src.mkdir()
  _save_indexed(src / "a.png", _truth())  # no w/a.npy
  proc = subprocess.run(
      [sys.executable, "-m", "lis_jax.label", "import", "--config=configs/tiny.py",
       f"--workdir={workdir}", "--config.quantify.labels=seg", f"--masks={src}"],
      capture_output=True, text=True, timeout=300, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert proc.returncode == 1, proc.stderr
  assert proc.stderr.strip() == (f"error: {src / 'a.png'}: no latent for image 'a' ({d.w('a')} missing); "
                                 "masks are matched to exported images by file name"), proc.stderr
