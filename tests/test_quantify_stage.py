"""The quantify stage on a hand-made sweep of the built-in world: resumes after a crash,
loses and duplicates nothing; the truth check and the random-direction null have known answers."""
import csv
import os
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT))  # configs/ is not an installed package.
from configs import demo  # noqa: E402
from lis_jax import blocks, errors, generators, io, pipeline, stages  # noqa: E402
from lis_jax.generators import shapes  # noqa: E402
from lis_jax.quantify import measuring, segment, selectivity  # noqa: E402
from lis_jax.stages import quantify as stage, sweep  # noqa: E402
from tests import interrupt  # noqa: E402

N_UNITS, N_SAMPLES, N_STEPS, PER_BLOCK = 4, 4, 3, 2


def small_config():
  config = demo.get_config()
  config.stages = ("quantify",)
  q = config.quantify
  q.n_labelled, q.n_heldout, q.epochs = 4, 4, 2  # the segmenter's quality is tested elsewhere
  q.resolution = 32  # segmented and measured at half the world's 64 px (exercises resampling)
  q.samples_per_unit, q.null_draws, q.batch_size, q.n_boot, q.cards = 3, 4, 16, 100, 2
  q.null_space = "w"  # the faked sweep has no link to push r-space directions through
  return config


def fake_sweep(workdir, config):
  """Sweep blocks as the sweep stage writes them (WORKSPACE.md), from mapped latents."""
  G = generators.load(config.generator)
  store = blocks.BlockStore(os.path.join(workdir, "sweep"))
  key = jax.random.PRNGKey(3)
  cls = np.arange(N_SAMPLES) % G.num_classes
  start = np.asarray(G.mapping(jax.random.normal(key, (N_SAMPLES, G.z_dim)), cls))[:, 0]
  for b in range(N_UNITS // PER_BLOCK):
    units = np.arange(b * PER_BLOCK, (b + 1) * PER_BLOCK)
    dirs = np.asarray(jax.random.normal(jax.random.fold_in(key, b), (PER_BLOCK, G.w_dim))) * 0.5
    steps = np.linspace(0, 1, N_STEPS)
    w = start[None, :, None] + dirs[:, None, None] * steps[None, None, :, None]  # [U, S, T, w_dim]
    w = w.astype(np.float32)
    store.write(b, units=units, samples=np.arange(N_SAMPLES), cls=cls,
                values=np.tile(steps, (PER_BLOCK, 1)).astype(np.float32), w=w,
                **sweep.factor_analysis(G, w))
  io.save_npz(os.path.join(store.directory, "samples.npz"), rows=np.arange(N_SAMPLES), cls=cls,
              r=np.zeros((N_SAMPLES, 1), np.float32), n_blocks=np.int32(N_UNITS // PER_BLOCK))
  sweep.finish(store, N_UNITS // PER_BLOCK)
  pipeline.mark_done(config, workdir, "sweep")   # as the runner does after a real sweep


def _read(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_stage_resumes_after_a_crash_and_matches_a_clean_run(tmp_path, monkeypatch):
  config = small_config()
  clean, crashed = str(tmp_path / "clean"), str(tmp_path / "crashed")
  for wd in (clean, crashed):
    fake_sweep(wd, config)
  pipeline.run(config, clean)

  interrupt.run_until(monkeypatch, config, crashed, "quantify:2")   # block 1 measured, not written
  qdir = os.path.join(crashed, "quantify")
  assert os.path.exists(os.path.join(qdir, "block_00000.npz"))
  assert not os.path.exists(os.path.join(qdir, "block_00001.npz"))
  assert not os.path.exists(os.path.join(qdir, "selectivity.csv"))
  pipeline.run(config, crashed)  # resumes: block 0 kept, block 1 written

  a = _read(os.path.join(os.path.join(clean, "quantify"), "selectivity.csv"))
  b = _read(os.path.join(qdir, "selectivity.csv"))
  parts = len(shapes.PART_NAMES)  # background is not measured (as the reference); + the object
  assert len(a) == len(b) == N_UNITS * parts * len(selectivity.CONCEPT_METRICS)
  keys = [(r["unit"], r["part"], r["metric"]) for r in b]
  assert len(set(keys)) == len(keys) and sorted({int(r["unit"]) for r in b}) == list(range(N_UNITS))
  for ra, rb in zip(a, b):
    assert (ra["unit"], ra["part"], ra["metric"]) == (rb["unit"], rb["part"], rb["metric"])
    np.testing.assert_allclose(float(ra["mean"]), float(rb["mean"]), rtol=1e-6, equal_nan=True)
  with np.load(os.path.join(qdir, "block_00001.npz")) as f:
    assert f["first.area"].shape == (PER_BLOCK, 3, parts) and f["first.area"].max() <= 32 * 32
    assert f["first.true.area"].shape == (PER_BLOCK, 3, parts)  # the world's true masks
  with np.load(os.path.join(qdir, "null.npz")) as f:
    assert f["end.ell_angle"].shape == (4, 3, parts, 3) and f["start.area"].shape == (3, parts)
  manifest = io.read_json(os.path.join(qdir, "manifest.json"))
  assert manifest["blocks_done"] == [0, 1]
  assert os.path.exists(os.path.join(qdir, "truth_check.json"))
  # The check scores the true change over the measured start samples (3 of the sweep's 4),
  # the truth benchmarks/calibration.py uses, not the sweep's all-samples truth_delta.
  check = io.read_json(os.path.join(qdir, "truth_check.json"))
  G = generators.load(config.generator)
  sweep_blocks = list(sweep.load(crashed).blocks())
  pick = sweep.pick_starts(sweep_blocks[0]["cls"], config.quantify.samples_per_unit)
  truth = np.concatenate([sweep.factor_deltas(G, b["w"][:, pick])[0] for b in sweep_blocks])
  names = sweep.factor_deltas(G, sweep_blocks[0]["w"][:, pick])[1]
  for factor, v in check["per_factor"].items():
    order = np.argsort(-np.abs(truth[:, names.index(factor)]), kind="stable")
    assert v["true_top"] == order[:check["k"]].tolist()

  # A different quantify config on the same workdir is refused, naming the field.
  config.quantify.null_draws = 5
  with pytest.raises(errors.PipelineError, match="null_draws"):
    pipeline.run(config, crashed)

  # The report section renders cards from these outputs.
  html = stage.section(stages.context(small_config(), clean))
  assert "Unit cards" in html and "precision@" in html and "mean IoU" in html


def test_null_directions_have_the_units_lengths_and_are_reproducible():
  rng = np.random.default_rng(0)
  start = rng.normal(size=(4, 16)).astype(np.float32)
  lengths = np.array([1.0, 2.5, 7.0])
  key = jax.random.PRNGKey(0)
  ends, length = stage.null_ws(start, lengths, 50, key)
  assert ends.shape == (50, 4, 16) and set(np.round(length, 6)) == set(lengths)
  step = ends - start[None]
  # One direction per draw, shared by every start sample, with the drawn length.
  np.testing.assert_allclose(step, np.broadcast_to(step[:, :1], step.shape), atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(step[:, 0], axis=-1), length, rtol=1e-5)
  again, _ = stage.null_ws(start, lengths, 50, key)
  np.testing.assert_array_equal(again, ends)


def test_truth_check_with_a_planted_truth():
  names = ["pos_x", "body_lum"]
  parts = ["body", "top", "extra", "object"]
  truth = np.zeros((6, 2))
  truth[[4, 1], 0] = [0.9, 0.5]  # units 4 and 1 move pos_x most
  truth[[0, 2], 1] = [0.7, 0.6]  # units 0 and 2 move body_lum most
  shape = (6, len(parts), len(selectivity.CONCEPT_METRICS))
  stats = {"selective": np.zeros(shape, bool), "rank": np.full(shape, 6), "mean": np.zeros(shape)}
  cx = (parts.index(shapes.FACTOR_CONCEPTS["pos_x"][0]),
        selectivity.CONCEPT_METRICS.index(shapes.FACTOR_CONCEPTS["pos_x"][1]))
  lum = (parts.index("body"), selectivity.CONCEPT_METRICS.index("luminance"))
  for u, rank, sel in ((4, 1, True), (3, 2, True)):
    stats["rank"][u][cx], stats["selective"][u][cx] = rank, sel
  for u, rank, sel in ((0, 1, True), (2, 2, True), (5, 3, False)):
    stats["rank"][u][lum], stats["selective"][u][lum] = rank, sel
  stats["mean"][:, cx[0], cx[1]] = truth[:, 0]  # measured change ranks like the truth
  check = stage.truth_check(stats, np.arange(6), parts, truth, names, 2, shapes.FACTOR_CONCEPTS)
  assert check["per_factor"]["pos_x"]["precision"] == 0.5
  assert check["per_factor"]["body_lum"]["precision"] == 1.0
  assert check["mean_precision"] == 0.75 and check["chance"] == 2 / 6
  assert check["per_factor"]["pos_x"]["spearman"] == pytest.approx(1.0)


def test_measured_truth_is_the_sweeps_reading_of_the_measured_starts():
  """measuring.measured_truth (per start sample) against the sweep stage's factor_deltas
  (its own mean over the start samples it is given), on the measured subset and on all."""
  G = generators.load("shapes")
  rng = np.random.default_rng(0)
  cls = np.array([0, 0, 1, 2, 2, 3])
  start = np.asarray(G.mapping(rng.normal(size=(6, G.z_dim)).astype(np.float32), cls))[:, 0]
  dirs = rng.normal(size=(3, G.w_dim)) * 2.0  # large: hues wrap
  w = (start[None, :, None] + dirs[:, None, None] * np.linspace(0, 1, 3)[None, None, :, None]).astype(np.float32)
  blk = {"w": w, "cls": cls}
  for n in (4, 6):
    per_start, names = measuring.measured_truth(G, [blk, blk], n)
    want, want_names, _ = sweep.factor_deltas(G, w[:, sweep.pick_starts(cls, n)])
    assert sorted(names) == sorted(want_names) and per_start.shape == (6, n, len(names))
    got = per_start.mean(1)[:, [names.index(f) for f in want_names]]
    np.testing.assert_allclose(got, np.concatenate([want, want]), atol=1e-6)


def test_pick_starts_spreads_over_classes():
  cls = np.array([0, 0, 0, 1, 1, 2])
  np.testing.assert_array_equal(sweep.pick_starts(cls, 3), [0, 3, 5])
  np.testing.assert_array_equal(sweep.pick_starts(cls, 5), [0, 1, 3, 4, 5])


def test_measure_compiles_once_for_any_number_of_images():
  G = generators.load("shapes")
  key = jax.random.PRNGKey(5)
  ws = segment.sample_ws(G, np.arange(G.num_classes), 13, 0.7, key)
  labels, names = segment.ground_truth_labels(G, ws[:2], 32)
  seg = segment.fit(G, ws[:2], labels, names, layers="all", size="XS", key=key, epochs=1, batch_size=1,
                    lr=1e-3, weight_decay=0.0, lr_step_epochs=1, lr_gamma=1.0)
  w = np.asarray(ws[:, 0])
  before = measuring._measure._cache_size()   # the measuring library's jitted core
  small = stage.measure(G, seg, w[:5], batch_size=8, max_components=2)
  big = stage.measure(G, seg, w, batch_size=8, max_components=2)  # two batches, the last padded
  assert measuring._measure._cache_size() == before + 1
  assert big["area"].shape == (13, len(names)) and big["ell_width"].shape == (13, len(names), 2)
  np.testing.assert_allclose(big["area"][:5], small["area"], rtol=1e-6)
  # A repeated w is measured once and its values copied: the rows of w[:5] twice over, in
  # another order, get exactly the values they got alone.
  again = stage.measure(G, seg, w[[4, 0, 1, 2, 3, 0, 4]], batch_size=8, max_components=2)
  for k in small:
    np.testing.assert_array_equal(again[k], small[k][[4, 0, 1, 2, 3, 0, 4]])


def test_the_segmenter_trained_early_is_the_one_the_stage_trains(tmp_path, monkeypatch, capsys):
  # One-process CPU runs train the segmenter on a background thread from the start of the
  # run (Stage.early); the stage takes it: the same checkpoint, bit for bit, and the same
  # measurements as a run that trains it in the stage. (The segmenter of the small config
  # needs a few MiB: `early_bytes`, far under EARLY_SHARE of any budget the tests run on.)
  config = small_config()
  ahead, inline = str(tmp_path / "ahead"), str(tmp_path / "inline")
  for wd in (ahead, inline):
    fake_sweep(wd, config)
  pipeline.run(config, ahead)
  assert "trained while the earlier stages ran" in capsys.readouterr().out
  # Early training that would need more than EARLY_SHARE of the memory budget is left to
  # the stage (the other stages' calls are sized without it).
  monkeypatch.setattr(stage, "EARLY_SHARE", 0.0)
  pipeline.run(config, inline)
  assert "trained while the earlier stages ran" not in capsys.readouterr().out
  a = io.load_checkpoint(os.path.join(ahead, "quantify", "segmenter"))
  b = io.load_checkpoint(os.path.join(inline, "quantify", "segmenter"))
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(la) == len(lb) > 0
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  with open(os.path.join(ahead, "quantify", "selectivity.csv")) as f1, \
      open(os.path.join(inline, "quantify", "selectivity.csv")) as f2:
    assert f1.read() == f2.read()


def test_early_work_stops_when_the_run_ends(tmp_path, monkeypatch):
  # A stage before quantify fails while the segmenter trains ahead: the run ends with that
  # stage's error and the training stops at its next epoch (errors.Stopped), not later.
  import threading
  from ml_collections import ConfigDict
  from lis_jax.stages.base import Stage
  config = small_config()
  config.quantify.epochs = 100_000   # hours, were it not stopped
  config.stages = ("boom", "quantify")
  fake_sweep(str(tmp_path), config)
  started, outcome = threading.Event(), []
  real = segment.train

  def train(*args, **kwargs):
    started.set()
    try:
      return real(*args, **kwargs)
    except errors.Stopped:
      outcome.append("stopped")
      raise
  monkeypatch.setattr(segment, "train", train)

  def boom(ctx):
    assert started.wait(300)
    raise errors.PipelineError("boom")
  registry = dict(stages.REGISTRY, boom=Stage(name="boom", requires=(), default_config=ConfigDict,
                                              run=boom, load=lambda workdir: None))
  with pytest.raises(errors.PipelineError, match="boom"):
    pipeline.run(config, str(tmp_path), registry=registry)
  assert outcome == ["stopped"]
  assert not [t for t in threading.enumerate() if t.name.startswith("lis_jax-early")]
  assert not os.path.exists(os.path.join(str(tmp_path), "quantify", "segmenter"))   # writes nothing
