"""Safe StyleGAN-XL snapshot reading: fixture structure, malicious and bad pickles.

Outside truths: the reference fixtures (FIXTURES.md and the npz outputs of the same
networks), and torch itself (a module pickled by torch reads back as its state_dict).
"""
import collections
import functools
import io
import json
import os
import pickle
import re
import subprocess
import sys
import time
import tracemalloc
import types
import warnings

import numpy as np
import pytest
import torch

from converters import sgxl_pickle
from converters.sgxl_pickle import (GlobalRef, InertCall, Node, SnapshotError, load_pickle,
                                    load_snapshot)
from tests.conftest import ROOT

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
  return _fake_module(monkeypatch, "torch_utils.persistence",
                      ("_reconstruct_persistent_obj", "_src_to_module"))


def _fake_module(monkeypatch, name, functions):
  """A module `name` (and its package) in sys.modules whose functions must never run."""
  package, _, leaf = name.rpartition(".")
  module = types.ModuleType(name)
  for fname in functions:
    def fn(*args, _name=fname):
      raise AssertionError(f"{name}.{_name} must never be called")
    fn.__module__, fn.__qualname__, fn.__name__ = name, fname, fname
    setattr(module, fname, fn)
  parent = types.ModuleType(package)
  setattr(parent, leaf, module)
  monkeypatch.setitem(sys.modules, package, parent)
  monkeypatch.setitem(sys.modules, name, module)
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
      "torch_utils.persistence._src_to_module": _Call(
          module._src_to_module, f"import os\nos.system({_marker_command(marker)!r})\n"),
  }


ATTACKS = ("os.system", "builtins.eval", "builtins.exec", "getattr trick",
           "torch_utils.persistence._src_to_module")
# The global each attack calls last (os.system is posix.system; protocol 2 spells
# builtins as __builtin__; the getattr trick's outer call is getattr).
_BUILTINS = r"(builtins|__builtin__)"
ATTACK_GLOBAL = {"os.system": r"(posix|nt|os)\.system", "builtins.eval": _BUILTINS + r"\.eval",
                 "builtins.exec": _BUILTINS + r"\.exec", "getattr trick": _BUILTINS + r"\.getattr",
                 "torch_utils.persistence._src_to_module": r"torch_utils\.persistence\._src_to_module"}


@pytest.mark.parametrize("protocol", [2, 4])  # GLOBAL and STACK_GLOBAL opcodes
@pytest.mark.parametrize("attack", ATTACKS)
def test_generator_that_is_a_call_refused_and_nothing_runs(tmp_path, fake_persistence, attack,
                                                           protocol):
  marker = tmp_path / "pwned"
  payload = {"G_ema": _attacks(fake_persistence, marker)[attack]}
  path = tmp_path / "evil.pkl"
  path.write_bytes(pickle.dumps(payload, protocol=protocol))
  with pytest.raises(SnapshotError, match=f"refused: G_ema is a call of {ATTACK_GLOBAL[attack]} "
                     r"\(recorded, never run\), not a generator$"):
    load_snapshot(str(path))
  assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("attack", ATTACKS)
def test_call_in_d_is_an_inert_record_and_never_runs(tmp_path, fake_persistence, attack, protocol):
  marker = tmp_path / "pwned"
  payload = {"G_ema": _generator(fake_persistence),
             "D": _attacks(fake_persistence, marker)[attack]}
  path = tmp_path / "evil.pkl"
  path.write_bytes(pickle.dumps(payload, protocol=protocol))
  snap = load_snapshot(str(path))
  assert isinstance(snap["D"], InertCall)
  assert re.fullmatch(ATTACK_GLOBAL[attack], snap["D"].name)
  assert sgxl_pickle.find_records(snap["G_ema"], "G_ema") == []
  assert not marker.exists()


