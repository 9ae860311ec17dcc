"""Safe StyleGAN-XL snapshot reading: fixture structure, malicious and bad pickles.

Outside truths: the reference fixtures (FIXTURES.md and the npz outputs of the same
networks), and torch itself (a module pickled by torch reads back as its state_dict).
"""
import collections
import functools
import io
import os
import pickle
import sys
import types
import warnings

import numpy as np
import pytest
import torch

from converters import sgxl_pickle
from converters.sgxl_pickle import InertCall, Node, SnapshotError, load_pickle, load_snapshot

FIXTURE_NAMES = ("sgxl_stem16", "sgxl_sr64")
GENERATOR_CLASS = {"sgxl_stem16": "Generator", "sgxl_sr64": "SuperresGenerator"}
# Attributes FIXTURES.md promises on every synthesis layer.
LAYER_ATTRS = ("is_torgb", "in_channels", "out_channels", "in_size", "out_size", "conv_kernel",
               "conv_clamp", "up_factor", "down_factor", "padding")
LAYER_BUFFERS = ("up_filter", "down_filter", "magnitude_ema")
# w_avg + psi * (ws_psi1 - w_avg) recomputed in float32 vs the reference's float32 result:
# a few ulps of |w| ~ 1.
TRUNCATION_ATOL = 1e-5


@pytest.fixture(scope="module", params=FIXTURE_NAMES)
def fixture(request, fixtures_dir):
  """(name, loaded snapshot, reference npz) for one fixture pickle."""
  name = request.param
  snap = load_snapshot(str(fixtures_dir / f"{name}.pkl"))
  with np.load(fixtures_dir / f"{name}.npz") as npz:
    ref = dict(npz)
  return name, snap, ref


# ----------------------------------------------------------------------------- fixture pickles


def test_snapshot_keys_and_generator_class(fixture):
  name, snap, _ = fixture
  assert {"G", "D", "G_ema", "training_set_kwargs", "progress"} <= set(snap)
  for key in ("G", "D", "G_ema"):
    assert isinstance(snap[key], Node)
  G = snap["G_ema"]
  assert G.class_name == GENERATOR_CLASS[name]
  assert G.source == "persistent" and G.version == sgxl_pickle.PERSISTENCE_VERSION
  assert isinstance(G.module_src, str)  # kept as text, never executed
  assert {"mapping", "synthesis"} <= set(G.children)


def test_reference_code_never_imported(fixture):
  del fixture  # loading happened in the fixture
  for module in ("torch_utils", "torch_utils.persistence", "dnnlib", "dill", "training"):
    assert module not in sys.modules


def test_mapping_structure(fixture):
  _, snap, ref = fixture
  G = snap["G_ema"]
  mapping = G["mapping"]
  embed = mapping["embed"]
  assert embed.class_name == "Embedding" and embed.source == "torch.nn.modules.sparse"
  assert embed.params["weight"].shape == (1000, 320)
  num, num_ws, w_dim = ref["ws"].shape
  assert (G.attrs["z_dim"], G.attrs["w_dim"], G.attrs["num_ws"]) == (ref["z"].shape[1], w_dim, num_ws)
  assert mapping.buffers["w_avg"].shape == (1000, w_dim)


def test_w_avg_values_reproduce_reference_truncation(fixture):
  # The decoded w_avg tensor, used as FIXTURES.md defines truncation, gives the
  # reference's truncated ws: a check of the tensor bytes, not only shapes.
  _, snap, ref = fixture
  w_avg = snap["G_ema"]["mapping"].buffers["w_avg"][ref["classes"]][:, None, :]  # [N, 1, w_dim]
  ws = w_avg + ref["psi"] * (ref["ws_psi1"] - w_avg)
  np.testing.assert_allclose(ws, ref["ws"], rtol=0, atol=TRUNCATION_ATOL)


