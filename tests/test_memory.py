"""Memory budgets and batch sizes from XLA's memory analysis (lis_jax/memory.py)."""
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lis_jax import batching, generators, memory
from lis_jax.errors import PipelineError

F32 = 4  # bytes per float32


def _matmul(W, x):
  return x @ W


def test_memory_analysis_of_a_matmul_in_closed_form():
  # x [B, d] @ W [d, k]: XLA's arguments are the batch and W, its output B x k floats.
  d, k = 100, 30
  W = np.ones((d, k), np.float32)
  rows = np.zeros((5, d), np.float32)
  for b in (2, 7):
    m = memory.analyse(_matmul, (W,), rows, b)
    assert m.argument == (b * d + d * k) * F32
    assert m.output == b * k * F32
    assert m.rows == b * d * F32
    assert m.need >= (b * d + b * k) * F32  # + temporaries, if any
    assert m.flops == 2 * b * d * k  # a dot: one multiply and one add per term
  model = memory.LinearModel.through(memory.analyse(_matmul, (W,), rows, 2),
                                     memory.analyse(_matmul, (W,), rows, 7))
  assert model.per_row == pytest.approx((d + k) * F32)


def test_linear_model_largest_batch():
  model = memory.LinearModel(fixed=100.0, per_row=10.0)
  assert model.largest(100.0 + 10 * 7) == 7
  assert model.largest(100.0 + 10 * 7 - 1) == 6
  assert model.largest(50.0) == 0


def test_budget_sources(tmp_path):
  assert memory.device_budget(1.5).bytes == int(1.5 * memory.GiB)
  assert memory.device_budget(1.5).source == "config.memory_gb"
  (tmp_path / "meminfo").write_text("MemTotal:  100 kB\nMemAvailable:   2048 kB\n")
  assert memory._meminfo_available(str(tmp_path / "meminfo")) == 2048 * 1024
  (tmp_path / "memory.max").write_text("1000\n")
  (tmp_path / "memory.current").write_text("400\n")
  assert memory._cgroup_left(str(tmp_path)) == 600
  (tmp_path / "memory.max").write_text("max\n")
  assert memory._cgroup_left(str(tmp_path)) is None
  b = memory.device_budget()   # this machine: a CPU (no allocator statistics) or a GPU
  assert b.bytes > 0 and b.source


@pytest.fixture(scope="module")
def world():
  G = generators.load("shapes")
  z = np.random.default_rng(0).normal(size=(11, G.z_dim)).astype(np.float32)
  ws = np.asarray(G.mapping(z, np.arange(11) % G.num_classes, psi=0.7))
  return G, ws


def _synth(G, ws):
  return G.synthesis(ws)


def test_tiny_budget_shrinks_batches_and_keeps_outputs(world):
  G, ws = world
  ample = memory.Budget(64 * memory.GiB, "test")
  big = memory.choose_batch(_synth, ws, 8, G, budget=ample, call="synthesis", setting="x.batch_size")
  assert big.batch == 8
  # A budget that holds three images' worth of the call (from its analysis at batch 1 and 4).
  model = big.model
  tiny = memory.Budget(int((model.at(3) + 0.5 * model.per_row) / memory.SAFETY), "test")
  small = memory.choose_batch(_synth, ws, 8, G, budget=tiny, call="synthesis", setting="x.batch_size")
  assert 1 <= small.batch < 8
  assert small.memory.need <= memory.SAFETY * tiny.bytes
  want = batching.map_batches(_synth, ws, 8, G)
  got = memory.map_batches(_synth, ws, 8, G, budget=tiny, call="synthesis", setting="x.batch_size")
  # The world's synthesis is row-wise (no reduction over the batch): the same images.
  np.testing.assert_array_equal(got, want)


def test_a_call_that_never_fits_is_one_line(world):
  G, ws = world
  with pytest.raises(PipelineError, match=r"^sweep: synthesis needs .* at batch 1, .*; lower "
                                          r"sweep\.batch_size") as e:
    memory.choose_batch(_synth, ws, 8, G, budget=memory.Budget(1000, "test"), call="synthesis",
                        setting="sweep.batch_size", stage="sweep")
  assert "\n" not in str(e.value)