def test_call_nested_in_the_generator_refused_with_its_path(tmp_path, fake_persistence):
  from converters import stylegan_xl
  marker = tmp_path / "pwned"
  payload = {"G_ema": _generator(fake_persistence, extra=[1, {"deep": _Call(
      os.system, _marker_command(marker))}])}
  path = tmp_path / "evil.pkl"
  path.write_bytes(pickle.dumps(payload, protocol=4))
  G = load_snapshot(str(path))["G_ema"]
  with pytest.raises(stylegan_xl.ConversionError,
                     match=r"refused: G_ema\.extra\.1\.deep is a call of (posix|nt|os)\.system"):
    stylegan_xl.check_plain(G, "G_ema")
  assert not marker.exists()


def test_partial_is_recorded_with_its_arguments_as_names(tmp_path):
  marker = tmp_path / "pwned"
  path = tmp_path / "partial.pkl"
  path.write_bytes(pickle.dumps([functools.partial(os.system, _marker_command(marker))], 4))
  (got,) = load_pickle(str(path))
  assert isinstance(got, InertCall) and got.name == "functools.partial"
  # The partial's target is a global it receives, kept as a name; nothing imported.
  assert got.args == (GlobalRef(os.system.__module__, "system"),)
  # partial's own BUILD state: (func, args, keywords, __dict__), stored, not applied.
  assert got.state[:2] == (GlobalRef(os.system.__module__, "system"),
                           (_marker_command(marker),)) and len(got.state) == 4
  assert not marker.exists()


def test_named_module_is_never_imported_or_run(tmp_path, monkeypatch):
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
  got = load_pickle(str(path))
  assert isinstance(got["D"], InertCall)
  assert (got["D"].name, got["D"].args) == ("inert_probe_mod.make", (1, "two"))
  assert "inert_probe_mod" not in sys.modules
  assert not imported.exists() and not called.exists()


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


# Hand-assembled protocol-4 pickles that a snapshot never contains.
CRAFTED = {
    # BUILD on an allowed function itself: would rewrite its attributes (__defaults__).
    "BUILD on a global": (_unicode("torch._utils") + _unicode("_rebuild_parameter")
                          + b"\x93N}" + _unicode("__defaults__") + b")s\x86b.",
                          r"corrupt pickle: BUILD on global torch\._utils\._rebuild_parameter"),
    # Persistent ids and the copyreg extension registry are never in snapshots.
    "persistent id": (_unicode("x") + b"Q.", "forbidden opcode BINPERSID"),
    "extension code": (b"\x82\x01.", "forbidden opcode EXT1"),
    # A length past the end of the file is refused before anything is allocated.
    "huge bytes": (b"\x8e" + (1 << 40).to_bytes(8, "little") + b".", "runs past the end"),
    "huge string": (b"\x8d" + (1 << 40).to_bytes(8, "little") + b".", "runs past the end"),
}


@pytest.mark.parametrize("case", CRAFTED)
def test_crafted_opcodes_refused(tmp_path, case):
  body, message = CRAFTED[case]
  path = tmp_path / "crafted.pkl"
  path.write_bytes(b"\x80\x04" + body)
  with pytest.raises(SnapshotError, match=message):
    load_pickle(str(path))


def test_dotted_global_name_is_only_a_name(tmp_path):
  # STACK_GLOBAL('torch._utils', '_rebuild_tensor_v2.__globals__')(): an attribute walk
  # from a recognised name; here it is a name that is never looked up.
  path = tmp_path / "dotted.pkl"
  path.write_bytes(b"\x80\x04" + _unicode("torch._utils") + _unicode("_rebuild_tensor_v2.__globals__")
                   + b"\x93)R.")
  got = load_pickle(str(path))
  assert isinstance(got, InertCall) and got.name == "torch._utils._rebuild_tensor_v2.__globals__"


# ----------------------------------------------------------------------------- dill and numpy constructs


class _ImportModule:
  """Pickles as dill._dill._import_module(name) (dill <= 0.3.4)."""

  def __init__(self, dill, name):
    self.dill, self.name = dill, name

  def __reduce__(self):
    return self.dill._import_module, (self.name,)