def test_synthesis_layers_match_reference_features(fixture):
  _, snap, ref = fixture
  synthesis = snap["G_ema"]["synthesis"]
  assert list(synthesis.attrs["layer_names"]) == list(ref["layer_names"][1:])
  for name in synthesis.attrs["layer_names"]:
    layer = synthesis[name]
    assert layer.class_name == "SynthesisLayer"
    missing = [a for a in LAYER_ATTRS if a not in layer.attrs]
    missing += [b for b in LAYER_BUFFERS if b not in layer.buffers]
    assert not missing, f"{name} lacks {missing}"
    assert len(layer.attrs["padding"]) == 4 and all(isinstance(p, int) for p in layer.attrs["padding"])
    assert layer.buffers["magnitude_ema"].shape == ()
    for key in ("up_filter", "down_filter"):
      taps = layer.buffers[key]
      radial = key == "down_filter" and layer.attrs.get("down_radial", False)
      assert taps is None or taps.ndim == (2 if radial else 1), f"{name}.{key}"
    # The layer's declared output is what the reference computed: [N, C, h, w].
    out_w, out_h = (int(s) for s in layer.attrs["out_size"])
    assert ref[f"feat_{name}"].shape[1:] == (layer.attrs["out_channels"], out_h, out_w)


def test_synthesis_input_layer(fixture):
  _, snap, ref = fixture
  layer = snap["G_ema"]["synthesis"]["input"]
  assert layer.class_name == "SynthesisInput"
  channels = layer.attrs["channels"]
  assert layer.buffers["freqs"].shape == (channels, 2)
  assert layer.buffers["phases"].shape == (channels,)
  assert layer.buffers["transform"].shape == (3, 3)
  assert {"size", "sampling_rate", "bandwidth"} <= set(layer.attrs)
  size_w, size_h = (int(s) for s in layer.attrs["size"])
  assert ref["feat_input"].shape[1:] == (channels, size_h, size_w)


def test_all_generator_tensors_are_float32_numpy(fixture):
  _, snap, _ = fixture
  tensors = snap["G_ema"].state_dict()
  assert tensors
  bad = {k: type(v).__name__ + str(getattr(v, "dtype", "")) for k, v in tensors.items()
         if not (isinstance(v, np.ndarray) and v.dtype == np.float32)}
  assert not bad


def test_walk_and_getitem(fixture):
  _, snap, _ = fixture
  G = snap["G_ema"]
  paths = [path for path, _ in G.walk()]
  assert paths[0] == "" and "mapping.embed" in paths and "synthesis.input" in paths
  assert G["mapping.embed"] is G["mapping"]["embed"]
  with pytest.raises(KeyError, match="no child 'nope'"):
    G["nope"]


# ----------------------------------------------------------------------------- torch as truth


def test_torch_module_reads_back_as_its_state_dict(tmp_path):
  torch.manual_seed(0)
  net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4),
                            torch.nn.Linear(4, 2))
  path = tmp_path / "net.pkl"
  path.write_bytes(pickle.dumps(net, protocol=4))
  node = load_pickle(str(path))
  assert node.class_name == "Sequential" and list(node.children) == ["0", "1", "2"]
  assert "bias" not in node["0"].params  # registered as None: left out
  expected = {k: v.numpy() for k, v in net.state_dict().items()}
  got = node.state_dict()
  assert list(got) == list(expected)
  for key, value in expected.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)
  assert got["1.num_batches_tracked"].dtype == np.int64


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.int64])
def test_tensor_dtypes_and_strided_views(tmp_path, dtype):
  base = torch.arange(24, dtype=torch.float32).reshape(4, 6).to(dtype)
  view = base[1:, ::2]  # offset and strides into a larger storage
  path = tmp_path / "t.pkl"
  path.write_bytes(pickle.dumps({"full": base, "view": view}, protocol=4))
  got = load_pickle(str(path))
  for key, tensor in (("full", base), ("view", view)):
    want = tensor.to(torch.float32).numpy() if tensor.is_floating_point() else tensor.numpy()
    assert got[key].dtype == want.dtype
    np.testing.assert_array_equal(got[key], want)


class _StorageBytes:
  """Pickles as torch.storage._load_from_bytes(payload)."""

  def __init__(self, payload):
    self.payload = payload

  def __reduce__(self):
    return torch.storage._load_from_bytes, (self.payload,)


