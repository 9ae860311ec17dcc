"""Dense motion of parts (lis_jax.analysis.motion): closed forms for the pieces, and the
built-in world's true motion for the flow (issue 24: mean end-point error <= 1 px at 64 px
for translation; better than today's centroid shift for rotation and scale)."""
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import bench_motion
from lis_jax import generators, memory
from lis_jax.analysis import motion

# Issue 24's target for translation (64 px world). Measured with these settings (4 sweeps
# x 4 images, steps of ~4.5 px): 0.22-0.29 px per part (centroid shift 0.002-0.02);
# rotation 0.24-0.42 px vs the centroid's 0.66-1.48, scale 0.13-0.19 vs 0.29-0.65.
TRANSLATION_EPE_PX = 1.0
# Float32 closed forms: an exact affine flow is fitted to ~1e-6 (measured 8e-7).
AFFINE_TOL = 1e-4


@pytest.fixture(scope="module")
def world():
  return generators.load("shapes")


def test_part_motion_recovers_an_exact_affine_map():
  n, size = 2, 32
  theta, scale = np.array([0.1, -0.25]), np.array([1.05, 0.9])
  shift = np.array([[1.5, -2.0], [0.0, 0.7]])
  c, s = np.cos(theta), np.sin(theta)
  a = scale[:, None, None] * np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], 1)  # [N, 2, 2]
  xy = np.asarray(motion.pixel_grid(size, size))
  centre = np.array([12.0, 17.0])
  moved = np.einsum("nij,hwj->nhwi", a, xy - centre) + centre + shift[:, None, None]
  flow = jnp.asarray(moved - xy, jnp.float32)
  masks = np.zeros((n, size, size, 2), np.float32)
  masks[:, 4:20, 6:26, 0] = 1.0                                        # a part
  masks[:, 0, 0, 1] = 1.0                                              # too small: NaN
  out = motion.part_motion(flow, jnp.asarray(masks))
  np.testing.assert_allclose(out["rotation"][:, 0], theta, atol=AFFINE_TOL)
  np.testing.assert_allclose(out["scale"][:, 0], scale, atol=AFFINE_TOL)
  np.testing.assert_allclose(out["affine"][:, 0, :, :2], a, atol=AFFINE_TOL)
  want = np.asarray(flow)[:, 4:20, 6:26].mean((1, 2))
  np.testing.assert_allclose(out["displacement"][:, 0], want, atol=AFFINE_TOL * 10)
  assert np.isnan(np.asarray(out["rotation"][:, 1])).all()


def test_warp_moves_a_ramp_by_the_flow():
  h = w = 16
  xy = np.asarray(motion.pixel_grid(h, w))
  ramp = jnp.asarray((2.0 * xy[..., 0] + 3.0 * xy[..., 1])[None, ..., None])
  flow = jnp.full((1, h, w, 2), jnp.asarray([1.25, -0.5]))
  got = np.asarray(motion.warp(ramp, flow))[0, 2:-2, 2:-2, 0]          # interior: no clamping
  want = (2.0 * (xy[..., 0] + 1.25) + 3.0 * (xy[..., 1] - 0.5))[2:-2, 2:-2]
  np.testing.assert_allclose(got, want, atol=1e-4)


def test_pose_flow_of_a_translation_is_constant():
  p1 = {"pos_x": [0.0], "pos_y": [0.1], "rotation": [0.2], "scale": [0.5]}
  p2 = {**p1, "pos_x": [0.05]}
  f = np.asarray(motion.pose_flow(p1, p2, 64))
  np.testing.assert_allclose(f[..., 0], 0.05 * 32, atol=1e-4)
  np.testing.assert_allclose(f[..., 1], 0.0, atol=1e-4)


@pytest.mark.parametrize("factor", ["pos_x", "rotation", "scale"])
def test_dense_flow_follows_the_world_true_motion(world, factor):
  r = bench_motion.evaluate(world, factor, "image", n=4, steps=4)["parts"]
  flow = {part: v["flow"] for part, v in r.items()}
  centroid = {part: v["centroid"] for part, v in r.items()}
  if factor == "pos_x":
    assert np.mean(list(flow.values())) <= TRANSLATION_EPE_PX, flow
    assert max(flow.values()) <= TRANSLATION_EPE_PX, flow
  else:
    for part in r:                              # every part, not just on average
      assert flow[part] < centroid[part], (part, flow, centroid)


def test_sweep_features_refuses_an_unknown_layer(world):
  ws = world.mapping(jnp.zeros((1, world.z_dim)), jnp.zeros((1,), jnp.int32))
  assert motion.sweep_features(world, ws, "image+L1_32").shape == (1, 64, 64, 3 + 32)
  with pytest.raises(ValueError, match="not 'image' nor a synthesis layer"):
    motion.sweep_features(world, ws, "L9")


