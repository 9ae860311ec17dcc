"""Safe reader for StyleGAN-XL snapshot pickles: parses, never executes.

A StyleGAN-XL snapshot (`network-snapshot-*.pkl`, `imagenet256.pkl`) is a `dill`
pickle of a dict `{G, D, G_ema, augment_pipe, training_set_kwargs, progress}`. Every
network is a "persistent" object: the pickle calls
`torch_utils.persistence._reconstruct_persistent_obj(meta)`, and the reference loader
then *executes* `meta['module_src']` (arbitrary Python) to rebuild the class. A pickle
is untrusted input, so this module never does that: it unpickles with a restricted
unpickler and returns plain, inert `Node` trees of numpy arrays.

Safety model (two independent layers):
  1. A static pre-scan (`scan_globals`) walks the opcodes without unpickling, tracks
     which global each call (REDUCE / INST / OBJ) uses, and refuses the file if any
     call targets a global outside `ALLOWED_CALLABLES`, if a BUILD would set the
     attributes of a global itself (e.g. rewrite an allowed function's defaults), or
     if the pickle uses opcodes a snapshot never needs (persistent ids, the copyreg
     extension registry). Nothing from the file has run at that point.
  2. The unpickler's `find_class` never imports anything named by the pickle. Names in
     `ALLOWED_CALLABLES` resolve to small functions defined here (which decode tensors
     with `torch.load(..., map_location='cpu', weights_only=True)`, rebuild numpy arrays
     and wrap persistent objects as records; `module_src` is kept as text only). Every
     other name resolves to an inert placeholder class created here: it can be
     instantiated by NEWOBJ + BUILD (that is how `torch.nn.modules.*` objects such as
     the class `Embedding` are pickled; no code of the named class runs, the state is
     just stored), but calling it raises `SnapshotError` naming the global. The same
     holds for non-torch classes a real `D` pickles by reference (timm feature
     networks, `pg_modules.*`): they become inert Nodes whose `source` is their
     module path, so the generator can be read without those packages. Instances of
     unknown dict / list subclasses (dnnlib.EasyDict) read back as plain dicts / lists.

Opt-in inert calls (never the default): a real released snapshot (imagenet256.pkl) also
holds the discriminator `D`, whose pickle may call harmless callables outside the
allow-list (`functools.partial`, a timm class with a custom __reduce__), so the whole file
would be refused although only `G_ema` is needed. `load_snapshot(path, inert_calls=(...))`
(CLI: `--inert-calls module.name[,...]`) names such globals exactly (fully qualified, no
wildcards; names under `DENIED_PREFIXES` such as builtins.*, os.*, subprocess.* are refused
even when listed). The pre-scan then accepts calls of exactly those names, and the
unpickler replaces each call with an `InertCall(name, args, state, ...)` record:
the callable is never imported or run, and globals the call merely receives as arguments
(e.g. the `os.system` inside a `partial(os.system, ...)`) stay names, never imported.
An `InertCall` anywhere in the network a converter consumes makes it fail
(`find_inert_calls`), so a placeholder can never end up inside a generator.

Allowed callables (exactly what FIXTURES.md lists, checked with pickletools on both
fixture pickles; numpy under both its 1.x and 2.x module names):
  torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter,
  torch.storage._load_from_bytes, torch_utils.persistence._reconstruct_persistent_obj,
  dill._dill._create_array, numpy{.core,._core}.multiarray._reconstruct / .scalar,
  numpy.dtype, numpy.ndarray (only as `_reconstruct`'s subtype),
  collections.OrderedDict.

Usage:
  snap = load_snapshot('imagenet256.pkl')   # {'G': Node, 'D': Node, 'G_ema': Node, ...}
  snap = load_snapshot('imagenet256.pkl', inert_calls=('functools.partial',))  # if D needs it
  G = snap['G_ema']
  G.class_name                              # 'SuperresGenerator'
  G['mapping']['embed'].params['weight']    # np.ndarray float32 [1000, 320]
  G['synthesis'].attrs['layer_names']       # ['L0_36_1024', ...]
  for path, node in G.walk(): ...           # ('', G), ('mapping', ...), ...
  G.state_dict()                            # {'mapping.embed.weight': ..., ...}

Every failure is a `SnapshotError` (a ValueError) with a one-line message: missing
file, truncated or corrupt pickle, not a StyleGAN-XL snapshot, forbidden global, bad or
denied `inert_calls` name.
"""
from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import pickletools
import re
import warnings
from typing import Any, Iterator

import numpy as np
import torch