class _GetAttr:
  """Pickles as dill._dill._get_attr(_import_module(module), name); callable, so that
  pickle accepts it as the callable of a REDUCE, as dill writes it."""

  def __init__(self, dill, module, name):
    self.dill, self.module, self.name = dill, module, name

  def __call__(self, *args):
    raise AssertionError("only pickled")

  def __reduce__(self):
    return self.dill._get_attr, (_ImportModule(self.dill, self.module), self.name)


class _Reduce:
  """Pickles as func(*args) followed by BUILD(state) when state is given; callable, so
  that it can stand for a computed callable (dill's `_load_type('set')([...])`)."""

  def __init__(self, func, args, state=None):
    self.func, self.args, self.state = func, args, state

  def __call__(self, *args):
    raise AssertionError("only pickled")

  def __reduce__(self):
    return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


@pytest.fixture
def fake_dill(monkeypatch):
  return _fake_module(monkeypatch, "dill._dill",
                      ("_import_module", "_get_attr", "_load_type", "_create_array"))


@pytest.mark.parametrize("module", sgxl_pickle.NUMPY_MULTIARRAY)
@pytest.mark.parametrize("protocol", [3, 4])
def test_dill_034_numpy_pattern_is_read_as_numpy(tmp_path, fake_dill, module, protocol):
  array = np.arange(12, dtype=np.float64).reshape(3, 4)
  scalar = np.float64(2.5)
  payload = {
      "array": _Reduce(_GetAttr(fake_dill, module, "_reconstruct"), (np.ndarray, (0,), b"b"),
                       array.__reduce__()[2]),
      "scalar": _Reduce(_GetAttr(fake_dill, module, "scalar"),
                        (np.dtype("f8"), scalar.tobytes())),
      "set": _Reduce(_Reduce(fake_dill._load_type, ("set",)), ([1, 2],)),
  }
  path = tmp_path / "dill.pkl"
  path.write_bytes(pickle.dumps(payload, protocol=protocol))
  got = load_pickle(str(path))
  assert got["array"].dtype == np.float64
  np.testing.assert_array_equal(got["array"], array)
  assert got["scalar"] == scalar and got["scalar"].dtype == np.float64
  assert got["set"] == {1, 2}


def test_newer_dill_create_array_is_read_as_numpy(tmp_path, fake_dill):
  array = np.arange(6, dtype=np.int32).reshape(2, 3)
  _, args, state = array.__reduce__()
  func = array.__reduce__()[0]  # numpy's own _reconstruct, pickled by name
  path = tmp_path / "dill.pkl"
  path.write_bytes(pickle.dumps([_Reduce(fake_dill._create_array, (func, args, state, None))], 4))
  (got,) = load_pickle(str(path))
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, array)


def test_dill_attribute_of_another_module_is_a_record_of_that_global(tmp_path, fake_dill):
  marker = tmp_path / "pwned"
  path = tmp_path / "dill.pkl"
  path.write_bytes(pickle.dumps(
      [_Reduce(_GetAttr(fake_dill, "os", "system"), (_marker_command(marker),)),
       _Reduce(_Reduce(fake_dill._load_type, ("MethodType",)), (1, 2))], 4))
  system, method = load_pickle(str(path))
  assert isinstance(system, InertCall) and system.name == "os.system"
  assert isinstance(method, InertCall) and method.name == "dill._dill._load_type('MethodType')"
  assert not marker.exists()


def test_realistic_fixture_numpy_values(fixtures_dir):
  # FIXTURES.md: in_size / out_size are arrays, cutoffs float64 scalars, use_fp16 bool
  # scalars, all written with dill 0.3.4's pattern (protocol 4) or _load_type('set') (3).
  for name in ("sgxl_realistic", "sgxl_realistic_proto3"):
    G = load_snapshot(str(fixtures_dir / f"{name}.pkl"))["G_ema"]
    layer = G["synthesis"][G["synthesis"].attrs["layer_names"][0]]
    assert isinstance(layer.attrs["in_size"], np.ndarray) and layer.attrs["in_size"].shape == (2,)
    assert isinstance(layer.attrs["in_cutoff"], np.float64)
    assert isinstance(layer.attrs["use_fp16"], np.bool_)
    assert layer.internals["_non_persistent_buffers_set"] == set()
    assert sgxl_pickle.find_records(G, "G_ema") == []