def test_draw_arrows_marks_the_segment_and_keeps_the_input():
  img = np.zeros((1, 16, 16, 3), np.uint8)
  out = motion.draw_arrows(img, np.array([[[2.0, 8.0], [np.nan, np.nan]]]),
                           np.array([[[10.0, 0.0], [1.0, 1.0]]]), np.array([[255, 0, 0], [0, 255, 0]]))
  assert img.max() == 0                                        # not drawn in place
  assert (out[0, 8, 2:13, 0] == 255).all()                     # the shaft, centroid to tip
  assert out[0, :, :, 1].max() == 0                            # NaN part: no arrow
  assert out[0, 7:10, 8:12, 0].sum() > out[0, 8, 8:12, 0].sum()  # the head's barbs


# The motion stage on hand-made sweeps of the world that move one pose factor each (rigid:
# the class is kept), so the truth check covers every sweep. Measured (2 units per factor x 2
# samples, 4 images, masks features): displacement 0.51 px, rotation 1.06 deg, scale 0.022 off,
# against the centroid shift's 0.46 px, 13.0 deg, 0.12 (the true motion: 4.5 px, 13 deg, 12%).
STAGE_DISPLACEMENT_PX = 1.0


class _Ctx:
  """The slice of the run context the motion stage uses."""

  def __init__(self, workdir, G, sweep_result):
    from lis_jax.stages import motion as motion_stage, report
    self.workdir, self.G, self._sweep = workdir, G, sweep_result
    self.budget = memory.default_budget()   # the host's, as a run without memory_gb
    self._cfg = {"motion": motion_stage.default_config(), "report": report.default_config()}
    self._cfg["motion"].masks = "ground_truth"

  def cfg(self, name):
    return self._cfg[name]

  def out_dir(self, name):
    import os
    d = os.path.join(self.workdir, name)
    os.makedirs(d, exist_ok=True)
    return d

  def result(self, name):
    from lis_jax.stages import motion as motion_stage
    return self._sweep if name == "sweep" else motion_stage.load(self.workdir)


def test_motion_stage_on_rigid_sweeps_beats_the_centroid_shift(world, tmp_path):
  import os
  from lis_jax.stages import motion as motion_stage, sweep
  d = str(tmp_path / "sweep")
  store = sweep.store(d)
  factors = ("pos_x", "rotation", "scale")
  for b, factor in enumerate(factors):                          # one block per factor: 2 units x 2 samples
    w = np.asarray(bench_motion.sweeps(world, factor, 4, 4, seed=b))[:, :, 0]   # [4, T, w_dim]
    store.write(b, units=np.array([2 * b, 2 * b + 1]), samples=np.array([0, 1]), cls=np.array([0, 1]),
                values=np.zeros((2, 4), np.float32), w=w.reshape(2, 2, 4, -1))
  res = sweep.SweepResult(directory=d, rows=np.array([0, 1]), cls=np.array([0, 1]), r_start=np.zeros((2, 1)),
                          units=[], n_blocks=len(factors))
  ctx = _Ctx(str(tmp_path), world, res)
  motion_stage.run(ctx)
  out = motion_stage.load(str(tmp_path))
  assert len(out.rows) == 6 * 4 and {r["part"] for r in out.rows} == {"body", "top", "extra", "object"}
  t = out.summary["truth"]
  assert t["sweeps"] == t["all_sweeps"] == 12, t                # pose-only sweeps keep the class
  assert t["displacement_err_px"] <= STAGE_DISPLACEMENT_PX, t
  assert t["rotation_err_deg"] < t["centroid_rotation_err_deg"], t
  assert t["scale_err"] < t["centroid_scale_err"], t
  # the stage's truth (decoded factors) is the rendered world's (G.ground_truth)
  blk = out.blocks()[1]                                          # the rotation sweeps
  w = np.asarray(bench_motion.sweeps(world, "rotation", 4, 4, seed=1))[:, [0, -1]]    # [4, 2, num_ws, w_dim]
  f = world.ground_truth(jnp.asarray(w.reshape((-1,) + w.shape[2:])))["factors"]
  rot = np.asarray(f["rotation"]).reshape(4, 2)
  np.testing.assert_allclose(blk["true_rotation"].ravel(), rot[:, 1] - rot[:, 0], atol=1e-5)
  html = motion_stage.section(ctx)
  assert "Motion of parts" in html and "<img" in html
  assert os.path.exists(tmp_path / "report" / "motion.png")


def test_motion_stage_refuses_an_unknown_feature_layer_in_one_line(world, tmp_path):
  from lis_jax import errors
  from lis_jax.stages import motion as motion_stage, sweep
  res = sweep.SweepResult(directory=str(tmp_path / "sweep"), rows=np.array([0]), cls=np.array([0]),
                          r_start=np.zeros((1, 1)), units=[], n_blocks=1)
  ctx = _Ctx(str(tmp_path), world, res)
  ctx.cfg("motion").features = "masks+L9"
  with pytest.raises(errors.PipelineError, match="motion.features='masks\\+L9'.*not 'image' nor a synthesis layer"):
    motion_stage.run(ctx)