# Persistent-object format version written by torch_utils.persistence (StyleGAN2-ADA,
# StyleGAN3, StyleGAN-XL all write 6).
PERSISTENCE_VERSION = 6
# torch.nn.Module bookkeeping in an object's __dict__ that is neither a parameter,
# a buffer, a child nor a meaningful attribute.
_TORCH_INTERNAL_ATTRS = frozenset({
    "training", "_parameters", "_buffers", "_modules", "_non_persistent_buffers_set",
    "_backward_pre_hooks", "_backward_hooks", "_is_full_backward_hook",
    "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
    "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_state_dict_hooks",
    "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
    "_compiled_call_impl",
})


# Node.attrs key under which records of opted-in calls found in a module's parameter,
# buffer or child slot are kept: {'_modules.<name>' | '_parameters.<name>' | ...: InertCall}.
INERT_ATTR = "__inert_calls__"


class SnapshotError(ValueError):
  """A snapshot pickle is missing, corrupt, not a StyleGAN-XL snapshot, or unsafe."""


# ----------------------------------------------------------------------------- node tree


@dataclasses.dataclass(eq=False, repr=False)
class Node:
  """One network object of a snapshot (a torch.nn.Module in the original), inert.

  Attributes:
    class_name: the original class name, e.g. 'SuperresGenerator', 'SynthesisLayer',
      'Embedding'.
    source: where the class came from: 'persistent' (a torch_utils.persistence object;
      its class lives in `module_src`), or the dotted module of a pickled class such as
      'torch.nn.modules.sparse'.
    params: parameter name -> np.ndarray (floating tensors as float32). Parameters
      registered as None (e.g. a Conv2d without bias) are left out.
    buffers: buffer name -> np.ndarray, or None where the module registered a None
      buffer (e.g. an identity `up_filter`).
    children: child module name -> Node, in registration order (`_modules`); None
      children are left out.
    attrs: every other attribute of the object's __dict__ (ints, floats, strings,
      lists, numpy arrays, nested Nodes), torch hook bookkeeping removed.
    version: persistence format version (None unless source == 'persistent').
    module_src: the Python source the reference loader would execute; kept as text
      only, never executed (None unless source == 'persistent').
  """
  class_name: str
  source: str
  params: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  buffers: dict[str, np.ndarray | None] = dataclasses.field(default_factory=dict)
  children: dict[str, "Node"] = dataclasses.field(default_factory=dict)
  attrs: dict[str, Any] = dataclasses.field(default_factory=dict)
  version: int | None = None
  module_src: str | None = None

  def __getitem__(self, name: str) -> "Node":
    """The child `name`; a dotted path ('synthesis.L0_36_1024') walks down."""
    node = self
    for part in name.split("."):
      if part not in node.children:
        raise KeyError(f"{node.class_name} has no child {part!r} "
                       f"(children: {', '.join(node.children) or 'none'})")
      node = node.children[part]
    return node

  def __contains__(self, name: str) -> bool:
    return name in self.children

  def __repr__(self) -> str:
    return (f"Node({self.class_name}, params={list(self.params)}, "
            f"buffers={list(self.buffers)}, children={list(self.children)})")

  def walk(self, prefix: str = "") -> Iterator[tuple[str, "Node"]]:
    """Yields (dotted path, node) for this node and all descendants, pre-order.

    The root's path is `prefix` ('' by default); children follow registration order.
    """
    yield prefix, self
    for name, child in self.children.items():
      yield from child.walk(f"{prefix}.{name}" if prefix else name)

  def state_dict(self) -> dict[str, np.ndarray]:
    """Dotted name -> array for every parameter and non-None buffer below this node,
    named like torch's `module.state_dict()`."""
    out = {}
    for path, node in self.walk():
      for name, value in list(node.params.items()) + list(node.buffers.items()):
        if value is not None:
          out[f"{path}.{name}" if path else name] = value
    return out


# ----------------------------------------------------------------------------- inert records


@dataclasses.dataclass(eq=False)
class _Storage:
  """A decoded tensor storage: a flat typed CPU tensor."""
  flat: torch.Tensor  # [numel]


class _PersistentRecord:
  """What `_reconstruct_persistent_obj(meta)` returns here: the meta, unexecuted."""

  def __init__(self, meta: dict):
    self.meta = meta


def _forbidden_call(name: str) -> SnapshotError:
  """The error for a call of a global that is neither allowed nor opted in as inert."""
  message = f"forbidden global {name} (the pickle tries to call it)"
  if _inert_name_problem(name) is None:
    message += (f"; if it is only inside D and you trust the rest, rerun with --inert-calls "
                f"{name} (it will be recorded, never run)")
  return SnapshotError(message)


