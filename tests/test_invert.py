"""W projection (lis_jax.invert) on the built-in world, whose true w and factors are known.

Truths: the reference's learning-rate and noise formulas (run_inversion.py / the StyleGAN3
projector, written out in numpy here); the Monte-Carlo estimate of the reference's class
mixture start (w_avg, w_std from classes sampled from p); the world's own w and factors.
"""
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from lis_jax import classifiers, generators, images, lpips
from lis_jax.invert import photos, projector

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def world():
  G = generators.load("shapes", resolution=32)
  clf = classifiers.load("shapes-resnet")
  P = lpips.random_lpips(jax.random.key(0), width_divisor=16)
  return G, clf, P


def _renders(G, n, seed=5):
  z = jax.random.normal(jax.random.key(seed), (n, G.z_dim))
  ws = G.mapping(z, jnp.arange(n) % G.num_classes, psi=0.7)
  return np.asarray(ws[:, 0]), np.asarray(G.synthesis(ws))


def test_learning_rate_and_noise_are_the_references():
  s = projector._Schedule.of(projector.default_config())
  for n in (7, 100, 1000):
    for step in range(0, n, max(1, n // 37)):
      t = step / n
      ramp = min(1.0, (1.0 - t) / 0.25)
      ramp = 0.5 - 0.5 * np.cos(ramp * np.pi)
      want = 0.1 * ramp * min(1.0, t / 0.05)
      assert float(projector.learning_rate(step, n, s)) == pytest.approx(want, abs=1e-6)
      want_noise = 2.0 * 0.05 * max(0.0, 1.0 - t / 0.75) ** 2
      assert float(projector.noise_scale(step, n, 2.0, s)) == pytest.approx(want_noise, rel=1e-5)


def test_start_point_is_the_expectation_of_the_references_sampling(world):
  """w_avg / w_std of the top-k mixture vs the reference's estimator (classes drawn from p)."""
  G, _, _ = world
  p = np.array([[0.6, 0.3, 0.1, 0, 0, 0, 0, 0]], np.float64)
  stats = projector.StatsCache(G, 4000, jax.random.key(1))
  w_avg, w_std = projector.start_points(p, 3, stats)
  rng = np.random.default_rng(0)
  n = 20000
  cls = rng.choice(8, size=n, p=p[0])
  z = rng.normal(size=(n, G.z_dim)).astype(np.float32)
  w = np.asarray(G.mapping(z, cls, psi=1.0)[:, 0], np.float64)
  ref_avg = w.mean(0)
  ref_std = np.sqrt(((w - ref_avg) ** 2).sum(1).mean())
  # Monte-Carlo error of both estimates (4000 z per class, 20000 samples): measured
  # |w_avg diff| / w_std ~0.01 and w_std within 0.5%; 0.05 and 3% leave room for seeds.
  assert np.abs(w_avg[0] - ref_avg).max() < 0.05 * ref_std
  assert w_std[0] == pytest.approx(ref_std, rel=0.03)


def test_projection_recovers_the_true_w_image_and_factors(world):
  G, clf, P = world
  w_true, img = _renders(G, 8)
  cfg = projector.default_config()
  cfg.update(num_steps=400, w_avg_samples=1000, lpips_weight=0.0, batch_size=8)
  res = projector.project(G, clf, P, img, key=jax.random.key(2), config=cfg)
  start = projector.start_points(np.asarray(projector._probs(clf, jnp.asarray(img))), 5,
                                 projector.StatsCache(G, 1000, jax.random.fold_in(jax.random.key(2), 1)))[0]
  start_psnr = 10 * np.log10(4 / np.mean((np.asarray(G.synthesis(
      jnp.repeat(start[:, None], G.num_ws, 1))) - img) ** 2, axis=(1, 2, 3)))
  assert np.all(res.steps <= 400) and res.w.shape == (8, G.w_dim)
  # Measured: PSNR 14-20 dB at the start, 35-45 dB after 400 steps; predictions all kept.
  assert res.psnr.min() > 30 and res.psnr.min() > start_psnr.max() + 10
  assert res.match.all() and (res.pred_photo == np.arange(8)).all()
  f_true, _ = G.decode_factors(jnp.repeat(jnp.asarray(w_true)[:, None], G.num_ws, 1))
  f_inv, _ = G.decode_factors(jnp.repeat(jnp.asarray(res.w)[:, None], G.num_ws, 1))
  for name in ("pos_x", "pos_y", "bg_lum", "body_lum"):   # strong factors: recovered closely
    lo, hi = G.factor_ranges[name]
    err = np.abs(np.asarray(f_inv[name]) - np.asarray(f_true[name])) / (hi - lo)
    assert err.max() < 0.05, (name, err)   # measured max 0.01


def test_each_image_has_its_own_steps_and_batches_do_not_matter(world):
  G, clf, P = world
  _, img = _renders(G, 3, seed=9)
  cfg = projector.default_config()
  # adam_eps 1e-4 (not the reference's 1e-8) for the comparison across batch shapes below.
  cfg.update(w_avg_samples=500, lpips_weight=0.0, batch_size=3, chunk_steps=5, adam_eps=1e-4)
  steps = np.array([0, 6, 12])
  together = projector.project(G, clf, P, img, key=jax.random.key(3), config=cfg, num_steps=steps)
  assert together.steps.tolist() == [0, 6, 12]
  again = projector.project(G, clf, P, img, key=jax.random.key(3), config=cfg, num_steps=steps)
  np.testing.assert_array_equal(again.w, together.w)   # deterministic
  cfg.batch_size = 2   # other batches and padding: the same images per row
  apart = projector.project(G, clf, P, img, key=jax.random.key(3), config=cfg, num_steps=steps)
  assert apart.steps.tolist() == [0, 6, 12]
  # This world's w has directions the image does not depend on (64-d w, 28-d code): their
  # gradients are float noise (other batch shapes reassociate sums differently), and
  # Adam's first step is sign(gradient), a full-size step even for noise, so with the
  # reference's eps 1e-8 the same image in another batch ends elsewhere (PSNR between
  # them 10 dB after 12 steps). With eps 1e-4 noise gradients stay still and the rows agree
  # (measured 52 dB; identical rows give 126 dB).
  r_apart, r_together = (images.render(G, r.w).astype(np.float32) / 127.5 - 1
                         for r in (apart, together))
  assert projector_psnr(r_apart, r_together).min() > 40


def projector_psnr(a, b):
  return 10 * np.log10(4.0 / np.maximum(np.mean((a - b) ** 2, axis=(1, 2, 3)), 1e-12))


def test_plateau_stops_early(world):
  """A relative tolerance the loss rarely meets (50%): each image stops soon after the noise ramp."""
  G, clf, P = world
  _, img = _renders(G, 2, seed=11)
  cfg = projector.default_config()
  cfg.update(w_avg_samples=500, lpips_weight=1.0, batch_size=2, chunk_steps=10,
             plateau_patience=20, plateau_rel_tol=0.5, noise_ramp_length=0.01)
  res = projector.project(G, clf, P, img, key=jax.random.key(4), config=cfg, num_steps=1000)
  assert (res.steps < 200).all(), res.steps


# ----------------------------------------------------------------------------- the command line


def _write_photos(d, G):
  _, img = _renders(G, 3, seed=13)
  u8 = images.to_uint8(img)
  for i in range(2):
    Image.fromarray(u8[i]).save(d / f"ok{i}.png")
  Image.fromarray(np.pad(u8[2], ((4, 4), (12, 12), (0, 0)), mode="edge")).save(d / "wide.jpg")
  (d / "notes.txt").write_text("not an image")
  raw = (d / "ok0.png").read_bytes()
  (d / "trunc.png").write_bytes(raw[:len(raw) // 2])
  Image.new("CMYK", (40, 40)).save(d / "cmyk.jpg")
  Image.fromarray(np.zeros((40, 40), np.uint16)).save(d / "gray16.png")
  Image.fromarray(np.zeros((300, 300, 3), np.uint8)).save(d / "huge.png")   # > --max_pixels


CLI_SETTINGS = dict(lpips="random", num_steps=20, batch_size=2, max_pixels=50000,
                    lpips_weight=0.0)


def _run_in_process(tmp_path, d, capsys):
  from configs import demo  # pylint: disable=import-outside-toplevel
  from lis_jax.invert import cli  # pylint: disable=import-outside-toplevel
  config = demo.get_config()
  code = cli.run(config, cli.settings(config, CLI_SETTINGS), str(tmp_path / "wd"), str(d))
  return code, capsys.readouterr().err


def test_cli_refuses_bad_files_one_by_one_and_resumes(tmp_path, capsys):
  G = generators.load("shapes")
  d = tmp_path / "photos"
  d.mkdir()
  _write_photos(d, G)
  code, err = _run_in_process(tmp_path, d, capsys)
  assert code == 1, err
  refused = re.findall(r"refused ([\w.]+): ([^\r\n]+)", err)   # tqdm's \r lines around them
  assert sorted(name for name, _ in refused) == [
      "cmyk.jpg", "gray16.png", "huge.png", "notes.txt", "trunc.png"]
  assert dict(refused)["huge.png"] == "too large: 300 x 300 pixels (at most 50000)"
  out = tmp_path / "wd" / "invert"
  summary = json.loads((out / "summary.json").read_text())
  assert summary["n_done"] == 3 and set(summary["refused"]) == {
      "cmyk.jpg", "gray16.png", "huge.png", "notes.txt", "trunc.png"}
  key = photos.photo_key(str(d / "ok0.png"))
  meta = json.loads((out / f"{key}.json").read_text())
  assert meta["steps"] == 20 and meta["psnr"] > 10 and (out / f"{key}.png").is_file()
  before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")}

  # Resumed: nothing recomputed; an edited photo (new content) is recomputed.
  Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(d / "ok1.png")
  code, err = _run_in_process(tmp_path, d, capsys)
  assert "2 done before" in err, err
  after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")}
  changed = {k for k in before if after[k] != before[k]}
  assert changed == {f"{photos.photo_key(str(d / 'ok1.png'))}.npz"}

  # The command line, with another setting in the same workdir: one line, exit 1.
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  flags = [f"--{k}={v}" for k, v in CLI_SETTINGS.items() if k != "lpips_weight"]
  r = subprocess.run([sys.executable, "-m", "lis_jax.invert", "--config=configs/demo.py",
                      f"--workdir={tmp_path / 'wd'}", f"--images={d}", *flags,
                      "--lpips_weight=0.5"], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 1 and r.stderr.strip().splitlines() == [
      f"error: {out} was written by a different config (invert.lpips_weight: 0.0 -> 0.5); "
      "use another --workdir or delete that directory"], r.stderr


def test_restarts_keep_the_lowest_loss(world):
  """restarts=3: restart 0 is the single-start run; the kept run has the lowest loss."""
  G, clf, P = world
  _, img = _renders(G, 2, seed=21)
  cfg = projector.default_config()
  # adam_eps 1e-4: restart 0 then follows the single-start run across batch layouts (see
  # above). batch_size 3 and chunk_steps 5 as test_each_image_has_its_own_steps...: the same
  # compiled programs (a batch of 3 rows of 6 restarts, or of 2 images and a pad row).
  cfg.update(num_steps=30, w_avg_samples=500, lpips_weight=0.0, batch_size=3, chunk_steps=5,
             adam_eps=1e-4)
  one = projector.project(G, clf, P, img, key=jax.random.key(5), config=cfg)
  cfg.restarts = 3
  best = projector.project(G, clf, P, img, key=jax.random.key(5), config=cfg)
  assert best.w.shape == one.w.shape and (best.loss <= one.loss * (1 + 1e-5)).all()


def test_gauss_newton_products_are_the_jacobians(world):
  """J^T J and J^T r from reverse-mode products equal those of the forward-mode Jacobian
  (jax.jacfwd of the synthesis, built here directly) of the world's renderer."""
  G, _, _ = world
  w, img = _renders(G, 2, seed=31)
  w0 = jnp.asarray(w + 0.05)          # away from the target: r != 0
  jtj, jtr = projector.gauss_newton(G, w0, jnp.asarray(img), directions=7)
  for i in range(2):
    f = lambda v: projector._synth(G, v[None])[0].ravel()
    J = np.asarray(jax.jacfwd(f)(w0[i]), np.float64)             # [H*W*3, w_dim]
    r = np.asarray(f(w0[i]), np.float64) - img[i].ravel()
    scale = np.abs(J.T @ J).max()
    # float32 products summed over 3072 pixels: measured max error 2e-6 of the largest entry
    np.testing.assert_allclose(np.asarray(jtj[i]), J.T @ J, atol=1e-4 * scale)
    np.testing.assert_allclose(np.asarray(jtr[i]), J.T @ r, atol=1e-4 * np.abs(J.T @ r).max())


def test_refinement_recovers_what_adam_leaves(world):
  """Levenberg-Marquardt steps after Adam: the loss only falls (a step is kept only then),
  the reconstruction gets much closer, and the factors the image hardly shows (the small
  extra part's size, the stripes) come closer to the world's true factors."""
  G, clf, P = world
  w_true, img = _renders(G, 8, seed=41)
  cfg = projector.default_config()
  cfg.update(num_steps=150, w_avg_samples=500, lpips_weight=0.0, batch_size=8)
  adam = projector.project(G, clf, P, img, key=jax.random.key(6), config=cfg)
  cfg.refine_steps = 8
  lm = projector.project(G, clf, P, img, key=jax.random.key(6), config=cfg)
  assert (lm.loss <= adam.loss).all()
  # measured: PSNR 26-42 dB after Adam (median 38), 46-88 dB after 8 LM steps (median 77)
  assert np.median(lm.psnr) > np.median(adam.psnr) + 10
  weak = ("extra_width", "extra_height", "stripe_freq", "stripe_contrast", "body_width")
  bc = lambda w: jnp.repeat(jnp.asarray(w)[:, None], G.num_ws, 1)
  f_true, f_adam, f_lm = (G.decode_factors(bc(w))[0] for w in (w_true, adam.w, lm.w))
  err = lambda f: np.mean([np.abs(np.asarray(f[k]) - np.asarray(f_true[k])).mean()
                           / np.ptp(G.factor_ranges[k]) for k in weak])
  assert err(f_lm) < 0.5 * err(f_adam), (err(f_lm), err(f_adam))   # measured 0.021 vs 0.156