def test_out_of_memory_at_run_time_is_one_line():
  huge = jax.jit(lambda x: jnp.zeros((1 << 42,), jnp.float32) + x)   # 16 TiB
  with pytest.raises(PipelineError, match=r"^quantify: out of memory in measure at batch 7 .*lower "
                                          r"quantify\.batch_size") as e:
    with memory.guard("quantify", "measure", 7, "quantify.batch_size"):
      huge(1.0).block_until_ready()
  assert "\n" not in str(e.value)
  with pytest.raises(ZeroDivisionError):   # other errors pass through unchanged
    with memory.guard("quantify", "measure", 7, "quantify.batch_size"):
      1 / 0


# Largest difference, relative to an array's largest magnitude, between a pipeline run at
# the configured batches and one whose budget forces smaller ones (tiny models, CPU):
# XLA's kernels may sum in another order at another batch size. Measured 3e-7 on logits
# (float32 rounding: 6e-5 on ~200) and 8.2e-6 on the counterfactual's softmax
# probabilities (a logit error of 6e-5 moves a probability by up to 6e-5 of itself);
# 12x that for other CPUs' kernels.
RUN_RTOL = 1e-4


def _npz_files(d):
  return sorted(p.relative_to(d) for p in d.rglob("*.npz") if "params" not in p.relative_to(d).parts)


def test_a_tiny_budget_across_stages_shrinks_batches_same_outputs(tmp_path):
  """configs/tiny.py's stages on tiny models: with ample memory every call runs at its
  configured batch; with a budget that holds little more than one row of the largest call,
  the budgeted calls run at smaller batches (memory._CHOICES) and every output file holds
  the same values."""
  from lis_jax import pipeline
  from tests.test_pipeline_e2e import _tiny_models_config
  memory._CHOICES.clear()
  ample = _tiny_models_config(memory_gb=64.0)
  pipeline.run(ample, str(tmp_path / "ample"))
  big = {c.call: c for c in memory._CHOICES.values()}
  assert all(c.batch == c.max_batch for c in big.values()), [c.line() for c in big.values()]
  # The budget: the largest call's need at batch 2 (its analysed line), at SAFETY.
  need2 = max(c.model.at(2) for c in big.values())
  gb = need2 / memory.SAFETY / memory.GiB
  memory._CHOICES.clear()
  try:
    pipeline.run(_tiny_models_config(memory_gb=gb), str(tmp_path / "tiny"))
  finally:
    memory.config_budget(ample)   # the process default back to ample for later tests
  small = {c.call: c for c in memory._CHOICES.values()}
  shrunk = {k for k, c in small.items() if c.batch < c.max_batch}
  assert {"generate", "search"} <= shrunk, [c.line() for c in small.values()]
  assert all(c.peak <= memory.SAFETY * c.budget.bytes for c in small.values())
  files = _npz_files(tmp_path / "ample")
  assert files == _npz_files(tmp_path / "tiny") and files
  worst = (0.0, "")
  for rel in files:
    a, b = np.load(tmp_path / "ample" / rel), np.load(tmp_path / "tiny" / rel)
    assert a.files == b.files
    for k in a.files:
      if k.startswith("__"):   # the file's checksum: of the bytes, which differ by rounding
        continue
      if np.issubdtype(a[k].dtype, np.floating):
        scale = max(1.0, float(np.max(np.abs(a[k]), initial=0.0)))
        np.testing.assert_allclose(a[k], b[k], atol=RUN_RTOL * scale, rtol=0, err_msg=f"{rel}:{k}")
        worst = max(worst, (float(np.max(np.abs(a[k] - b[k]), initial=0.0)) / scale, f"{rel}:{k}"))
      else:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{rel}:{k}")
  print(f"largest relative difference {worst[0]:.3g} ({worst[1]}); shrunk: {sorted(shrunk)}")