class _TensorFromStorage:
  """Pickles as torch._utils._rebuild_tensor_v2 over a raw storage payload."""

  def __init__(self, payload, size, stride):
    self.payload, self.size, self.stride = payload, size, stride

  def __reduce__(self):
    return torch._utils._rebuild_tensor_v2, (_StorageBytes(self.payload), 0, self.size,
                                             self.stride, False, collections.OrderedDict())


def test_cuda_tagged_storage_decodes_on_cpu(tmp_path):
  values = torch.arange(6, dtype=torch.float32)
  with warnings.catch_warnings():  # TypedStorage is deprecated; it is what pickle writes
    warnings.simplefilter("ignore", UserWarning)
    fn, (payload,) = values.storage().__reduce__()
  assert fn is torch.storage._load_from_bytes
  # The legacy storage format names the device as a protocol-2 BINUNICODE string.
  cpu_tag, cuda_tag = b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"
  assert payload.count(cpu_tag) == 1
  payload = payload.replace(cpu_tag, cuda_tag)
  if not torch.cuda.is_available():  # the tag really asks for a GPU here
    with pytest.raises(RuntimeError):
      torch.load(io.BytesIO(payload), weights_only=True)
  path = tmp_path / "cuda.pkl"
  path.write_bytes(pickle.dumps(_TensorFromStorage(payload, (2, 3), (3, 1)), protocol=4))
  np.testing.assert_array_equal(load_pickle(str(path)), values.numpy().reshape(2, 3))


def test_numpy_1_and_2_module_names(tmp_path):
  data = {"array": np.arange(6, dtype=np.float32).reshape(2, 3), "scalar": np.float64(9.9)}
  numpy2 = pickle.dumps(data, protocol=3)  # GLOBAL opcodes: module names as text lines
  assert b"numpy._core.multiarray" in numpy2, "this test expects numpy 2 names"
  numpy1 = numpy2.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
  for label, blob in (("numpy2", numpy2), ("numpy1", numpy1)):
    path = tmp_path / f"{label}.pkl"
    path.write_bytes(blob)
    got = load_pickle(str(path))
    np.testing.assert_array_equal(got["array"], data["array"])
    assert got["scalar"] == data["scalar"] and got["scalar"].dtype == np.float64


# ----------------------------------------------------------------------------- malicious pickles


class _Call:
  """Pickles as a call of `fn(*args)` (fn must be importable by pickle)."""

  def __init__(self, fn, *args):
    self.fn, self.args = fn, args

  def __reduce__(self):
    return self.fn, self.args


@pytest.fixture
def fake_persistence(monkeypatch):
  """Stand-ins for torch_utils.persistence so a test can *write* persistent objects.

  Only the pickling side uses them; the loader never imports anything.
  Returns the fake module.
  """
  package = types.ModuleType("torch_utils")
  module = types.ModuleType("torch_utils.persistence")

  def _reconstruct_persistent_obj(meta):
    raise AssertionError("the real hook must never be called")

  def _src_to_module(src):
    raise AssertionError("the real hook must never be called")

  for fn in (_reconstruct_persistent_obj, _src_to_module):
    fn.__module__, fn.__qualname__ = module.__name__, fn.__name__
    setattr(module, fn.__name__, fn)
  package.persistence = module
  monkeypatch.setitem(sys.modules, "torch_utils", package)
  monkeypatch.setitem(sys.modules, "torch_utils.persistence", module)
  return module


def _persistent(module, class_name, state, module_src="# no source\n"):
  meta = dict(type="class", version=sgxl_pickle.PERSISTENCE_VERSION, module_src=module_src,
              class_name=class_name, state=state)
  return _Call(module._reconstruct_persistent_obj, meta)


def _generator(module, **extra_state):
  """A minimal persistent 'Generator' with mapping and synthesis children."""
  children = {"mapping": _persistent(module, "MappingNetwork", {"_modules": {}}),
              "synthesis": _persistent(module, "SynthesisNetwork", {"_modules": {}})}
  return _persistent(module, "Generator", {"_modules": children, **extra_state})


def _marker_command(marker):
  return f"touch {marker}"