class _PlaceholderMeta(type):
  """Metaclass of inert placeholders: calling the class (REDUCE) is refused."""

  def __call__(cls, *args, **kwargs):
    raise _forbidden_call(cls._global_name)


@dataclasses.dataclass(eq=False)
class InertCall:
  """A call the pickle makes of an opted-in global (`inert_calls`), recorded, never run.

  Attributes:
    name: the called global, fully qualified ('functools.partial').
    args: the positional arguments, converted like attribute values (objects as Nodes,
      InertCalls, globals referenced by name as their 'module.name' string).
    state: what a following BUILD would have handed to the result (None if none).
    items: items SETITEM(S) added to the result, in order.
    elements: elements APPEND(S) / ADDITEMS added to the result, in order.
  """
  name: str
  args: tuple = ()
  state: Any = None
  items: dict = dataclasses.field(default_factory=dict)
  elements: list = dataclasses.field(default_factory=list)

  def __repr__(self) -> str:
    return f"InertCall({self.name}, {len(self.args)} args)"

  # The unpickler treats the record like the object the call would have returned.
  def __setstate__(self, state):
    self.state = state

  def __setitem__(self, key, value):
    self.items[key] = value

  def append(self, value):
    self.elements.append(value)

  def extend(self, values):
    self.elements.extend(values)

  def add(self, value):
    self.elements.append(value)

  def __reduce__(self):
    raise TypeError("inert call records are not picklable")


class _InertMeta(_PlaceholderMeta):
  """Metaclass of opted-in globals: calling one records an InertCall instead."""

  def __call__(cls, *args):  # REDUCE / INST / OBJ pass positional arguments only
    return InertCall(cls._global_name, args)


class _Placeholder(metaclass=_PlaceholderMeta):
  """Base of the inert stand-in classes for globals that are not allowed callables.

  NEWOBJ creates an instance through __new__ (nothing of the named class runs) and
  BUILD hands the pickled state to __setstate__, which only stores it. Items that the
  pickle adds to an instance of a dict, list or set subclass (e.g. dnnlib.EasyDict in
  `_init_kwargs`) are stored the same way.
  """
  _global_name = "?"

  def __new__(cls, *args, **kwargs):
    del args, kwargs  # constructor arguments of the original class are irrelevant
    obj = object.__new__(cls)
    obj._state = {}
    obj._items = {}  # SETITEM(S) on a dict subclass
    obj._elements = []  # APPEND(S) / ADDITEMS on a list or set subclass
    return obj

  def __setstate__(self, state):
    self._state = state

  def __setitem__(self, key, value):
    self._items[key] = value

  def append(self, value):
    self._elements.append(value)

  def extend(self, values):
    self._elements.extend(values)

  def add(self, value):
    self._elements.append(value)

  def __reduce__(self):
    raise TypeError("placeholders are not picklable")


def _placeholder(module: str, name: str, inert: bool = False) -> type:
  meta = _InertMeta if inert else _PlaceholderMeta
  return meta(name, (_Placeholder,), {"_global_name": f"{module}.{name}", "_module": module})


# ----------------------------------------------------------------------------- allowed callables


def _load_from_bytes(data):
  """torch.storage._load_from_bytes: storage bytes in torch's legacy format -> _Storage.

  Decoded with torch's weights-only unpickler on the CPU (snapshots written on a GPU
  tag their storages 'cuda:0').
  """
  if not isinstance(data, (bytes, bytearray)):
    raise SnapshotError(f"corrupt tensor storage: expected bytes, got {type(data).__name__}")
  with warnings.catch_warnings():  # TypedStorage is deprecated, but it is what was saved
    warnings.simplefilter("ignore", UserWarning)
    try:
      storage = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad bytes; report them uniformly
      raise SnapshotError(f"corrupt tensor storage ({type(e).__name__}: "
                          f"{(str(e).splitlines() or [''])[0]})") from None
    if isinstance(storage, torch.UntypedStorage):
      flat = torch.empty(0, dtype=torch.uint8).set_(storage)
    elif isinstance(storage, torch.TypedStorage):
      flat = torch.empty(0, dtype=storage.dtype).set_(storage._untyped_storage)
      flat = flat[:storage.size()]
    else:
      raise SnapshotError(f"corrupt tensor storage: decoded to {type(storage).__name__}")
  return _Storage(flat)


