"""The photos stage on the built-in world: a folder with the demo's own degraded renders,
a rotated JPEG with an EXIF orientation tag and bad files, inverted and explained.

Truths: the world's renders and true w (written by the stage, read back here), PIL's
own rotation for the EXIF tag, PSNR's closed form on the stored images, the classifier
applied to the stored photo and reconstruction, the link and generator applied by hand
for a sweep frame.
"""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT

sys.path.insert(0, ROOT)
from configs import demo  # noqa: E402
from lis_jax import errors, generators, images, io, page, pipeline, stages  # noqa: E402
from lis_jax.invert import explain  # noqa: E402
from lis_jax.stages import photos as photos_stage  # noqa: E402
from tests.browser import browser, console_errors  # noqa: F401,E402  (fixture)

BAD = {"notes.png": "not an image", "trunc.png": "truncated", "gray16.png": "16-bit"}
# The stage's PSNR (float32, G(w) in the inversion's batch) vs this test's (float64, G(w)
# alone) at 27-32 dB: measured up to 0.03 dB. Only photos the reader did not resize: a
# resized photo is inverted from its float Lanczos result, stored as uint8 (0.3 dB off).
PSNR_TOL_DB = 0.1


def _config(folder: str):
  c = demo.get_config()
  c.stages = ("paired_data", "link", "photos")
  c.paired_data.n_per_class = 30
  c.paired_data.shard_size = 32
  c.link.cycle_samples = 16
  c.photos.update(dict(images=folder, renders=3, num_steps=40, refine_steps=1,
                       w_avg_samples=200, batch_size=4, max_steps=40, check_every=10,
                       search_batch=8, top_units=4, sweep_units=2, sweep_steps=3))
  return c


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """One run over a folder holding bad files and a rotated JPEG (the stage adds 3 renders)."""
  wd = tmp_path_factory.mktemp("photos") / "wd"
  folder = wd / "in"
  folder.mkdir(parents=True)
  G = generators.load("shapes")
  z = jax.random.normal(jax.random.key(7), (1, G.z_dim))
  u8 = images.to_uint8(np.asarray(G.synthesis(G.mapping(z, jnp.array([3]), psi=0.7))))[0]
  big = np.asarray(Image.fromarray(u8).resize((96, 96), Image.NEAREST))
  rotated = Image.fromarray(np.pad(big, ((0, 0), (10, 10), (0, 0)), mode="edge")).transpose(
      Image.ROTATE_90)                            # stored turned; the tag turns it back
  exif = Image.Exif()
  exif[0x0112] = 6                                # orientation: rotate 90 CW to view
  rotated.save(folder / "turned.jpg", exif=exif, quality=95)
  (folder / "notes.png").write_text("not an image")
  raw = Image.fromarray(u8)
  raw.save(folder / "whole.png")
  (folder / "trunc.png").write_bytes((folder / "whole.png").read_bytes()[:300])
  os.remove(folder / "whole.png")
  Image.fromarray(np.zeros((40, 40), np.uint16)).save(folder / "gray16.png")
  config = _config(str(folder))
  ctx = pipeline.run(config, str(wd))
  return ctx, str(wd), str(folder), u8


def test_stage_inverts_the_usable_photos_and_refuses_the_others(run, capfd):
  ctx, wd, folder, u8 = run
  res = stages.REGISTRY["photos"].load(wd)
  a, s = res.arrays, res.summary
  assert sorted(a["files"].tolist()) == ["render_00.jpg", "render_01.jpg", "render_02.jpg",
                                        "turned.jpg"]
  assert set(s["refused"]) == set(BAD)
  for name, word in BAD.items():
    assert word in s["refused"][name] and "\n" not in s["refused"][name]
  # EXIF orientation applied: the photo is the upright render (JPEG quality 95, resized).
  turned = list(a["files"]).index("turned.jpg")
  up = a["photo"][turned].astype(float)
  err = np.abs(up - u8).mean()
  err_unturned = np.abs(np.rot90(up, 1) - u8).mean()
  assert err < 12 and err_unturned > 2 * err, (err, err_unturned)   # measured ~4 vs ~60
  # The reconstruction is G(w); PSNR beside it is its closed form against the photo.
  G = ctx.G
  assert np.abs(images.render(G, a["w"]).astype(int) - a["recon"]).max() <= 1
  y = np.clip(np.asarray(G.synthesis(generators.broadcast_ws(jnp.asarray(a["w"]), G.num_ws)),
                         np.float64), -1, 1)
  x = a["photo"].astype(np.float64) / 127.5 - 1
  psnr = 10 * np.log10(4.0 / np.mean((x - y) ** 2, axis=(1, 2, 3)))
  same_size = np.array([f != "turned.jpg" for f in a["files"]])   # resized: float target
  np.testing.assert_allclose(a["psnr"][same_size], psnr[same_size], atol=PSNR_TOL_DB)


def test_flags_are_the_classifiers_own_reading_of_photo_and_reconstruction(run):
  ctx, wd, _, _ = run
  a = stages.REGISTRY["photos"].load(wd).arrays
  clf = ctx.clf
  pred = lambda u: np.asarray(jnp.argmax(clf(clf.preprocess(jnp.asarray(u, jnp.float32) / 127.5 - 1)), -1))
  assert (pred(a["photo"]) == a["pred_photo"]).all()
  recon_pred = pred(a["recon"])
  assert (recon_pred == a["pred_recon"]).all()
  assert (a["match"] == (a["pred_photo"] == a["pred_recon"])).all()