def _attacks(module, marker):
  """name -> object whose unpickling would run code that creates `marker`."""
  return {
      "os.system": _Call(os.system, _marker_command(marker)),
      "builtins.eval": _Call(eval, f"__import__('os').system({_marker_command(marker)!r})"),
      "builtins.exec": _Call(exec, f"import os; os.system({_marker_command(marker)!r})"),
      "getattr trick": _Call(getattr, _Call(__import__, "os"), "system"),
      "nested in persistent state": _generator(
          module, extra=[1, {"deep": _Call(os.system, _marker_command(marker))}]),
      "torch_utils.persistence._src_to_module": _Call(
          module._src_to_module, f"import os\nos.system({_marker_command(marker)!r})\n"),
  }


ATTACKS = ("os.system", "builtins.eval", "builtins.exec", "getattr trick",
           "nested in persistent state", "torch_utils.persistence._src_to_module")
# What the error must name for each attack (os.system is posix.system; protocol 2
# spells builtins as __builtin__; the getattr trick is caught at its inner call).
_BUILTINS = r"(builtins|__builtin__)"
ATTACK_GLOBAL = {"os.system": r"(posix|nt|os)\.system", "builtins.eval": _BUILTINS + r"\.eval",
                 "builtins.exec": _BUILTINS + r"\.exec", "getattr trick": _BUILTINS + r"\.__import__",
                 "nested in persistent state": r"(posix|nt|os)\.system",
                 "torch_utils.persistence._src_to_module": r"torch_utils\.persistence\._src_to_module"}


@pytest.mark.parametrize("protocol", [2, 4])  # GLOBAL and STACK_GLOBAL opcodes
@pytest.mark.parametrize("attack", ATTACKS)
def test_malicious_pickle_refused_and_nothing_runs(tmp_path, fake_persistence, attack, protocol):
  marker = tmp_path / "pwned"
  payload = {"G_ema": _generator(fake_persistence), "x": _attacks(fake_persistence, marker)[attack]}
  path = tmp_path / "evil.pkl"
  path.write_bytes(pickle.dumps(payload, protocol=protocol))
  with pytest.raises(SnapshotError, match=f"forbidden global {ATTACK_GLOBAL[attack]} "):
    load_snapshot(str(path))
  assert not marker.exists()


@pytest.mark.parametrize("attack", ["os.system", "nested in persistent state"])
def test_unpickler_alone_refuses_calls(tmp_path, fake_persistence, attack):
  # Second layer: even without the static scan, find_class hands out only inert
  # placeholders whose call raises.
  marker = tmp_path / "pwned"
  blob = pickle.dumps(_attacks(fake_persistence, marker)[attack], protocol=4)
  with pytest.raises(SnapshotError, match="forbidden global .*system"):
    sgxl_pickle._SafeUnpickler(io.BytesIO(blob)).load()
  assert not marker.exists()


def test_refused_before_any_allowed_callable_runs(tmp_path, monkeypatch):
  calls = []
  for key, fn in list(sgxl_pickle.ALLOWED_CALLABLES.items()):
    monkeypatch.setitem(sgxl_pickle.ALLOWED_CALLABLES, key,
                        lambda *a, _fn=fn, _key=key: calls.append(_key) or _fn(*a))
  marker = tmp_path / "pwned"
  payload = [torch.ones(3), _Call(os.system, _marker_command(marker))]  # tensor first
  path = tmp_path / "evil.pkl"
  path.write_bytes(pickle.dumps(payload, protocol=4))
  with pytest.raises(SnapshotError, match="forbidden global"):
    load_pickle(str(path))
  assert calls == [] and not marker.exists()


class EasyDict(dict):
  """Like dnnlib.EasyDict: a dict subclass that real snapshots keep in `_init_kwargs`."""


class ItemList(list):
  """A list subclass: pickled as NEWOBJ + APPENDS."""