def _to_numpy(t: torch.Tensor, whole_storage: bool) -> np.ndarray:
  """A tensor as a numpy array; floating types become float32.

  A contiguous float32 tensor that spans its whole storage shares the storage's memory
  (the usual case: a real snapshot is not held twice while it loads); any other tensor
  is copied, so views of one storage never alias each other.
  """
  if t.is_floating_point() and t.dtype != torch.float32:
    return t.to(torch.float32).numpy()  # .to() makes a fresh tensor
  if whole_storage and t.is_contiguous():
    return t.numpy()
  return t.clone().numpy()


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  """torch._utils._rebuild_tensor_v2 -> np.ndarray (no hooks, no metadata kept)."""
  del requires_grad, backward_hooks, metadata  # training-time state, irrelevant here
  if not isinstance(storage, _Storage):
    raise SnapshotError(f"corrupt tensor: storage is {type(storage).__name__}")
  if not (isinstance(storage_offset, int) and isinstance(size, tuple) and isinstance(stride, tuple)
          and all(isinstance(v, int) and v >= 0 for v in size + stride)):
    raise SnapshotError("corrupt tensor: bad offset / size / stride")
  try:
    t = torch.as_strided(storage.flat, size, stride, storage_offset)
    return _to_numpy(t, storage_offset == 0 and t.numel() == storage.flat.numel())
  except RuntimeError as e:
    raise SnapshotError(f"corrupt tensor ({(str(e).splitlines() or [''])[0]})") from None


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None):
  """torch._utils._rebuild_parameter -> the array itself."""
  del requires_grad, backward_hooks
  if not isinstance(data, np.ndarray):
    raise SnapshotError(f"corrupt parameter: data is {type(data).__name__}")
  return data


def _reconstruct_persistent_obj(meta):
  """torch_utils.persistence._reconstruct_persistent_obj -> an inert record of `meta`."""
  if not isinstance(meta, dict):
    raise SnapshotError(f"corrupt persistent object: meta is {type(meta).__name__}")
  missing = {"type", "version", "module_src", "class_name", "state"} - set(meta)
  if missing:
    raise SnapshotError(f"corrupt persistent object: meta lacks {sorted(missing)}")
  if meta["type"] != "class" or not isinstance(meta["class_name"], str):
    raise SnapshotError(f"unsupported persistent object type {meta['type']!r}")
  if meta["version"] != PERSISTENCE_VERSION:
    raise SnapshotError(f"unsupported persistence version {meta['version']!r} "
                        f"(expected {PERSISTENCE_VERSION})")
  if not isinstance(meta["module_src"], str) or not isinstance(meta["state"], dict):
    raise SnapshotError(f"corrupt persistent object {meta['class_name']}")
  return _PersistentRecord(meta)


class _NdarraySubtype:
  """Stands for numpy.ndarray where the pickle names it (only `_reconstruct` uses it)."""


def _np_reconstruct(subtype, shape, typecode):
  """numpy.core.multiarray._reconstruct: an empty ndarray that BUILD then fills."""
  del shape, typecode  # __setstate__ sets the real shape and dtype
  if subtype is not _NdarraySubtype:
    raise SnapshotError(f"forbidden ndarray subtype {getattr(subtype, '_global_name', subtype)}")
  return np.empty((0,), np.uint8)


def _np_scalar(dtype, data=None):
  """numpy.core.multiarray.scalar: a numpy scalar from its raw bytes."""
  if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes) \
      or len(data) != dtype.itemsize:
    raise SnapshotError("corrupt numpy scalar")
  return np.frombuffer(data, dtype=dtype, count=1)[0]


def _np_dtype(spec, align=False, copy=False):
  """numpy.dtype, for the string specs numpy pickles ('f4', 'i8', ...)."""
  if not isinstance(spec, str):
    raise SnapshotError(f"corrupt numpy dtype spec {type(spec).__name__}")
  return np.dtype(spec, align=bool(align), copy=bool(copy))


def _dill_create_array(f, args, state, npdict=None):
  """dill._dill._create_array: f(*args) then __setstate__(state)."""
  if f is not _np_reconstruct or not isinstance(args, tuple):
    raise SnapshotError("dill array built by something other than numpy's _reconstruct")
  if npdict:
    raise SnapshotError("dill array with an ndarray-subclass __dict__ is not supported")
  array = f(*args)
  array.__setstate__(state)
  return array


def _ordered_dict(*args):
  """collections.OrderedDict, with at most an iterable of pairs."""
  return collections.OrderedDict(*args)


