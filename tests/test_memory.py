"""Memory budgets and batch sizes from XLA's memory analysis (lis_jax/memory.py)."""
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
