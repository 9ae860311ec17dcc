"""Sharded over 4 (simulated CPU) devices equals one device, for every batched stage function."""
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Same float32 programs partitioned differently: only per-device summation order may differ.
RTOL, ATOL = 1e-5, 1e-5

_SCRIPT = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh
from lis_jax import distribute, linking
from lis_jax.stages import counterfactual as counterfactuals
from lis_jax.stages import paired_data, sweep as sweeps
from tests import tiny_models
from lis_jax.stages import boundary

assert len(jax.devices()) == 4, jax.devices()
G, clf = tiny_models.generator(), tiny_models.classifier()
key = jax.random.PRNGKey(0)
out = {}
meshes = {1: Mesh(np.asarray(jax.devices()[:1]), ("data",)), 4: Mesh(np.asarray(jax.devices()), ("data",))}
res = {}
real_generate = paired_data._generate
for n, mesh in meshes.items():
  G_r, clf_r = distribute.replicate((G, clf), mesh)
  seen = {"prev": [], "ready": []}   # at each call: were the previous call's outputs finished?

  def generate(*a, **k):
    seen["ready"].append(all(x.is_ready() for x in seen["prev"]))
    o = real_generate(*a, **k)
    seen["prev"] = jax.tree_util.tree_leaves(o)
    return o
  paired_data._generate = generate
  pd = paired_data.generate_chunk(G_r, clf_r, key, 2, 0, 20, 8, 0.7, mesh)   # 3 batches of 8
  paired_data._generate = real_generate
  out[f"waits_{n}"] = {"one_at_a_time": distribute.one_call_at_a_time(mesh), "ready": seen["ready"][1:]}
  link = linking.Link(params=linking.fit_linear(pd["r"], pd["w"], "ridge"), kind="ridge")
  link_r, r0, cls0 = distribute.replicate((link, pd["r"][:3], pd["cls"][:3]), mesh)
  units, values = np.array([0, 3, 7, 11], np.int32), np.linspace(0, 2, 12, dtype=np.float32).reshape(4, 3)
  sw = sweeps._sweep_block(G_r, clf_r, link_r, r0, units, values, cls0, batch_size=8, reclassify=True, mesh=mesh)
  compiled = sweeps._sweep_block.lower(G_r, clf_r, link_r, r0, units, values, cls0, batch_size=8,
                                       reclassify=True, mesh=mesh).compile()
  out[f"waits_{n}"]["sweep_all_gathers"] = "all-gather" in compiled.as_text()
  m = 8
  order = np.argsort(pd["logits"][:m], axis=-1)   # search from the predicted class to the runner-up
  ins = distribute.shard_batch((pd["r"][:m], order[:, -1].astype(np.int32), order[:, -2].astype(np.int32),
                                counterfactuals.initial_shift(key, jnp.arange(m), clf.feature_dim),
                                np.ones(m, bool)), mesh)
  cf = counterfactuals._search(G_r, clf_r, link_r, *ins, lr=0.01, max_steps=30, check_every=3,
                               w_origin=0.6, w_cos=10.0, mode="reference")
  cfc = counterfactuals._search(G_r, clf_r, link_r, *ins, lr=0.01, max_steps=30, check_every=3,
                                w_origin=0.6, w_cos=10.0, mode="reference", compact_rows=4)
  bd = boundary._crossings(G_r, clf_r, link_r, ins[0], cf["shift"], ins[1], ins[2], n_grid=3, n_iter=4)
  res[n] = dict(pd_r=pd["r"], pd_w=pd["w"], sw_w=sw["w"], sw_img=sw["img"], sw_rp=sw["r_prime"],
                cf_shift=cf["shift"], cf_steps=cf["steps"], cf_success=cf["success"],
                cfc_shift=cfc["shift"], cfc_steps=cfc["steps"], cfc_success=cfc["success"],
                bd_leave=np.nan_to_num(bd["t_leave"], nan=-1.0), bd_reach=np.nan_to_num(bd["t_reach"], nan=-1.0))
  out[f"devices_{n}"] = {"sweep_img": len(sw["img"].sharding.device_set),
                         "cf_shift": len(cf["shift"].sharding.device_set),
                         "bd_leave": len(bd["t_leave"].sharding.device_set)}
out["max_abs_diff"] = {k: float(np.max(np.abs(np.asarray(res[1][k], np.float64) - np.asarray(res[4][k], np.float64))))
                       for k in res[1]}