ALLOWED_CALLABLES = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dill._dill", "_create_array"): _dill_create_array,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("numpy", "dtype"): _np_dtype,
    ("collections", "OrderedDict"): _ordered_dict,
}
# Globals resolved to a value that is never called.
_ALLOWED_VALUES = {("numpy", "ndarray"): _NdarraySubtype}


def _name(module: str, name: str) -> str:
  return f"{module}.{name}"


# ----------------------------------------------------------------------------- inert-call opt-in

# Names that can never be opted in as inert calls, even though an inert call runs nothing:
# a snapshot has no business calling them, so a pickle that does is refused outright. A
# prefix denies the module itself and everything below it ('os' denies 'os.path.join').
DENIED_PREFIXES = (
    "builtins", "__builtin__", "os", "posix", "nt", "posixpath", "ntpath", "subprocess",
    "sys", "importlib", "runpy", "pickle", "_pickle", "pickletools", "copyreg", "copy_reg",
    "shelve", "dill", "cloudpickle", "joblib", "shutil", "tempfile", "pathlib", "glob",
    "socket", "ssl", "http", "urllib", "ftplib", "smtplib", "telnetlib", "webbrowser",
    "ctypes", "cffi", "io", "_io", "codecs", "_codecs", "marshal", "types", "code", "codeop",
    "pty", "pdb", "inspect", "gc", "signal", "threading", "_thread", "multiprocessing",
    "concurrent", "asyncio", "platform", "zipimport", "pkgutil", "site", "ast",
    "numpy.ctypeslib", "numpy.f2py", "numpy.distutils", "numpy.testing", "numpy.lib.format",
    "numpy.load", "numpy.save", "numpy.fromfile", "numpy.loadtxt", "numpy.genfromtxt",
    "torch.load", "torch.save", "torch.hub", "torch.jit", "torch.ops", "torch.classes",
    "torch.package", "torch.utils.cpp_extension", "torch.serialization",
    "torch_utils.persistence", "operator.attrgetter", "operator.methodcaller",
    "functools.reduce",
)
# A fully qualified dotted Python name (no wildcards, spaces or empty parts).
_QUALNAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


def _denied(name: str) -> str | None:
  """The DENIED_PREFIXES entry that covers `name`, or None."""
  for prefix in DENIED_PREFIXES:
    if name == prefix or name.startswith(prefix + "."):
      return prefix
  return None


def check_inert_calls(names) -> frozenset[str]:
  """Validates an `inert_calls` opt-in list.

  Args:
    names: iterable of fully qualified global names ('functools.partial'); empty means
      no opt-in (the default: every call outside ALLOWED_CALLABLES is refused).
  Returns:
    the names as a frozenset.
  Raises:
    SnapshotError: a string instead of a list, a wildcard or malformed name, a name on
      the deny-list (DENIED_PREFIXES), or an already allowed callable.
  """
  if isinstance(names, (str, bytes)):
    raise SnapshotError(f"inert_calls must be a list of names, not the string {names!r}")
  out = set()
  for name in names:
    problem = _inert_name_problem(name)
    if problem is not None:
      raise SnapshotError(problem)
    out.add(name)
  return frozenset(out)


def _inert_name_problem(name) -> str | None:
  """Why `name` cannot be opted in as an inert call, or None if it can."""
  if not isinstance(name, str) or not _QUALNAME.fullmatch(name):
    return (f"bad --inert-calls name {name!r}: give exact fully qualified names such as "
            f"functools.partial (no wildcards)")
  if any(part.startswith("__") for part in name.split(".")):
    return f"bad --inert-calls name {name!r}: dunder names (__x__) cannot be opted in"
  prefix = _denied(name)
  if prefix is not None:
    return (f"--inert-calls {name} refused: {prefix}{'' if prefix == name else '.*'} is on "
            f"the deny-list (a snapshot never needs to call it)")
  if any(_name(*key) == name for key in list(ALLOWED_CALLABLES) + list(_ALLOWED_VALUES)):
    return f"--inert-calls {name} refused: it is already an allowed callable"
  return None


# ----------------------------------------------------------------------------- static pre-scan

_STR_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE",
                      "STRING", "BINSTRING", "SHORT_BINSTRING"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_REFUSED_OPS = {
    "PERSID": "persistent ids", "BINPERSID": "persistent ids",
    "EXT1": "the copyreg extension registry", "EXT2": "the copyreg extension registry",
    "EXT4": "the copyreg extension registry",
}


@dataclasses.dataclass(frozen=True)
class _Str:
  value: str