def test_unknown_dict_and_list_subclasses_become_plain(tmp_path, fake_persistence):
  kwargs = EasyDict(mapping_kwargs=EasyDict(num_layers=2), head_layers=ItemList([7, 7]))
  payload = {"G_ema": _generator(fake_persistence, _init_kwargs=kwargs)}
  path = tmp_path / "easydict.pkl"
  path.write_bytes(pickle.dumps(payload, protocol=4))
  init_kwargs = load_snapshot(str(path))["G_ema"].attrs["_init_kwargs"]
  assert init_kwargs == {"mapping_kwargs": {"num_layers": 2}, "head_layers": [7, 7]}
  assert type(init_kwargs) is dict and type(init_kwargs["head_layers"]) is list


def test_module_src_is_never_executed(tmp_path, fake_persistence):
  marker = tmp_path / "pwned"
  src = f"import os\nos.system({_marker_command(marker)!r})\n"
  children = {"mapping": _persistent(fake_persistence, "MappingNetwork", {}, module_src=src),
              "synthesis": _persistent(fake_persistence, "SynthesisNetwork", {}, module_src=src)}
  payload = {"G_ema": _persistent(fake_persistence, "Generator", {"_modules": children}, src)}
  path = tmp_path / "src.pkl"
  path.write_bytes(pickle.dumps(payload, protocol=4))
  snap = load_snapshot(str(path))
  assert snap["G_ema"].module_src == src
  assert not marker.exists()


def _unicode(s):
  """SHORT_BINUNICODE opcode pushing `s`."""
  return b"\x8c" + bytes([len(s)]) + s.encode()


# Hand-assembled protocol-4 pickles that reach for more than an allowed global offers.
CRAFTED = {
    # STACK_GLOBAL('torch._utils', '_rebuild_tensor_v2.__globals__')(): an attribute
    # walk from an allowed name to unlisted objects.
    "dotted name": (_unicode("torch._utils") + _unicode("_rebuild_tensor_v2.__globals__")
                    + b"\x93)R.", r"forbidden global torch\._utils\._rebuild_tensor_v2\.__globals__"),
    # BUILD on an allowed function itself: would rewrite its attributes (__defaults__).
    "BUILD on a global": (_unicode("torch._utils") + _unicode("_rebuild_parameter")
                          + b"\x93N}" + _unicode("__defaults__") + b")s\x86b.",
                          r"forbidden BUILD on global torch\._utils\._rebuild_parameter"),
    # Persistent ids and the copyreg extension registry are never in snapshots.
    "persistent id": (_unicode("x") + b"Q.", "forbidden opcode BINPERSID"),
    "extension code": (b"\x82\x01.", "forbidden opcode EXT1"),
}


@pytest.mark.parametrize("case", CRAFTED)
def test_crafted_opcodes_refused(tmp_path, case):
  body, message = CRAFTED[case]
  path = tmp_path / "crafted.pkl"
  path.write_bytes(b"\x80\x04" + body)
  with pytest.raises(SnapshotError, match=message):
    load_pickle(str(path))


# ----------------------------------------------------------------------------- inert-call opt-in

# How pickle names os.system: the function lives in posix (nt on Windows).
SYSTEM_GLOBAL = f"{os.system.__module__}.system"


def _snapshot_with_partial_in_d(module, marker):
  """A snapshot-shaped payload whose D holds partial(os.system, 'touch marker'), both as
  an attribute and as a child module slot. Unpickling it for real calls
  functools.partial, which only *references* os.system (a GLOBAL, not a call)."""
  partial = functools.partial(os.system, _marker_command(marker))
  D = _persistent(module, "Discriminator", {"_modules": {"feature_network": partial},
                                            "hook": partial, "_parameters": {}})
  return {"G": _generator(module), "G_ema": _generator(module), "D": D,
          "training_set_kwargs": {"resolution": 16}}


@pytest.mark.parametrize("protocol", [2, 4])
def test_partial_in_d_refused_by_default_with_hint(tmp_path, fake_persistence, protocol):
  marker = tmp_path / "pwned"
  path = tmp_path / "snap.pkl"
  path.write_bytes(pickle.dumps(_snapshot_with_partial_in_d(fake_persistence, marker), protocol))
  with pytest.raises(SnapshotError, match=r"forbidden global functools\.partial \(the pickle "
                     r"tries to call it\); if it is only inside D and you trust the rest, "
                     r"rerun with --inert-calls functools\.partial \(it will be recorded, "
                     r"never run\)"):
    load_snapshot(str(path))
  assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4])