def test_only_the_requested_network_is_decoded(fixtures_dir):
  path = str(fixtures_dir / "sgxl_realistic.pkl")
  snap, stats = sgxl_pickle.read_snapshot(path, decode=("G_ema",))
  full, full_stats = sgxl_pickle.read_snapshot(path)
  for key, value in full["G_ema"].state_dict().items():
    np.testing.assert_array_equal(snap["G_ema"].state_dict()[key], value, err_msg=key)
  lazy = snap["D"].state_dict()
  assert lazy and all(isinstance(v, sgxl_pickle.LazyTensor) for v in lazy.values())
  assert {k: v.shape for k, v in lazy.items()} == {k: v.shape for k, v in full["D"].state_dict().items()}
  assert all(isinstance(v, sgxl_pickle.LazyTensor) for v in snap["G"].state_dict().values())
  # The decoded bytes are G_ema's storages only: what decoding G_ema alone reads.
  assert full_stats.decoded_bytes == full_stats.storage_bytes == stats.storage_bytes
  assert stats.decoded_bytes < stats.storage_bytes / 10
  g_ema_numel = sum(v.size for v in full["G_ema"].state_dict().values())
  assert g_ema_numel * 4 <= stats.decoded_bytes < g_ema_numel * 4 + 1_000 * stats.decoded_storages


# ----------------------------------------------------------------------------- bounds


def _bomb_bytes():
  """The 8 KB shared-reference bomb of issue 11: 10^12 ints if references were copied."""
  x = [0] * 1000
  y = [x] * 1000
  z = [y] * 1000
  w = [z] * 1000
  return pickle.dumps({"G_ema": w})


# The bound for the bomb: refused in under 5 s and 500 MB.
BOMB_SECONDS, BOMB_BYTES = 5.0, 500 * 2**20


def test_shared_reference_bomb_refused_fast_and_small(tmp_path):
  path = tmp_path / "bomb.pkl"
  path.write_bytes(_bomb_bytes())
  assert path.stat().st_size < 8500
  tracemalloc.start()
  start = time.perf_counter()
  try:
    with pytest.raises(SnapshotError, match="not a StyleGAN-XL snapshot"):
      load_snapshot(str(path))
    value = load_pickle(str(path))
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert seconds < BOMB_SECONDS and peak < BOMB_BYTES, (seconds, peak)
  w = value["G_ema"]
  assert w[0] is w[999] and w[0][0] is w[1][0]  # shared references stay shared


def test_shared_reference_bomb_cli_peak_rss(tmp_path):
  path = tmp_path / "bomb.pkl"
  path.write_bytes(_bomb_bytes())
  script = (
      "import resource, sys, time\n"
      "from converters import stylegan_xl\n"
      "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
      "start = time.perf_counter()\n"
      f"rc = stylegan_xl.main(['--pkl', {str(path)!r}, '--out', {str(tmp_path / 'out')!r}])\n"
      "seconds = time.perf_counter() - start\n"
      "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
      "print(rc, seconds, (after - before) * 1024)\n")
  proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)
  rc, seconds, grown = proc.stdout.split()
  assert int(rc) == 1 and proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1
  assert "not a StyleGAN-XL snapshot" in proc.stderr
  assert float(seconds) < BOMB_SECONDS and int(grown) < BOMB_BYTES, (seconds, grown)