@dataclasses.dataclass(frozen=True)
class _Global:
  module: str
  name: str


def scan_globals(f, inert_calls=()) -> collections.Counter:
  """Checks a pickle stream's opcodes without unpickling anything.

  Simulates the unpickler's stack symbolically to learn which global every call
  (REDUCE, INST, OBJ) targets. Raises SnapshotError naming the first forbidden global
  that would be called, a BUILD that would set attributes of a global itself (e.g. the
  defaults of an allowed function), or the first opcode a snapshot never uses; raises
  SnapshotError for a truncated or malformed stream.

  Args:
    f: binary file object positioned at the start of the pickle.
    inert_calls: fully qualified names whose calls are accepted because the unpickler
      will record them as InertCall (see `check_inert_calls`); () accepts none.
  Returns:
    Counter of (module, name) -> number of GLOBAL / STACK_GLOBAL uses.
  """
  inert = check_inert_calls(inert_calls)
  # Like the C unpickler: objects on one stack, MARKs as a separate list of heights.
  stack: list[Any] = []
  marks: list[int] = []
  memo: dict[int, Any] = {}
  seen: collections.Counter = collections.Counter()

  def fence():
    return marks[-1] if marks else 0

  def top():
    if len(stack) <= fence():
      raise SnapshotError("corrupt pickle: stack underflow")
    return stack[-1]

  def pop():
    value = top()
    stack.pop()
    return value

  def pop_mark():
    if not marks:
      raise SnapshotError("corrupt pickle: missing MARK")
    height = marks.pop()
    items = stack[height:]
    del stack[height:]
    return items

  def check_call(target, op):
    if isinstance(target, _Global):
      if (target.module, target.name) not in ALLOWED_CALLABLES \
          and _name(target.module, target.name) not in inert:
        raise _forbidden_call(_name(target.module, target.name))
    else:
      raise SnapshotError(f"forbidden {op}: the pickle calls a computed object")

  try:
    for op, arg, _ in pickletools.genops(f):
      name = op.name
      if name in _REFUSED_OPS:
        raise SnapshotError(f"forbidden opcode {name}: snapshots never use {_REFUSED_OPS[name]}")
      if name in _STR_OPS:
        stack.append(_Str(arg))
      elif name == "GLOBAL":
        module, gname = arg.split(" ", 1)
        seen[(module, gname)] += 1
        stack.append(_Global(module, gname))
      elif name == "STACK_GLOBAL":
        gname, module = pop(), pop()
        if not (isinstance(module, _Str) and isinstance(gname, _Str)):
          raise SnapshotError("forbidden STACK_GLOBAL with a computed name")
        seen[(module.value, gname.value)] += 1
        stack.append(_Global(module.value, gname.value))
      elif name == "MEMOIZE":
        memo[len(memo)] = top()
      elif name in _PUT_OPS:
        memo[arg] = top()
      elif name in _GET_OPS:
        if arg not in memo:
          raise SnapshotError(f"corrupt pickle: memo key {arg} missing")
        stack.append(memo[arg])
      elif name == "REDUCE":
        pop()
        check_call(pop(), name)
        stack.append(None)
      elif name == "INST":
        module, gname = arg.split(" ", 1)
        seen[(module, gname)] += 1
        pop_mark()
        check_call(_Global(module, gname), name)
        stack.append(None)
      elif name == "OBJ":
        items = pop_mark()
        check_call(items[0] if items else None, name)
        stack.append(None)
      elif name == "BUILD":
        pop()  # the state
        if isinstance(top(), _Global):
          target = top()
          raise SnapshotError(f"forbidden BUILD on global {_name(target.module, target.name)} "
                              f"(the pickle tries to set its attributes)")
      elif name == "MARK":
        marks.append(len(stack))
      elif name == "POP_MARK":
        pop_mark()
      elif name == "POP":
        if len(stack) > fence():
          stack.pop()
        elif marks:
          marks.pop()
        else:
          raise SnapshotError("corrupt pickle: stack underflow")
      elif name == "DUP":
        stack.append(top())
      elif name == "STOP":
        break
      else:
        # Generic: pop what the opcode consumes (up to a MARK for stack slices), push
        # opaque results. NEWOBJ and container opcodes land here: they call no global.
        before = list(op.stack_before)
        if pickletools.stackslice in before:
          pop_mark()
          before = before[:before.index(pickletools.markobject)]
        for _ in before:
          pop()
        stack.extend([None] * len(op.stack_after))
  except (ValueError, EOFError) as e:
    if isinstance(e, SnapshotError):
      raise
    raise SnapshotError(f"truncated or corrupt pickle ({e})") from None
  return seen