def test_validation_and_sweeps_against_the_true_w(run):
  ctx, wd, folder, _ = run
  res = stages.REGISTRY["photos"].load(wd)
  a, v = res.arrays, res.summary["validation"]
  truth = explain.read_truth(folder)
  rows = a["truth_rows"]
  assert sorted(a["files"][rows].tolist()) == sorted(truth) and v["n"] == 3   # not turned.jpg
  np.testing.assert_array_equal(a["w_true"], np.stack([truth[f][0] for f in a["files"][rows]]))
  jac = [len(set(x) & set(y)) / len(set(x) | set(y))
         for x, y in zip(a["moved_units"].tolist(), a["moved_units_true"].tolist())]
  np.testing.assert_allclose(a["unit_overlap"], jac)
  assert v["unit_overlap_mean"] == pytest.approx(np.mean(jac))
  assert v["same_outcome"] == pytest.approx(np.mean(a["success"][rows] == a["success_true"]))
  # A sweep frame is link(r with r_unit = its lowest paired-data value) rendered, r the
  # classifier's features of the reconstruction.
  G, clf, link = ctx.G, ctx.clf, ctx.result("link").link
  data = ctx.result("paired_data")
  r = np.asarray(clf.features(clf.preprocess(jnp.asarray(a["recon"][:1], jnp.float32) / 127.5 - 1)))
  unit = int(a["top_units"][0, 0])
  by_hand = np.asarray(explain.representation(G, clf, a["w"][:1])).copy()
  # the stored reconstruction is uint8: its features are close to (not equal to) G(w)'s
  assert np.abs(r - by_hand).max() < 0.05 * np.abs(by_hand).max()
  by_hand[0, unit] = data.r.min(0)[unit]
  frame = images.render(G, np.asarray(link(jnp.asarray(by_hand))))[0]
  assert np.abs(frame.astype(int) - a["sweeps"][0, 0, 0].astype(int)).max() <= 1


def test_renders_truth_and_overlap(tmp_path):
  """write_renders' files are the world's renders of the w it records (degradation 'clean':
  exactly), and `overlap` is the Jaccard index."""
  G = generators.load("shapes")
  names = explain.write_renders(G, str(tmp_path), 3, jax.random.key(1), 0.7, "clean",
                                np.random.default_rng(0), np.arange(8))
  truth = explain.read_truth(str(tmp_path))
  assert sorted(truth) == names == ["render_00.png", "render_01.png", "render_02.png"]
  for i, n in enumerate(names):
    img = np.asarray(Image.open(tmp_path / n))
    np.testing.assert_array_equal(img, images.render(G, truth[n][0][None])[0])
    assert truth[n][1] == i
  moved = explain.moved_units(np.array([[0.5, 0.9, 0.1, 0.3]]), np.array([[0.5, 0.2, 0.4, 0.3]]), 2)
  assert moved.tolist() == [[1, 2]]   # |shift - start| = 0, 0.7, 0.3, 0
  np.testing.assert_allclose(explain.overlap(np.array([[1, 2, 3], [4, 5, 6]]),
                                             np.array([[3, 2, 9], [7, 8, 9]])), [0.5, 0.0])


def test_section_in_browser_shows_flags(run, browser, tmp_path):  # noqa: F811  (fixture)
  ctx, wd, _, _ = run
  path = os.path.join(wd, "photos", "results.npz")
  a = dict(io.load_npz(path, finite=False))
  a["pred_recon"] = a["pred_recon"].copy()
  a["match"] = np.zeros_like(a["match"])      # every reconstruction flagged ...
  a["match"][1:] = True                       # ... but the first
  a["pred_recon"][0] = (a["pred_photo"][0] + 1) % 8
  io.save_npz(path, **a)
  ctx.forget("photos")
  html = photos_stage.section(ctx)
  index = tmp_path / "index.html"
  index.write_text(page.document("photos", wd, f'<section id="photos">{html}</section>'))
  browser.get(index.as_uri())
  rows = browser.execute_script(
      "return Array.from(document.querySelectorAll('#photos table tr')).slice(1).map(r => r.innerText)")
  assert len(rows) == 4
  flagged = [r for r in rows if "FLAGGED" in r]
  assert len(flagged) == 1 and str(a["files"][0]) in flagged[0]
  imgs = browser.execute_script(
      "return Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
  assert len(imgs) == 8 and all(c and w > 0 for c, w in imgs)   # trio and sweeps per photo
  scroll, client = browser.execute_script(
      "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
  assert scroll <= client, f"page is {scroll} px wide in a {client} px window"
  assert console_errors(browser) == []


def test_missing_folder_is_refused_before_anything_runs(tmp_path):
  c = _config(str(tmp_path / "absent"))
  c.photos.renders = 0
  ctx = stages.context(c, str(tmp_path))
  with pytest.raises(errors.PipelineError, match="photos.images: .*absent is not a directory"):
    ctx.check_stages(["photos"])


def test_a_relative_folder_is_inside_the_workdir_even_before_it_exists(tmp_path):
  from lis_jax.stages import photos
  work = str(tmp_path / "run")
  assert photos.photo_folder(work, "photos_in") == os.path.join(work, "photos_in")
  assert photos.photo_folder(work, str(tmp_path / "mine")) == str(tmp_path / "mine")