def test_container_size_limit(tmp_path, monkeypatch):
  monkeypatch.setattr(sgxl_pickle, "MAX_CONTAINER_ITEMS", 1500)
  path = tmp_path / "big.pkl"  # pickle appends in batches of 1000: the stack stays small
  path.write_bytes(pickle.dumps({"G_ema": list(range(2001))}, 4))
  with pytest.raises(SnapshotError, match=r"a container of more than 1500 items \(limit\)$"):
    load_snapshot(str(path))
  path.write_bytes(b"\x80\x04(" + b"N" * 1501 + b"l.")  # MARK, 1501 x None, LIST
  with pytest.raises(SnapshotError, match=r"pickle stack exceeds 1500 items \(limit\)$"):
    load_snapshot(str(path))


def test_nesting_limit(tmp_path):
  depth = 10 * sgxl_pickle.MAX_NESTING
  path = tmp_path / "deep.pkl"  # [[[...]]] depth levels: EMPTY_LIST x depth, APPEND x depth-1
  path.write_bytes(b"\x80\x04" + b"]" * depth + b"a" * (depth - 1) + b".")
  with pytest.raises(SnapshotError, match=rf"nested deeper than {sgxl_pickle.MAX_NESTING} levels"):
    load_pickle(str(path))


# ----------------------------------------------------------------------------- audit


FORBIDDEN_IMPORTS = ("timm", "pg_modules", "feature_networks", "torch_utils", "dnnlib", "dill",
                     "legacy", "training")

_AUDIT_SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
events = {{"imports": [], "compile_sources": [], "exec_files": [], "code_new": []}}
def hook(event, args):
  if event == "import":
    events["imports"].append(args[0])
  elif event == "compile":
    source = args[0]
    if isinstance(source, bytes):
      source = source.decode("latin-1")
    events["compile_sources"].append(source if isinstance(source, str) else "")
  elif event == "exec":
    events["exec_files"].append(getattr(args[0], "co_filename", "?"))
  elif event == "code.__new__":
    events["code_new"].append(str(args[1]))
sys.addaudithook(hook)
from converters import stylegan_xl
rc = stylegan_xl.main(["--pkl", {pkl!r}, "--out", {out!r}])
events["rc"] = rc
events["modules"] = sorted(sys.modules)
with open({report!r}, "w") as f:
  json.dump(events, f)
"""


def test_conversion_imports_compiles_and_executes_nothing_from_the_pickle(tmp_path, fixtures_dir):
  # The realistic snapshot with its module_src (same length: the pickle stays valid)
  # replaced by code that would leave a marker if it ever ran.
  data = (fixtures_dir / "sgxl_realistic.pkl").read_bytes()
  old = b"# module source omitted from this test fixture\n"
  new = b"open('pwned_by_module_src', 'w').close()  #\n"
  new = new[:-1] + b"#" * (len(old) - len(new)) + b"\n"
  assert len(new) == len(old) and data.count(old) > 0
  pkl = tmp_path / "realistic.pkl"
  pkl.write_bytes(data.replace(old, new))
  # The file name the pickled hook closures' code object claims (dill's _create_code).
  D = load_pickle(str(pkl))["D"]
  code_files = {a for _, r in sgxl_pickle.find_records(D) if isinstance(r, InertCall)
                for c in r.args if isinstance(c, InertCall) and c.name.endswith("_create_code")
                for a in c.args if isinstance(a, str) and a.endswith(".py")}
  assert code_files  # FIXTURES.md: four closures share one pickled code object
  report = tmp_path / "events.json"
  script = _AUDIT_SCRIPT.format(root=str(ROOT), pkl=str(pkl), out=str(tmp_path / "out"),
                                report=str(report))
  proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  events = json.loads(report.read_text())
  assert events["rc"] == 0
  top = {name.split(".")[0] for name in events["imports"] + events["modules"]}
  assert not top & set(FORBIDDEN_IMPORTS)
  assert not any("pwned_by_module_src" in s for s in events["compile_sources"])
  assert not set(events["exec_files"]) & code_files
  # No code object was built from the pickle's bytecode (libraries build a few of their own).
  assert not set(events["code_new"]) & code_files
  assert not (tmp_path / "pwned_by_module_src").exists()


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