# ----------------------------------------------------------------------------- unpickling


class _SafeUnpickler(pickle.Unpickler):
  """Unpickler whose globals are the allowed callables here or inert placeholders.

  Globals named in `inert_calls` become placeholders whose call returns an InertCall.
  """

  def __init__(self, f, inert_calls=()):
    super().__init__(f)
    self._placeholders: dict[tuple[str, str], type] = {}
    self._inert = check_inert_calls(inert_calls)

  def find_class(self, module, name):
    key = (module, name)
    if key in ALLOWED_CALLABLES:
      return ALLOWED_CALLABLES[key]
    if key in _ALLOWED_VALUES:
      return _ALLOWED_VALUES[key]
    if key not in self._placeholders:
      self._placeholders[key] = _placeholder(module, name, _name(module, name) in self._inert)
    return self._placeholders[key]

  def persistent_load(self, pid):
    raise SnapshotError("forbidden persistent id: snapshots never use them")


class _Converter:
  """Turns unpickled records into Nodes and plain values, once per object."""

  def __init__(self):
    self._done: dict[int, Any] = {}

  def node(self, obj) -> Node:
    if id(obj) in self._done:
      return self._done[id(obj)]
    if isinstance(obj, _PersistentRecord):
      meta = obj.meta
      node = Node(meta["class_name"], "persistent", version=meta["version"],
                  module_src=meta["module_src"])
      state = meta["state"]
    else:
      node = Node(type(obj).__name__, type(obj)._module)
      state = obj._state
    self._done[id(obj)] = node
    if not isinstance(state, dict):
      node.attrs["__state__"] = self.value(state)  # not a module: keep what it pickled
      return node
    for slot in ("_parameters", "_buffers", "_modules"):
      for key, value in list((state.get(slot) or {}).items()):
        if isinstance(value, InertCall):  # an opted-in call made this: keep the record only
          node.attrs.setdefault(INERT_ATTR, {})[f"{slot}.{key}"] = self.value(value)
    for pname, value in (state.get("_parameters") or {}).items():
      if value is not None and not isinstance(value, InertCall):
        node.params[pname] = self._array(value, f"{node.class_name} parameter {pname}")
    for bname, value in (state.get("_buffers") or {}).items():
      if not isinstance(value, InertCall):
        node.buffers[bname] = None if value is None else \
            self._array(value, f"{node.class_name} buffer {bname}")
    for cname, value in (state.get("_modules") or {}).items():
      if value is not None and not isinstance(value, InertCall):
        if not self._is_object(value):
          raise SnapshotError(f"corrupt child {cname} of {node.class_name}: "
                              f"{type(value).__name__}")
        node.children[cname] = self.node(value)
    for key, value in state.items():
      if key not in _TORCH_INTERNAL_ATTRS:
        node.attrs[key] = self.value(value)
    return node

  @staticmethod
  def _is_object(value) -> bool:
    return isinstance(value, (_PersistentRecord, _Placeholder))

  @staticmethod
  def _array(value, what) -> np.ndarray:
    if not isinstance(value, np.ndarray):
      raise SnapshotError(f"corrupt {what}: {type(value).__name__} instead of a tensor")
    return value

  def value(self, v):
    """A plain copy of an attribute value with every object turned into a Node.

    Instances of unknown dict / list / set subclasses that carry only items (such as
    dnnlib.EasyDict) become a plain dict / list.
    """
    if isinstance(v, InertCall):
      if id(v) not in self._done:
        record = self._done[id(v)] = InertCall(v.name)  # registered first: cycles end here
        record.args, record.state = self.value(v.args), self.value(v.state)
        record.items = {k: self.value(x) for k, x in v.items.items()}
        record.elements = [self.value(x) for x in v.elements]
      return self._done[id(v)]
    if isinstance(v, _Placeholder) and not v._state and (v._items or v._elements):
      if v._items and v._elements:
        raise SnapshotError(f"corrupt {v._global_name}: both dict items and list elements")
      return {k: self.value(x) for k, x in v._items.items()} if v._items \
          else [self.value(x) for x in v._elements]
    if self._is_object(v):
      return self.node(v)
    if isinstance(v, _PlaceholderMeta):
      return v._global_name  # a class referenced by name: keep only the name
    if isinstance(v, dict):
      return type(v)((k, self.value(x)) for k, x in v.items()) if isinstance(v, collections.OrderedDict) \
          else {k: self.value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
      return type(v)(self.value(x) for x in v)
    if isinstance(v, (set, frozenset)):
      return type(v)(self.value(x) for x in v)
    return v


def find_inert_calls(value, path: str = "") -> list[tuple[str, InertCall]]:
  """Every InertCall reachable from `value` (a Node or attribute value), with its path.

  Searches params, buffers, children, attrs (including records of opted-in calls that
  stood in a module's parameter, buffer or child slot, kept in attrs[INERT_ATTR]) and
  nested containers; each object is visited once.

  Args:
    value: a Node (e.g. snapshot['G_ema']) or any value load_pickle returns.
    path: the dotted path reported for `value` itself ('' for the root).
  Returns:
    [(dotted path, InertCall)] in visiting order; empty if there is none.
  """
  found, seen = [], set()

  def visit(v, where):
    if isinstance(v, (Node, InertCall, dict, list, tuple, set, frozenset)):
      if id(v) in seen:
        return
      seen.add(id(v))
    def join(k):
      return f"{where}.{k}" if where else str(k)

    if isinstance(v, InertCall):
      found.append((where, v))
    elif isinstance(v, Node):
      for group in (v.params, v.buffers, v.children, v.attrs):
        for k, x in group.items():
          visit(x, join(k))
    elif isinstance(v, dict):
      for k, x in v.items():
        visit(x, join(k))
    elif isinstance(v, (list, tuple, set, frozenset)):
      for i, x in enumerate(v):
        visit(x, join(i))

  visit(value, path)
  return found


def load_pickle(path: str, inert_calls=()) -> Any:
  """Safely unpickles `path`: returns its top-level value with objects as Nodes.

  Args:
    path: the pickle file.
    inert_calls: fully qualified names of globals whose calls are recorded as
      `InertCall` instead of refused (never imported or run); () (the default) refuses
      every call outside ALLOWED_CALLABLES. Names on the deny-list are refused.
  Raises:
    SnapshotError: missing file, truncated or corrupt pickle, forbidden global, bad or
      denied `inert_calls` name.
  """
  inert_calls = check_inert_calls(inert_calls)
  if not os.path.exists(path):
    raise SnapshotError(f"snapshot not found: {path}")
  if not os.path.isfile(path):
    raise SnapshotError(f"snapshot is not a file: {path}")
  with open(path, "rb") as f:
    try:
      scan_globals(f, inert_calls)
      f.seek(0)
      raw = _SafeUnpickler(f, inert_calls).load()
      return _Converter().value(raw)
    except SnapshotError as e:
      raise SnapshotError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError, RecursionError) as e:
      raise SnapshotError(f"{path}: truncated or corrupt pickle ({type(e).__name__}: {e})") from None


