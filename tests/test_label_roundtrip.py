"""Export -> masks from the built-in world's truth (RGB PNG and LabelMe polygons) -> import ->
the quantify stage's segmenter, against the same stage trained on labels='ground_truth'."""
import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from skimage import measure

from configs import demo
from lis_jax import generators, images, io, stages
from lis_jax.label import export, importer, layout, masks
from lis_jax.quantify import segment
from lis_jax.stages import quantify

N_PER_CLASS = 10  # 8 classes: 80 images = N_LABELLED to train on + N_HELDOUT held out
N_LABELLED = 16
N_HELDOUT = 64
RESOLUTION = 32  # the world at 32 px (the demo's 64 px costs 4x); both runs get this G
# Issue 12's bar: the imported labels give the same held-out IoU as the world's truth
# (on the same images: only the labels' way in differs).
IOU_TOLERANCE = 0.02
# labels='ground_truth' trains and evaluates on other images (the stage samples its own):
# issue 12's bar is 0.02 too, and holds at this test's config.seed 0 (|difference| 0.004);
# for seeds 1 and 2 it measured 0.011 and 0.033 (16 training images at 32 px: the choice
# of images moves the IoU by a few hundredths), so the bar is met here, not for any seed.
SAMPLING_TOLERANCE = 0.02


def small_world():
  return generators.load("shapes", resolution=RESOLUTION)


def _config(labels):
  config = demo.get_config()
  config.generator = f"{__name__}:small_world"
  config.quantify.labels = labels
  config.quantify.n_labelled = N_LABELLED
  config.quantify.n_heldout = N_HELDOUT
  config.quantify.resolution = 0  # the generator's own (the demo segments at 128)
  return config


# LabelMe coordinates: pixel j spans [j, j + 1) (labelme rasterises with PIL, as the reader
# does). Outlines traced a quarter pixel outside the part's border pixel centres give back
# exactly those pixels (at 0.5, on the pixel edges, PIL takes the pixels beyond the edge too).
LEVEL = 0.75


def _polygons(labels, part_names):
  """LabelMe shapes: the outlines of every part's connected pieces, in part (= drawing) order."""
  shapes = []
  for p in range(1, len(part_names)):
    for contour in measure.find_contours(np.pad(labels == p, 1).astype(float), LEVEL):
      pts = contour[:, ::-1] - 1 + 0.5  # padded (row, col) -> (x, y); pixel j spans [j, j + 1)
      if len(pts) >= 3:
        shapes.append({"label": part_names[p], "points": pts.tolist(), "shape_type": "polygon"})
  return shapes


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("work"))
  ctx = stages.context(_config("seg_labels/shapes"), workdir)
  d = export.export(ctx, N_PER_CLASS, batch_size=40)
  return ctx.config, workdir, d, ctx.G


def test_round_trip_matches_ground_truth_iou(exported, tmp_path):
  config, workdir, d, G = exported
  meta = layout.read_export(d)
  names = meta["names"]
  assert len(names) == N_LABELLED + N_HELDOUT and meta["image_size"] == G.resolution
  part_names = layout.read_part_names(d)
  assert part_names == tuple(G.part_names)  # the world's parts are the starting list
  ws = jnp.asarray(np.stack([np.load(d.w(n)) for n in names]))
  # Export's images are the generator's images of the stored ws.
  img0 = np.asarray(Image.open(d.image(names[0])))
  np.testing.assert_array_equal(img0, np.asarray(images.to_uint8(G.synthesis(ws[:1])))[0])
  truth, _ = segment.ground_truth_labels(G, ws)  # [80, 32, 32]
  src = tmp_path / "masks"
  src.mkdir()
  pal = masks.palette(len(part_names))
  for k, name in enumerate(names):  # even: RGB PNG, odd: LabelMe JSON
    if k % 2 == 0:
      Image.fromarray(pal[truth[k]]).save(src / f"{name}.png")
    else:
      doc = {"imagePath": f"{name}.png", "imageHeight": G.resolution, "imageWidth": G.resolution,
             "shapes": _polygons(truth[k], part_names)}
      (src / f"{name}.json").write_text(json.dumps(doc))
  assert importer.import_masks(d, str(src)) == sorted(names)
  got = np.stack([np.load(d.labels(n)) for n in names])
  np.testing.assert_array_equal(got, truth)  # both formats give back the truth exactly

  from_labels = _segmenter_eval(config, workdir)
  # The same images with the world's truth as labels: only the import differs.
  same = layout.LabelDir(str(tmp_path / "truth_labels"))
  shutil.copytree(d.sub("w"), same.sub("w"))
  shutil.copy(d.part_names_file, same.part_names_file)
  os.makedirs(same.sub("labels"))
  for name, y in zip(names, truth):
    np.save(same.labels(name), y)
  from_same = _segmenter_eval(_config(same.root), str(tmp_path / "w_same"))
  # The stage's own labels='ground_truth': the world's truth of images it samples itself.
  from_truth = _segmenter_eval(_config("ground_truth"), str(tmp_path / "w_truth"))
  for ev in (from_labels, from_same, from_truth):
    assert ev["n_labelled"] == N_LABELLED and ev["n_images"] == N_HELDOUT, ev
  assert abs(from_labels["mean_iou"] - from_same["mean_iou"]) <= IOU_TOLERANCE, (from_labels, from_same)
  assert abs(from_labels["mean_iou"] - from_truth["mean_iou"]) <= SAMPLING_TOLERANCE, (from_labels,
                                                                                       from_truth)


def _segmenter_eval(config, workdir):
  """Trains the quantify stage's segmenter as the stage does; its held-out evaluation."""
  quantify.segmenter(stages.context(config, workdir))
  return io.read_json(os.path.join(workdir, "quantify", "segmenter_eval.json"))