def test_partial_in_d_recorded_inert_when_opted_in(tmp_path, fake_persistence, protocol):
  marker = tmp_path / "pwned"
  path = tmp_path / "snap.pkl"
  path.write_bytes(pickle.dumps(_snapshot_with_partial_in_d(fake_persistence, marker), protocol))
  snap = load_snapshot(str(path), inert_calls=("functools.partial",))
  D = snap["D"]
  hook = D.attrs["hook"]
  assert isinstance(hook, InertCall) and hook.name == "functools.partial"
  # The partial's target is a global it receives, kept as its name; nothing imported.
  assert hook.args == (SYSTEM_GLOBAL,)
  # partial's own BUILD state: (func, args, keywords, __dict__), stored, not applied.
  assert hook.state[:2] == (SYSTEM_GLOBAL, (_marker_command(marker),)) and len(hook.state) == 4
  # A call in a child-module slot is kept as a record, not as a child Node.
  assert D.attrs[sgxl_pickle.INERT_ATTR]["_modules.feature_network"] is hook
  assert "feature_network" not in D.children
  assert [p for p, _ in sgxl_pickle.find_inert_calls(D, "D")] == [
      "D.__inert_calls__._modules.feature_network"]
  assert sgxl_pickle.find_inert_calls(snap["G_ema"]) == []
  assert not marker.exists()


