"""configs/linear.py's stage list on the tiny random models (standing in for converted
StyleGAN-XL and ResNet50 checkpoints): with no labels the run stops at quantify with one
line naming the commands; then export, labelling, import and suggest on that workdir.
(That the quantify stage trains on imported labels: tests/test_label_roundtrip.py.)
The run is tests/_tiny_run.py's shorter one (one sweep block, one counterfactual search per
class pair): every stage before quantify still runs in full."""
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import ROOT

sys.path.insert(0, str(ROOT))  # configs/ is not an installed package.
from configs import linear, tiny  # noqa: E402
from tests import _tiny_run  # noqa: E402
from lis_jax import stages as lis_stages  # noqa: E402
from lis_jax.label import export, importer, layout, masks, suggest  # noqa: E402

N_PER_CLASS = 4
N_LABELLED = 6  # of the 3 classes x N_PER_CLASS exported images
SUGGEST_LAYER = "L1_36_32"  # an early sgxl-tiny synthesis layer (36 px, 32 channels)


def _run(module, *args):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=600)


def _disc(size, k):
  """A part-1 disc whose centre moves with k: [size, size] labels."""
  yy, xx = np.mgrid[:size, :size]
  cx, cy = size * (0.35 + 0.05 * (k % 3)), size * (0.4 + 0.05 * (k % 2))
  return ((xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= (size / 4) ** 2).astype(np.int32)


def test_linear_stages_stop_at_quantify_then_label_and_finish(tmp_path):
  stages = linear.get_config().stages
  assert "quantify" in stages and stages[-1] == "report", stages
  work = tmp_path / "w"
  common = ["--config=configs/tiny.py", f"--workdir={work}"]
  run_args = common + ["--config.stages=" + ",".join(stages), *_tiny_run.ARGS]
  first = _run("lis_jax.main", *run_args)
  assert first.returncode == 1, first.stderr[-3000:]
  d = layout.LabelDir(str(work / tiny.get_config().quantify.labels))
  errors = [ln for ln in first.stderr.splitlines() if "error" in ln.lower() or "Traceback" in ln]
  assert errors == [
      f"error: quantify.labels='seg_labels/dogs': no labelled masks in {d.sub('labels')}; make them "
      f"with `python -m lis_jax.label export --config=configs/tiny.py --workdir={work} --n=30`, "
      f"paint {d.page} and save the masks into {d.masks}, then `python -m lis_jax.label import "
      f"--config=configs/tiny.py --workdir={work}` (README: Labelling parts); on the built-in "
      f"world use quantify.labels='ground_truth'"], first.stderr[-3000:]
  # The stages before quantify finished; report did not start.
  assert (work / "counterfactual" / "results.npz").exists() and (work / "sweep" / "index.csv").exists()
  assert not (work / "report").exists()

  # The walkthrough, in this process (the CLIs are thin: tests/test_label_import.py runs one).
  config = tiny.get_config()
  config.update_from_flattened_dict(_tiny_run.FLAT)
  config.stages = stages
  # suggest fits the segmenter 3 times (2 folds, then all labels), compiling each fit's
  # features, training step and prediction; one early feature layer instead of tiny.py's 8
  # makes those programs small. What is checked here (the folds, which files are written,
  # the page) does not depend on the layers (the segmenter's quality:
  # tests/test_quantify_segment.py).
  config.quantify.layers = SUGGEST_LAYER
  ctx = lis_stages.context(config, str(work))
  assert export.export(ctx, N_PER_CLASS) == d
  meta = layout.read_export(d)
  names = meta["names"]
  assert len(names) == 3 * N_PER_CLASS and os.path.exists(d.page)
  assert layout.read_part_names(d) == ("background", "part_1")  # classes 1,2,3: no known list
  os.makedirs(d.masks)
  for k, name in enumerate(names[:N_LABELLED]):  # "painted" masks, as the labeller saves them
    with open(os.path.join(d.masks, f"{name}.png"), "wb") as f:
      f.write(masks.indexed_png(_disc(meta["image_size"], k), 2))
  assert importer.import_masks(d) == sorted(names[:N_LABELLED])
  ev = suggest.suggest(ctx, folds=2)
  assert ev["folds"] == 2 and ev["n_images"] == N_LABELLED and ev["n_suggested"] == len(names) - N_LABELLED
  assert 0 <= ev["mean_iou"] <= 1
  assert all(os.path.exists(d.suggestion(n)) for n in names[N_LABELLED:])
  assert not any(os.path.exists(d.suggestion(n)) for n in names[:N_LABELLED])

  # The page now opens the imported labels and the suggestions as starting masks.
  with open(d.page) as f:
    html = f.read()
  start = html.index('<script id="lis-data" type="application/json">') + len('<script id="lis-data" type="application/json">')
  data = json.loads(html[start:html.index("</script>", start)])
  status = {it["name"]: it["status"] for it in data["images"]}
  assert status == {n: "labelled" if k < N_LABELLED else "suggested" for k, n in enumerate(names)}
  for it in data["images"][N_LABELLED:]:
    runs = np.asarray(it["mask"]["rle"]).reshape(-1, 2)
    flat = np.repeat(runs[:, 0], runs[:, 1]).reshape(it["mask"]["size"], -1)
    with Image.open(d.suggestion(it["name"])) as im:
      np.testing.assert_array_equal(flat, np.asarray(im))