def load_snapshot(path: str, inert_calls=()) -> dict[str, Any]:
  """Safely loads a StyleGAN-XL training snapshot.

  Args:
    path: a snapshot pickle (`network-snapshot-*.pkl`, `imagenet256.pkl`, ...).
    inert_calls: explicit opt-in, see `load_pickle`: calls of exactly these globals are
      recorded as `InertCall` (never run); meant for parts the conversion does not use
      (D). () (the default) refuses them.
  Returns:
    The snapshot dict: 'G', 'D', 'G_ema' (and 'augment_pipe' if a module) as `Node`
    trees, 'training_set_kwargs' and 'progress' as plain values; keys that the file
    lacks are absent. At least one of 'G_ema' / 'G' is present and has children
    'mapping' and 'synthesis'.
  Raises:
    SnapshotError: missing file, truncated or corrupt pickle, forbidden global, bad or
      denied `inert_calls` name, or a pickle that is not a StyleGAN-XL snapshot.
  """
  snap = load_pickle(path, inert_calls)
  if not isinstance(snap, dict):
    raise SnapshotError(f"{path}: not a StyleGAN-XL snapshot (holds a "
                        f"{type(snap).__name__}, not a snapshot dict)")
  generators = [k for k in ("G_ema", "G") if isinstance(snap.get(k), Node)]
  if not generators:
    raise SnapshotError(f"{path}: not a StyleGAN-XL snapshot (no generator G_ema or G; "
                        f"keys: {', '.join(map(str, snap)) or 'none'})")
  for key in generators:
    missing = [c for c in ("mapping", "synthesis") if c not in snap[key].children]
    if missing:
      raise SnapshotError(f"{path}: not a StyleGAN-XL snapshot ({key} "
                          f"({snap[key].class_name}) lacks {' and '.join(missing)})")
  return snap