def test_opted_in_callable_is_never_imported_or_run(tmp_path, monkeypatch):
  # A module whose import and whose function each create a marker file.
  imported, called = tmp_path / "imported", tmp_path / "called"
  (tmp_path / "inert_probe_mod.py").write_text(
      f"import pathlib\npathlib.Path({str(imported)!r}).touch()\n"
      f"def make(*args):\n  pathlib.Path({str(called)!r}).touch()\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  import inert_probe_mod  # only to write the pickle
  blob = pickle.dumps({"D": _Call(inert_probe_mod.make, 1, "two")}, protocol=4)
  monkeypatch.delitem(sys.modules, "inert_probe_mod")
  imported.unlink()
  path = tmp_path / "probe.pkl"
  path.write_bytes(blob)
  got = load_pickle(str(path), inert_calls=("inert_probe_mod.make",))
  assert isinstance(got["D"], InertCall)
  assert (got["D"].name, got["D"].args) == ("inert_probe_mod.make", (1, "two"))
  assert "inert_probe_mod" not in sys.modules
  assert not imported.exists() and not called.exists()


def test_inert_call_opt_in_covers_only_the_named_global(tmp_path, fake_persistence):
  marker = tmp_path / "pwned"
  payload = _snapshot_with_partial_in_d(fake_persistence, marker)
  payload["x"] = _Call(os.system, _marker_command(marker))
  path = tmp_path / "snap.pkl"
  path.write_bytes(pickle.dumps(payload, protocol=4))
  with pytest.raises(SnapshotError, match=f"forbidden global {SYSTEM_GLOBAL} "):
    load_snapshot(str(path), inert_calls=("functools.partial",))
  assert not marker.exists()


def test_unpickler_alone_records_opted_in_calls(tmp_path):
  # Second layer without the scan: the opted-in global is a recorder, others still raise.
  marker = tmp_path / "pwned"
  blob = pickle.dumps([functools.partial(os.system, _marker_command(marker))], protocol=4)
  got = sgxl_pickle._SafeUnpickler(io.BytesIO(blob), ("functools.partial",)).load()
  assert isinstance(got[0], InertCall) and got[0].name == "functools.partial"
  blob = pickle.dumps([_Call(os.system, _marker_command(marker))], protocol=4)
  with pytest.raises(SnapshotError, match="forbidden global .*system"):
    sgxl_pickle._SafeUnpickler(io.BytesIO(blob), ("functools.partial",)).load()
  assert not marker.exists()


@pytest.mark.parametrize("name, message", [
    ("builtins.eval", r"builtins\.\* is on the deny-list"),
    ("os.system", r"os\.\* is on the deny-list"),
    (SYSTEM_GLOBAL, r"is on the deny-list"),
    ("subprocess.Popen", r"subprocess\.\* is on the deny-list"),
    ("operator.attrgetter", r"operator\.attrgetter is on the deny-list"),
    ("torch_utils.persistence._src_to_module", r"torch_utils\.persistence\.\* is on the deny-list"),
    ("torch._utils._rebuild_tensor_v2", r"already an allowed callable"),
    ("functools.*", r"bad --inert-calls name 'functools\.\*'.*no wildcards"),
    ("partial", r"bad --inert-calls name 'partial'"),
    ("torch._utils._rebuild_tensor_v2.__globals__", r"dunder names"),
    ("", r"bad --inert-calls name ''"),
])
def test_denied_or_malformed_inert_names_refused(tmp_path, fake_persistence, name, message):
  marker = tmp_path / "pwned"
  payload = {"G_ema": _generator(fake_persistence),
             "x": _attacks(fake_persistence, marker)["builtins.eval"]}
  path = tmp_path / "evil.pkl"
  path.write_bytes(pickle.dumps(payload, protocol=4))
  with pytest.raises(SnapshotError, match=message):
    load_snapshot(str(path), inert_calls=("functools.partial", name))
  assert not marker.exists()


def test_inert_calls_must_be_a_list_not_a_string(tmp_path):
  path = tmp_path / "x.pkl"
  path.write_bytes(pickle.dumps([1], protocol=4))
  with pytest.raises(SnapshotError, match="list of names, not the string"):
    load_pickle(str(path), inert_calls="functools.partial")


@pytest.mark.parametrize("attack", ["os.system", "builtins.eval"])
def test_denied_global_refusal_does_not_suggest_opt_in(tmp_path, fake_persistence, attack):
  payload = {"G_ema": _generator(fake_persistence),
             "x": _attacks(fake_persistence, tmp_path / "pwned")[attack]}
  path = tmp_path / "evil.pkl"
  path.write_bytes(pickle.dumps(payload, protocol=4))
  with pytest.raises(SnapshotError, match="forbidden global") as info:
    load_snapshot(str(path))
  assert "--inert-calls" not in str(info.value)


def test_fixtures_load_identically_with_an_opt_in(fixture, fixtures_dir):
  # The opt-in changes nothing for a pickle that never calls the named global.
  name, snap, _ = fixture
  again = load_snapshot(str(fixtures_dir / f"{name}.pkl"), inert_calls=("functools.partial",))
  for key in ("G_ema", "D"):
    want, got = snap[key].state_dict(), again[key].state_dict()
    assert list(got) == list(want)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert sgxl_pickle.find_inert_calls(again[key]) == []


# ----------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
  with pytest.raises(SnapshotError, match="snapshot not found"):
    load_snapshot(str(tmp_path / "absent.pkl"))


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.999])
def test_truncated_fixture(tmp_path, fixtures_dir, keep):
  blob = (fixtures_dir / "sgxl_sr64.pkl").read_bytes()
  path = tmp_path / "truncated.pkl"
  path.write_bytes(blob[:int(len(blob) * keep)])
  with pytest.raises(SnapshotError, match="truncated or corrupt"):
    load_snapshot(str(path))


def test_garbage_file(tmp_path):
  path = tmp_path / "garbage.pkl"
  path.write_bytes(np.random.default_rng(0).bytes(4096))
  with pytest.raises(SnapshotError):
    load_snapshot(str(path))


@pytest.mark.parametrize("payload, reason", [
    ({"weights": [1.0, 2.0]}, "no generator G_ema or G"),
    ([1, 2, 3], "not a snapshot dict"),
    ({"G_ema": torch.nn.Linear(2, 2)}, "lacks mapping and synthesis"),
])
def test_not_a_snapshot(tmp_path, payload, reason):
  path = tmp_path / "plain.pkl"
  path.write_bytes(pickle.dumps(payload, protocol=4))
  with pytest.raises(SnapshotError, match=f"not a StyleGAN-XL snapshot.*{reason}"):
    load_snapshot(str(path))