out["max_abs"] = {k: float(np.max(np.abs(np.asarray(res[1][k], np.float64)))) for k in res[1]}
out["cf_successes"] = int(np.sum(res[1]["cf_success"]))
print("RESULT", json.dumps(out))
"""


def test_sharded_equals_single_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  out = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  res = json.loads(out.stdout.split("RESULT", 1)[1])
  assert res["devices_4"] == {"sweep_img": 4, "cf_shift": 4, "bd_leave": 4}, res   # really spread over 4 devices
  assert 4 <= res["cf_successes"] < 8, res   # both outcomes, and the compacted branch (<= 4 left) runs
  # Over several CPU devices the sweep's block holds all-gathers (XLA's optimised program), so
  # sharded calls go one at a time: each paired_data batch is finished before the next is sent
  # (several in flight deadlocked XLA:CPU's rendezvous; distribute.one_call_at_a_time).
  assert res["waits_4"]["sweep_all_gathers"] and res["waits_4"]["one_at_a_time"], res
  assert res["waits_4"]["ready"] == [True, True], res
  assert not res["waits_1"]["one_at_a_time"], res   # one device: calls stay in flight together
  for k, diff in res["max_abs_diff"].items():
    if k in ("cf_steps", "cf_success", "cfc_steps", "cfc_success", "bd_leave", "bd_reach"):
      assert diff == 0, (k, diff)        # discrete outcomes must agree exactly
    elif k == "sw_img":
      assert diff <= 1, (k, diff)        # uint8: float noise may truncate to a neighbour
    else:
      assert diff <= ATOL + RTOL * res["max_abs"][k], (k, diff)


# ----------------------------------------------------------------------------- multi-process helpers

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lis_jax import distribute  # noqa: E402


@pytest.mark.parametrize("n,count", [(0, 1), (7, 1), (7, 2), (10, 3), (2, 4), (64, 5)])
def test_my_items_partition(n, count):
  shares = [distribute.my_items(n, p, count) for p in range(count)]
  np.testing.assert_array_equal(np.sort(np.concatenate(shares)), np.arange(n))   # each item once
  sizes = [s.size for s in shares]
  assert max(sizes) - min(sizes) <= 1, sizes


def test_process_setup_from_flags_env_and_auto():
  env = {distribute.ENV_COORDINATOR: "10.0.0.1:1234", distribute.ENV_NUM_PROCESSES: "4",
         distribute.ENV_PROCESS_ID: "3"}
  assert distribute.process_setup(environ={}) == distribute.ProcessSetup("single")
  assert distribute.process_setup(auto=True, environ={}) == distribute.ProcessSetup("auto")
  assert distribute.process_setup(environ=env) == distribute.ProcessSetup("explicit", "10.0.0.1:1234", 4, 3)
  # flags win over the environment
  assert (distribute.process_setup("h:1", 2, 0, environ=env)
          == distribute.ProcessSetup("explicit", "h:1", 2, 0))
  assert distribute.process_setup(num_processes=1, environ={}) == distribute.ProcessSetup("single")
  with pytest.raises(distribute.DistributedError, match="process id not set"):
    distribute.process_setup("h:1", 2, environ={})
  with pytest.raises(distribute.DistributedError, match=r"process id 2 is not in \[0, 2\)"):
    distribute.process_setup("h:1", 2, 2, environ={})
  with pytest.raises(distribute.DistributedError, match="is not an integer"):
    distribute.process_setup(environ={distribute.ENV_NUM_PROCESSES: "two"})


def test_single_process_meshes():
  import jax
  assert distribute.process_count() == 1 and distribute.is_main()
  assert distribute.global_mesh().devices.shape == (1, jax.device_count())
  assert list(distribute.data_mesh().devices) == jax.local_devices()


def test_coordinator_address_needs_a_port():
  assert distribute.parse_address("10.0.0.1:1234") == ("10.0.0.1", 1234)
  assert distribute.parse_address("[::1]:80") == ("::1", 80)
  for bad in ("10.0.0.1", "host:", ":123", "host:http", "host:70000", "host:0"):
    with pytest.raises(distribute.DistributedError, match="is not host:port"):
      distribute.parse_address(bad)
  with pytest.raises(distribute.DistributedError, match="is not host:port"):
    distribute.process_setup("localhost", 2, 1, environ={})


def test_differences_name_fields_and_processes():
  a = {"config": {"seed": 0, "paired_data": {"n_per_class": 48}, "stages": ["a", "b"]}, "code": "x"}
  b = {"config": {"seed": 7, "paired_data": {"n_per_class": 48}, "stages": ["a", "b"]}, "code": "x"}
  c = {"config": {"seed": 0, "paired_data": {"n_per_class": 40}, "stages": ["a"]}, "code": "x"}
  assert distribute.differences({0: a, 1: a}) == ""
  assert distribute.differences({0: a, 1: b, 2: a}) == "config.seed (processes 0, 2: 0; process 1: 7)"
  assert distribute.differences({0: a, 1: c}) == (
      'config.paired_data.n_per_class (process 0: 48; process 1: 40), '
      'config.stages (process 0: ["a","b"]; process 1: ["a"])')
  assert distribute.differences({0: a, 1: {**a, "extra": 1}}) == (
      'extra (process 0: "<absent>"; process 1: 1)')
  # sha256 per top-level field, over canonical JSON (key order does not matter)
  assert distribute.fingerprint({"c": {"x": 1, "y": 2}}) == distribute.fingerprint({"c": {"y": 2, "x": 1}})


def test_timeouts_are_whole_positive_seconds():
  assert distribute.Timeouts().barrier >= 600   # generous: a merge at the paper's scale
  for bad in (0, -5, 1.5, True):
    with pytest.raises(distribute.DistributedError, match="whole number of seconds"):
      distribute.Timeouts(barrier=bad)


def test_agree_and_barrier_do_nothing_with_one_process():
  distribute.agree({"config": {"seed": 0}})   # no jax.distributed needed
  distribute.barrier("x", timeout=0)
  distribute.check_wait(0.0, "nothing")


def test_startup_fields_tell_model_files_apart(tmp_path):
  """Two processes whose converted generator checkpoints differ (same path, other weights)
  disagree on models.generator; the same weights agree."""
  import ml_collections
  from lis_jax import io, main
  fields = {}
  for p, scale in ((0, 1.0), (1, 2.0), (2, 1.0)):
    wd = tmp_path / f"w{p}"
    io.save_checkpoint(str(wd / "gen"), {"w": np.full((3,), scale, np.float32)}, {"kind": "test"})
    config = ml_collections.ConfigDict({"generator": "gen", "classifier": "tiny-resnet-random",
                                        "seed": 0, "stages": ("paired_data",)})
    fields[p] = main.startup_fields(config, str(wd))   # the same relative path on each host
  assert fields[0]["models"]["generator"] == io.params_sha256(str(tmp_path / "w0" / "gen"))
  diff = distribute.differences(fields)
  assert diff.startswith("models.generator (processes 0, 2: ") and "process 1: " in diff, diff
  assert "config" not in diff and "code" not in diff


class _FakeStore:
  """The coordination service's key-value store as `distribute` uses it (one process's view)."""

  def __init__(self):
    self.kv = {}

  def key_value_set(self, key, value, allow_overwrite=False):
    assert allow_overwrite or key not in self.kv, key
    self.kv[key] = value

  def key_value_dir_get(self, prefix):
    return [(k, v) for k, v in sorted(self.kv.items()) if k.startswith(prefix)]


def _as_process(monkeypatch, store, index, count=2, barrier_s=1):
  monkeypatch.setattr(distribute, "_client", lambda: store)
  monkeypatch.setattr(distribute, "process_index", lambda: index)
  monkeypatch.setattr(distribute, "process_count", lambda: count)
  monkeypatch.setattr(distribute, "_timeouts", distribute.Timeouts(barrier=barrier_s))
  monkeypatch.setattr(distribute, "_calls", {"agree": 0, "barrier": 0})


def test_barrier_passes_when_all_arrive_and_names_the_missing(monkeypatch):
  store = _FakeStore()
  _as_process(monkeypatch, store, 1)
  store.kv["lis_jax/barrier/1/0"] = "sweep:run"   # process 0 is there already
  distribute.barrier("sweep:run")
  with pytest.raises(distribute.DistributedError) as e:   # process 0 never comes to the next
    distribute.barrier("sweep:merge")
  assert e.value.abandon and "process 1: waited 1 s at barrier 'sweep:merge' for process(es) 0" in str(e.value)


def test_barrier_stops_when_a_peer_failed(monkeypatch):
  store = _FakeStore()
  _as_process(monkeypatch, store, 0, barrier_s=3600)
  distribute.report_failure("disk full\n  on /data")
  store.kv["lis_jax/error/1"] = "process 1: /data/w: No space left on device"
  with pytest.raises(distribute.DistributedError, match="process 0 stops: process 1 failed: "
                                                        "process 1: /data/w: No space left"):
    distribute.barrier("sweep:run")   # at once, not after the deadline
  assert store.kv["lis_jax/error/0"] == "disk full on /data"   # one line for the others


def test_barrier_names_processes_at_different_barriers(monkeypatch):
  store = _FakeStore()
  _as_process(monkeypatch, store, 0)
  store.kv["lis_jax/barrier/1/1"] = "link:done"
  with pytest.raises(distribute.DistributedError, match="different barriers: process 0: "
                                                        "sweep:run; process 1: link:done"):
    distribute.barrier("sweep:run")