def test_peak_sampler_sees_an_allocation():
  with memory.PeakSampler() as s:
    a = np.ones(64 * memory.MiB // 8)   # 64 MiB, touched
    time.sleep(20 * memory.SAMPLE_S)
    del a
  assert s.rss >= 60 * memory.MiB and s.vm >= 60 * memory.MiB


def test_measured_factor_and_the_limit_it_sets(world, monkeypatch):
  assert memory.measured_factor(100 * memory.MiB, 10 * memory.MiB) == 1.0   # never below 1
  assert memory.measured_factor(100 * memory.MiB, 264 * memory.MiB) == pytest.approx(2.0)
  G, ws = world

  monkeypatch.setattr(memory, "MEASURE_SLACK", 0)

  class Grown:   # a call measured at twice its analysed need
    def __init__(self, need):
      self.rss = self.vm = 2 * need

    def grown(self, budget):
      return self.vm

  calls = []

  def fake_measure(fn, args, rows, batch, budget, call):
    calls.append(batch)
    return Grown(memory.analyse(fn, args, rows, batch).need)

  monkeypatch.setattr(memory, "measure", fake_measure)
  model = memory.choose_batch(_synth, ws, 8, G, budget=memory.Budget(64 * memory.GiB, "test"),
                              call="synthesis", setting="x.batch_size").model
  bytes_ = int(model.at(6) / memory.SAFETY)
  analysed_only = memory.choose_batch(_synth, ws, 8, G, budget=memory.Budget(bytes_, "test"),
                                      call="synthesis", setting="x.batch_size")
  host = memory.Budget(2 * bytes_, "test", host=True, virtual=True)
  measured = memory.choose_batch(_synth, ws, 8, G, budget=host, call="synthesis, measured",
                                 setting="x.batch_size")
  assert calls == [1]   # run once, at the smallest probe
  assert measured.factor == pytest.approx(2.0)
  # Twice the budget at twice the measured bytes: the batch the analysis alone gives.
  assert measured.batch == analysed_only.batch < 8
  assert measured.peak <= memory.SAFETY * host.bytes


def test_cgroup_v1_limit(tmp_path):
  (tmp_path / "cgroup").write_text("4:memory:/job/1\n3:cpu:/\n")
  d = tmp_path / "memory" / "job" / "1"
  d.mkdir(parents=True)
  (d / "memory.limit_in_bytes").write_text("1000\n")
  (d / "memory.usage_in_bytes").write_text("300\n")
  assert memory._cgroup_v1_left(str(tmp_path), str(tmp_path / "cgroup")) == 700
  (d / "memory.limit_in_bytes").write_text(f"{1 << 62}\n")   # v1's "no limit"
  assert memory._cgroup_v1_left(str(tmp_path), str(tmp_path / "cgroup")) is None


_CHUNKS_SCRIPT = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from lis_jax import distribute, memory
mesh = distribute.data_mesh()
waits = []
real = jax.block_until_ready
jax.block_until_ready = lambda x: (waits.append(1), real(x))[1]
x = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
run = lambda fn: memory.map_chunks(fn, x, 8, budget=memory.Budget(64 * memory.GiB, "test"),
                                   call=fn.__name__, setting="t", multiple=4,
                                   place=lambda c: distribute.shard_batch(c, mesh))
rowwise = jax.jit(lambda rows: rows * 2.0)
rowwise.__name__ = "rowwise"
mixing = jax.jit(lambda rows: rows - rows.mean(0))   # a batch mean: an all-reduce over devices
mixing.__name__ = "mixing"
out = {"devices": len(jax.devices())}
out["rowwise_ok"] = bool(np.array_equal(run(rowwise), 2 * x))
out["rowwise_waits"] = len(waits)
got = run(mixing)
want = np.concatenate([c - c.mean(0) for c in np.split(x, 5)])
out["mixing_ok"] = bool(np.allclose(got, want, rtol=0, atol=1e-5))
out["mixing_waits"] = len(waits) - out["rowwise_waits"]
print("RESULT", json.dumps(out))
"""


def test_map_chunks_waits_for_chunks_with_collectives_on_cpu_devices():
  """On 4 forced host devices, map_chunks waits for each sharded chunk whose call exchanges
  data between the devices (several such chunks in flight deadlocked XLA:CPU's collectives:
  the invariances stage under load), and only for those."""
  import os
  import subprocess
  import sys
  from conftest import ROOT
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _CHUNKS_SCRIPT], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  import json
  res = json.loads(out.stdout.split("RESULT", 1)[1])
  assert res["devices"] == 4, res
  assert res["rowwise_ok"] and res["mixing_ok"], res
  assert res["rowwise_waits"] == 0, res   # row-wise over the shards: no collectives, no waiting
  assert res["mixing_waits"] == 5, res    # 40 rows in 5 chunks of 8, each waited for


@pytest.mark.parametrize("pad_flops, sizes", [(np.inf, {8}), (0.0, {8, 3})])
def test_a_costly_last_batch_pads_only_to_its_rows(monkeypatch, pad_flops, sizes):
  # 19 rows at batch 8: the last 3 are padded to 8 (one compile) unless the 5 padded rows'
  # work (2 d k FLOPs each, XLA's cost analysis: the closed form above) is over PAD_FLOPS.
  monkeypatch.setattr(memory, "PAD_FLOPS", pad_flops)
  padded = []   # the size each batch was padded to, as the maps call pad_batch

  def record(x, size):
    padded.append(size)
    return batching_pad(x, size)
  batching_pad = batching.pad_batch
  monkeypatch.setattr(batching, "pad_batch", record)
  monkeypatch.setattr(memory, "pad_batch", record)
  W = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
  x = np.random.default_rng(1).normal(size=(19, 16)).astype(np.float32)
  budget = memory.Budget(64 * memory.GiB, "test")
  for i, m in enumerate((memory.map_batches, memory.map_chunks)):
    padded.clear()
    got = m(jax.jit(_matmul), x, 8, W, budget=budget, call=f"matmul{i}", setting="x.batch_size")
    np.testing.assert_allclose(got, x @ W, rtol=1e-5)   # float32 dots of 16 terms
    assert set(padded) == sizes and len(padded) == 3


def test_two_calls_at_once_on_a_cpu_give_the_rows_in_order(monkeypatch):
  # 37 rows at batch 4 (10 calls, the last padded): the first call alone on the caller's
  # thread (it compiles), the rest from two worker threads; the rows are x @ W in order.
  import threading
  threads = []
  mm = jax.jit(_matmul)

  def fn(W, rows):
    threads.append(threading.current_thread().name)
    return mm(W, rows)
  W = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
  x = np.random.default_rng(1).normal(size=(37, 16)).astype(np.float32)
  one = batching.map_batches(fn, x, 4, W)
  assert threads == ["MainThread"] * 10
  threads.clear()
  two = batching.map_batches(fn, x, 4, W, workers=2)
  np.testing.assert_array_equal(two, one)   # the same call on the same batches
  np.testing.assert_allclose(two, x @ W, rtol=1e-5)   # float32 dots of 16 terms
  assert threads[0] == threading.current_thread().name and len(threads) == 10
  assert {t.rsplit("_", 1)[0] for t in threads[1:]} == {"lis_jax-batch"}


def test_calls_at_once_only_where_safe_and_it_fits(monkeypatch):
  W = np.ones((16, 4), np.float32)
  x = np.zeros((8, 16), np.float32)
  choice = memory.choose_batch(jax.jit(_matmul), x, 8, W, budget=memory.Budget(64 * memory.GiB, "t"),
                               call="matmul_at_once", setting="t")
  monkeypatch.setattr(memory.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
  assert memory.calls_at_once(choice) == memory.CPU_CALLS_AT_ONCE == 2   # the CPU backend here
  monkeypatch.setattr(memory.os, "sched_getaffinity", lambda pid: {0})
  assert memory.calls_at_once(choice) == 1   # one core: nothing to gain
  monkeypatch.setattr(memory.os, "sched_getaffinity", lambda pid: {0, 1})
  collective = dataclasses.replace(choice, memory=dataclasses.replace(choice.memory, collectives=True))
  assert memory.calls_at_once(collective) == 1   # its all-gathers would wait on each other
  cpu = jax.devices("cpu")[0]
  assert memory.calls_at_once(choice, [cpu]) == 2   # one CPU device: nothing to wait on
  assert memory.calls_at_once(choice, [cpu, cpu]) == 1   # a caller's calls over two CPU devices
  # two calls' expected bytes, PLAUSIBLE x each, against SAFETY x the budget
  need = choice.peak * 2 * memory.PLAUSIBLE / memory.SAFETY
  fits = dataclasses.replace(choice, budget=memory.Budget(int(need) + 8, "t"))
  tight = dataclasses.replace(choice, budget=memory.Budget(int(need) - 8, "t"))
  assert memory.calls_at_once(fits) == 2 and memory.calls_at_once(tight) == 1
  monkeypatch.setattr(memory.jax, "default_backend", lambda: "gpu")
  assert memory.calls_at_once(choice) == 1   # accelerators queue calls themselves
