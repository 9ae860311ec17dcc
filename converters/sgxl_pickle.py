"""Safe reader for StyleGAN-XL snapshot pickles: reads them as data, never executes them.

A StyleGAN-XL snapshot (`network-snapshot-*.pkl`, `imagenet256.pkl`) is a `dill` pickle
of a dict `{G, D, G_ema, augment_pipe, training_set_kwargs, progress}`. Every network is
a "persistent" object: the pickle calls
`torch_utils.persistence._reconstruct_persistent_obj(meta)`, and the reference loader then
*executes* `meta['module_src']` (arbitrary Python) to rebuild the class. A released file
also pickles the discriminator `D` with timm and `pg_modules` classes, forward-hook
closures pickled by value (`dill._dill._create_function` / `_create_code`), bound methods
and, under dill <= 0.3.4, numpy values as calls of
`_get_attr(_import_module('numpy.core._multiarray_umath'), '_reconstruct')`.

This module never uses `pickle.Unpickler`. It interprets the opcodes itself (`_Machine`)
and builds values from them; nothing named by the file is imported, nothing it calls is
called, nothing in it is compiled:
  * Globals are names (`GlobalRef`), never looked up in Python.
  * Calls of a short list of *recognised* globals build the plain data they stand for
    (`RECOGNISED`: torch tensor rebuilding, numpy arrays / scalars / dtypes,
    `collections.OrderedDict`, sets, the persistence hook as an inert record of its meta,
    and dill's `_create_array`, `_import_module` + `_get_attr` (read statically as the
    global they name) and `_load_type('set')`). They are small functions defined here;
    arguments that do not fit the data pattern make the call an inert record instead.
  * Every other call, of a named global or of a computed object (the result of an
    earlier call), becomes an `InertCall` record: callable, arguments and the state a
    BUILD would have given it, kept as data.
  * NEWOBJ objects (`torch.nn.Embedding`, timm and `pg_modules` classes) become `Node`s
    holding their pickled `__dict__`; persistent objects become `Node`s whose
    `module_src` is kept as text only.
  * Tensor storages are not decoded while reading: a tensor is a `LazyTensor` that
    remembers where its bytes are in the file. `read_snapshot(decode=('G_ema',))`
    decodes only the tensors reachable from the listed keys (with
    `torch.load(map_location='cpu', weights_only=True)`, since snapshots saved on a GPU
    tag storages 'cuda:0'), so `D` and `G` cost no memory when converting `G_ema`.
  * The value builder is memo-aware (a shared reference stays one object) and bounded:
    at most MAX_CONTAINER_ITEMS items per container or on the stack, at most
    MAX_NESTING levels of nested values, lengths never past the end of the file.

Whether a record matters is the caller's decision: `find_records(snap['G_ema'])` lists
every inert record, foreign object or stray value inside a network, with its path; the
converter refuses a generator that holds one. `strict=True` (CLI `--strict`, for
auditors) refuses instead any global outside the recognised ones and `torch.nn.modules.*`
classes, and any call that is not recognised data, anywhere in the file.

Usage:
  snap = load_snapshot('imagenet256.pkl')   # {'G': Node, 'D': Node, 'G_ema': Node, ...}
  G = snap['G_ema']
  G.class_name                              # 'SuperresGenerator'
  G['mapping']['embed'].params['weight']    # np.ndarray float32 [1000, 320]
  G['synthesis'].attrs['layer_names']       # ['L0_36_1024', ...]
  for path, node in G.walk(): ...           # ('', G), ('mapping', ...), ...
  G.state_dict()                            # {'mapping.embed.weight': ..., ...}
  snap, stats = read_snapshot('imagenet256.pkl', decode=('G_ema',))  # D stays LazyTensors

Every failure is a `SnapshotError` (a ValueError) with a one-line message: missing file,
truncated or corrupt pickle, limits exceeded, not a StyleGAN-XL snapshot, a generator that
is itself an inert record, or (strict) an unknown global.
"""
from __future__ import annotations

import collections
import dataclasses
import io
import math
import os
import pickletools
import re
import struct
import sys
import warnings
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

# Persistent-object format version written by torch_utils.persistence (StyleGAN2-ADA,
# StyleGAN3, StyleGAN-XL all write 6).
PERSISTENCE_VERSION = 6
# Most items one container (list, dict, set, tuple, the stack) may hold. A real snapshot's
# largest container has a few thousand (D's state dicts); each item costs at least one
# byte of file, so this bounds a hostile file's memory at ~8 bytes per file byte anyway.
MAX_CONTAINER_ITEMS = 1 << 22
# Most levels of nested values (containers, records, objects). The realistic fixture's
# deepest value is 46 levels (D: timm blocks in Sequentials in ModuleDicts, hook
# closures); this leaves room and keeps the recursive builder far from Python's limit.
MAX_NESTING = 400
# Byte strings at least this long are not read while parsing: a `LazyBytes` remembers
# their place in the file (tensor storages; everything smaller is read at once).
LAZY_BYTES = 1 << 12
# torch.nn.Module bookkeeping in an object's __dict__ that is neither a parameter, a
# buffer, a child nor a meaningful attribute: kept apart, in Node.internals.
_TORCH_INTERNAL_ATTRS = frozenset({
    "training", "_parameters", "_buffers", "_modules", "_non_persistent_buffers_set",
    "_backward_pre_hooks", "_backward_hooks", "_is_full_backward_hook",
    "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
    "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_state_dict_hooks",
    "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
    "_compiled_call_impl",
})
# Where the classes of plain torch modules live (the only NEWOBJ classes a generator may
# hold besides persistent objects, and the only ones --strict accepts).
TORCH_MODULES = "torch.nn.modules."
# numpy's multiarray module under numpy 1.x and 2.x, public and private spelling.
NUMPY_MULTIARRAY = ("numpy.core.multiarray", "numpy.core._multiarray_umath",
                    "numpy._core.multiarray", "numpy._core._multiarray_umath")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class SnapshotError(ValueError):
  """A snapshot pickle is missing, corrupt, not a StyleGAN-XL snapshot, or unsafe."""


# ----------------------------------------------------------------------------- public values


@dataclasses.dataclass(frozen=True)
class GlobalRef:
  """A global the pickle names (`module.name`), never imported or looked up."""
  module: str
  name: str

  def __str__(self) -> str:
    return f"{self.module}.{self.name}" if self.name else self.module


@dataclasses.dataclass(eq=False)
class InertCall:
  """A call the pickle makes that is not recognised data: recorded, never run.

  Attributes:
    func: what is called: a GlobalRef, or a computed object (an earlier InertCall).
    args: the positional arguments, as read (objects as Nodes, globals as GlobalRefs).
    kind: 'call' (REDUCE / INST / OBJ) or 'new' (NEWOBJ of a computed class).
    reason: why a recognised global was not read as data ('' for other globals).
    state: what a following BUILD handed to the result (None if none).
    items: items SETITEM(S) added to the result, in order.
    elements: elements APPEND(S) / ADDITEMS added to the result, in order.
  """
  func: Any
  args: tuple = ()
  kind: str = "call"
  reason: str = ""
  state: Any = None
  items: dict = dataclasses.field(default_factory=dict)
  elements: list = dataclasses.field(default_factory=list)

  @property
  def name(self) -> str:
    """The called global ('posix.system'), or 'X(...)' for the result of a call of X."""
    if isinstance(self.func, GlobalRef):
      return str(self.func)
    if isinstance(self.func, InertCall):
      shown = ", ".join(repr(a) for a in self.func.args
                        if isinstance(a, (str, int, float, bool)) and len(repr(a)) < 40)
      return f"{self.func.name}({shown})"
    return f"a computed {type(self.func).__name__}"

  def __repr__(self) -> str:
    return f"InertCall({self.name}, {len(self.args)} args)"


@dataclasses.dataclass(eq=False)
class LazyBytes:
  """A byte string left in the file: `length` bytes at `offset`."""
  offset: int
  length: int


@dataclasses.dataclass(eq=False)
class LazyStorage:
  """A torch storage (`torch.storage._load_from_bytes(data)`), not yet decoded."""
  data: bytes | LazyBytes
  flat: torch.Tensor | None = None  # [numel], once decoded

  @property
  def nbytes(self) -> int:
    return self.data.length if isinstance(self.data, LazyBytes) else len(self.data)


@dataclasses.dataclass(eq=False)
class LazyTensor:
  """A tensor (`torch._utils._rebuild_tensor_v2`) whose storage is not decoded.

  Attributes:
    storage: the LazyStorage it views.
    offset, size, stride: the view, in elements, as torch pickles them.
  """
  storage: LazyStorage
  offset: int
  size: tuple
  stride: tuple

  @property
  def shape(self) -> tuple:
    return self.size

  @property
  def numel(self) -> int:
    return math.prod(self.size)

  def __repr__(self) -> str:
    return f"LazyTensor(shape={self.size})"


@dataclasses.dataclass(eq=False, repr=False)
class Node:
  """One object of a snapshot (a torch.nn.Module in the original), inert.

  Attributes:
    class_name: the original class name, e.g. 'SuperresGenerator', 'SynthesisLayer',
      'Embedding'.
    source: where the class came from: 'persistent' (a torch_utils.persistence object;
      its class lives in `module_src`), or the dotted module of a pickled class such as
      'torch.nn.modules.sparse'.
    params: parameter name -> np.ndarray (floating tensors as float32), or LazyTensor
      where tensors were not decoded. Parameters registered as None are left out.
    buffers: buffer name -> np.ndarray / LazyTensor, or None where the module
      registered a None buffer (e.g. an identity `up_filter`).
    children: child module name -> Node, in registration order (`_modules`); None
      children are left out.
    attrs: every other attribute of the object's __dict__ (ints, floats, strings,
      lists, numpy values, nested Nodes, records), torch bookkeeping left out.
    internals: the torch bookkeeping (`training`, hook dicts, ...), as read.
    stray: values in a parameter, buffer or child slot that are not a tensor / None /
      module (inert records, corrupt values), keyed '<slot>.<name>'.
    version: persistence format version (None unless source == 'persistent').
    module_src: the Python source the reference loader would execute; kept as text
      only, never executed (None unless source == 'persistent').
  """
  class_name: str
  source: str
  params: dict[str, Any] = dataclasses.field(default_factory=dict)
  buffers: dict[str, Any] = dataclasses.field(default_factory=dict)
  children: dict[str, "Node"] = dataclasses.field(default_factory=dict)
  attrs: dict[str, Any] = dataclasses.field(default_factory=dict)
  internals: dict[str, Any] = dataclasses.field(default_factory=dict)
  stray: dict[str, Any] = dataclasses.field(default_factory=dict)
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

  @property
  def qualname(self) -> str:
    """'module.Class' of a pickled class, 'persistent Class' of a persistent object."""
    return f"persistent {self.class_name}" if self.source == "persistent" \
        else f"{self.source}.{self.class_name}"

  def walk(self, prefix: str = "") -> Iterator[tuple[str, "Node"]]:
    """Yields (dotted path, node) for this node and all descendants, pre-order.

    The root's path is `prefix` ('' by default); children follow registration order.
    """
    yield prefix, self
    for name, child in self.children.items():
      yield from child.walk(f"{prefix}.{name}" if prefix else name)

  def state_dict(self) -> dict[str, Any]:
    """Dotted name -> array for every parameter and non-None buffer below this node,
    named like torch's `module.state_dict()`."""
    out = {}
    for path, node in self.walk():
      for name, value in list(node.params.items()) + list(node.buffers.items()):
        if value is not None:
          out[f"{path}.{name}" if path else name] = value
    return out


@dataclasses.dataclass
class LoadStats:
  """What reading a snapshot cost and left out.

  Attributes:
    storages, storage_bytes: tensor storages in the file and their bytes.
    decoded_storages, decoded_bytes: how many of them were decoded, and their bytes.
    inert_calls: top-level key -> inert call records reachable from it (never run).
    lazy_values: top-level key -> elements of tensors reachable from it left undecoded.
  """
  storages: int = 0
  storage_bytes: int = 0
  decoded_storages: int = 0
  decoded_bytes: int = 0
  inert_calls: dict = dataclasses.field(default_factory=dict)
  lazy_values: dict = dataclasses.field(default_factory=dict)


# ----------------------------------------------------------------------------- raw objects


@dataclasses.dataclass(eq=False)
class _Module:
  """`dill._dill._import_module(name)`: the module's name, never imported."""
  name: str


@dataclasses.dataclass(eq=False)
class _Obj:
  """NEWOBJ of a named class: `cls.__new__(cls)`, nothing of the class runs."""
  cls: GlobalRef
  state: Any = None
  items: dict = dataclasses.field(default_factory=dict)
  elements: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass(eq=False)
class _PersistentRecord:
  """What `_reconstruct_persistent_obj(meta)` stands for: the meta, unexecuted."""
  meta: dict


@dataclasses.dataclass(frozen=True)
class _NotData:
  """Returned by a recognised function whose arguments do not fit: record it inert."""
  reason: str


# ----------------------------------------------------------------------------- recognised calls


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _rebuild_tensor_v2(storage, storage_offset=None, size=None, stride=None, *rest):
  """torch._utils._rebuild_tensor_v2 -> LazyTensor (hooks, metadata dropped)."""
  del rest  # requires_grad, backward_hooks, metadata: training-time state
  if not isinstance(storage, LazyStorage):
    return _NotData(f"storage is a {type(storage).__name__}")
  if not (_is_int(storage_offset) and storage_offset >= 0 and isinstance(size, tuple)
          and isinstance(stride, tuple) and len(size) == len(stride)
          and all(_is_int(v) and v >= 0 for v in size + stride)):
    return _NotData("bad offset / size / stride")
  return LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *rest):
  """torch._utils._rebuild_parameter(_with_state) -> the tensor itself."""
  del rest
  if not isinstance(data, LazyTensor):
    return _NotData(f"data is a {type(data).__name__}")
  return data


def _load_from_bytes(data, *rest):
  """torch.storage._load_from_bytes -> LazyStorage (decoded later, if needed)."""
  if rest or not isinstance(data, (bytes, LazyBytes)):
    return _NotData("not a byte string")
  return LazyStorage(data)


def _reconstruct_persistent_obj(meta, *rest):
  """torch_utils.persistence._reconstruct_persistent_obj -> a record of `meta`."""
  if rest or not isinstance(meta, dict):
    return _NotData("meta is not a dict")
  missing = {"type", "version", "module_src", "class_name", "state"} - set(meta)
  if missing:
    return _NotData(f"meta lacks {sorted(missing)}")
  if meta["type"] != "class" or not isinstance(meta["class_name"], str):
    return _NotData(f"unsupported persistent object type {meta['type']!r}")
  if meta["version"] != PERSISTENCE_VERSION:
    return _NotData(f"unsupported persistence version {meta['version']!r} "
                    f"(expected {PERSISTENCE_VERSION})")
  if not isinstance(meta["module_src"], str) or not isinstance(meta["state"], dict):
    return _NotData("module_src or state of the wrong type")
  return _PersistentRecord(meta)


_NDARRAY = GlobalRef("numpy", "ndarray")


def _np_reconstruct(subtype, shape=None, typecode=None, *rest):
  """numpy multiarray._reconstruct: an empty ndarray that a BUILD then fills."""
  del shape, typecode  # the BUILD state sets the real shape and dtype
  if rest or subtype != _NDARRAY:
    return _NotData(f"ndarray subtype {subtype}")
  return np.empty((0,), np.uint8)


def _np_scalar(dtype, data=None, *rest):
  """numpy multiarray.scalar: a numpy scalar from its raw bytes."""
  if rest or not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes) \
      or len(data) != dtype.itemsize:
    return _NotData("not a plain numpy scalar")
  return np.frombuffer(data, dtype=dtype, count=1)[0]


def _np_dtype(spec, align=False, copy=False, *rest):
  """numpy.dtype for the string specs numpy pickles ('f4', 'i8', ...); always a copy, so
  a BUILD on it cannot change numpy's shared dtype singletons."""
  del copy
  if rest or not isinstance(spec, str) or not re.fullmatch(r"[A-Za-z]\d{0,2}", spec):
    return _NotData(f"dtype spec {spec!r}")
  try:
    dtype = np.dtype(spec, align=bool(align), copy=True)
  except TypeError as e:
    return _NotData(f"dtype spec {spec!r} ({e})")
  return _NotData(f"dtype {spec!r} holds objects") if dtype.hasobject else dtype


def _dill_create_array(f, args=None, state=None, npdict=None, *rest):
  """dill._dill._create_array: numpy's _reconstruct(*args), then BUILD with `state`."""
  if rest or npdict or not (isinstance(f, GlobalRef) and f.name == "_reconstruct"
                            and f.module in NUMPY_MULTIARRAY and isinstance(args, tuple)):
    return _NotData("not numpy's _reconstruct of a plain ndarray")
  array = _np_reconstruct(*args)
  if isinstance(array, _NotData):
    return array
  problem = _set_array_state(array, state)
  return _NotData(problem) if problem else array


def _set_array_state(array: np.ndarray, state) -> str | None:
  """ndarray.__setstate__ for plain (non-object) data; the problem, or None."""
  if not (isinstance(state, tuple) and len(state) in (4, 5)):
    return "array state is not a tuple"
  if len(state) == 4:
    state = (1,) + state
  _, shape, dtype, _, raw = state
  if not (isinstance(shape, tuple) and all(_is_int(s) and s >= 0 for s in shape)
          and isinstance(dtype, np.dtype) and not dtype.hasobject and isinstance(raw, bytes)
          and len(raw) == math.prod(shape) * dtype.itemsize):
    return "array state is not plain data of its shape and dtype"
  array.__setstate__(state)
  return None


def _dill_import_module(name, *rest):
  """dill._dill._import_module(name): the module's name (never imported)."""
  if rest or not isinstance(name, str) or not _DOTTED.fullmatch(name):
    return _NotData("not a module name")
  return _Module(name)


def _dill_get_attr(obj, name=None, *rest):
  """dill._dill._get_attr(_import_module(m), a): read statically as the global m.a."""
  if rest or not isinstance(obj, _Module) or not isinstance(name, str) \
      or not _IDENTIFIER.fullmatch(name):
    return _NotData("not an attribute of a module")
  return GlobalRef(obj.name, name)


_DATA_TYPES = {"set": GlobalRef("builtins", "set"), "frozenset": GlobalRef("builtins", "frozenset")}


def _dill_load_type(name, *rest):
  """dill._dill._load_type(name): the builtin set / frozenset; other types are inert."""
  if rest or name not in _DATA_TYPES:
    return _NotData(f"type {name!r} is not plain data")
  return _DATA_TYPES[name]


def _ordered_dict(*args):
  """collections.OrderedDict(), or from a list of pairs."""
  if not args:
    return collections.OrderedDict()
  if len(args) == 1 and isinstance(args[0], (list, tuple)) \
      and all(isinstance(p, tuple) and len(p) == 2 for p in args[0]):
    try:
      return collections.OrderedDict(args[0])
    except TypeError:
      pass
  return _NotData("not a list of pairs")


def _make_set(kind):
  def build(items=(), *rest):
    if rest or not isinstance(items, (list, tuple)):
      return _NotData("not a list")
    try:
      return kind(items)
    except TypeError:
      return _NotData("unhashable items")
  return build


def _codecs_encode(text=None, encoding=None, *rest):
  """_codecs.encode(str, 'latin1'): how protocols 0-2 spell bytes."""
  if rest or not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    return _NotData("not a latin1 string")
  return text.encode("latin-1")


# (module, name) -> function(*args) -> value or _NotData. Checked with pickletools on every
# fixture pickle (FIXTURES.md lists the globals each key uses).
RECOGNISED: dict[tuple[str, str], Callable] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dill._dill", "_create_array"): _dill_create_array,
    ("dill._dill", "_import_module"): _dill_import_module,
    ("dill._dill", "_get_attr"): _dill_get_attr,
    ("dill._dill", "_load_type"): _dill_load_type,
    ("numpy", "dtype"): _np_dtype,
    ("collections", "OrderedDict"): _ordered_dict,
    ("builtins", "set"): _make_set(set),
    ("builtins", "frozenset"): _make_set(frozenset),
    ("__builtin__", "set"): _make_set(set),
    ("__builtin__", "frozenset"): _make_set(frozenset),
    ("_codecs", "encode"): _codecs_encode,
    **{(m, "_reconstruct"): _np_reconstruct for m in NUMPY_MULTIARRAY},
    **{(m, "scalar"): _np_scalar for m in NUMPY_MULTIARRAY},
}
# Globals that are plain values, never called.
_VALUES = frozenset({("numpy", "ndarray")})


def _known_global(ref: GlobalRef) -> bool:
  """What --strict accepts: recognised data, numpy.ndarray, torch.nn module classes."""
  key = (ref.module, ref.name)
  return key in RECOGNISED or key in _VALUES or ref.module.startswith(TORCH_MODULES)


# ----------------------------------------------------------------------------- the machine

# Opcodes a snapshot never uses and that would need more than data to honour.
_REFUSED_OPS = {
    "PERSID": "persistent ids", "BINPERSID": "persistent ids",
    "EXT1": "the copyreg extension registry", "EXT2": "the copyreg extension registry",
    "EXT4": "the copyreg extension registry",
    "NEXT_BUFFER": "out-of-band buffers", "READONLY_BUFFER": "out-of-band buffers",
}


class _Machine:
  """Interprets a pickle's opcodes into values; imports, calls and compiles nothing.

  Args:
    f: the open binary file, positioned at the start.
    size: the file's size in bytes (lengths are checked against it).
    strict: refuse unknown globals and unrecognised calls instead of recording them.
  """

  def __init__(self, f, size: int, strict: bool = False):
    self.f, self.size, self.strict = f, size, strict
    self.stack: list[Any] = []
    self.marks: list[int] = []
    self.memo: dict[int, Any] = {}
    self.pending: dict[int, Any] = {}  # id -> array / dtype that one BUILD may still fill
    self.storages: list[LazyStorage] = []

  # -- reading

  def _read(self, n: int) -> bytes:
    if n < 0 or n > self.size - self.f.tell():
      raise SnapshotError(f"truncated or corrupt pickle (a length of {n} bytes runs past the "
                          f"end of the file at byte {self.f.tell()})")
    data = self.f.read(n)
    if len(data) != n:
      raise SnapshotError("truncated or corrupt pickle (file ended early)")
    return data

  def _unpack(self, fmt: str) -> Any:
    return struct.unpack(fmt, self._read(struct.calcsize(fmt)))[0]

  def _bytes(self, n: int) -> bytes | LazyBytes:
    if n >= LAZY_BYTES:
      if n > self.size - self.f.tell():
        raise SnapshotError(f"truncated or corrupt pickle (a length of {n} bytes runs past "
                            f"the end of the file at byte {self.f.tell()})")
      lazy = LazyBytes(self.f.tell(), n)
      self.f.seek(n, os.SEEK_CUR)
      return lazy
    return self._read(n)

  def _text(self, n: int) -> str:
    return self._read(n).decode("utf-8", "surrogatepass")

  def read_lazy(self, lazy: LazyBytes) -> bytes:
    self.f.seek(lazy.offset)
    return self._read(lazy.length)

  # -- the stack

  def push(self, value) -> None:
    if len(self.stack) >= MAX_CONTAINER_ITEMS:
      raise SnapshotError(f"pickle stack exceeds {MAX_CONTAINER_ITEMS} items (limit)")
    self.stack.append(value)

  def pop(self) -> Any:
    if len(self.stack) <= (self.marks[-1] if self.marks else 0):
      raise SnapshotError("truncated or corrupt pickle (stack underflow)")
    return self.stack.pop()

  def top(self) -> Any:
    value = self.pop()
    self.stack.append(value)
    return value

  def pop_mark(self) -> list:
    if not self.marks:
      raise SnapshotError("truncated or corrupt pickle (missing MARK)")
    height = self.marks.pop()
    items = self.stack[height:]
    del self.stack[height:]
    return items

  # -- globals and calls

  def global_ref(self, module: Any, name: Any) -> GlobalRef:
    if not (isinstance(module, str) and isinstance(name, str)):
      raise SnapshotError("truncated or corrupt pickle (a global with a computed name)")
    ref = GlobalRef(module, name)
    if self.strict and not _known_global(ref):
      raise SnapshotError(f"unknown global {ref} (--strict accepts only recognised data and "
                          f"{TORCH_MODULES}* classes)")
    return ref

  def call(self, func, args: tuple, kind: str = "call") -> Any:
    reason = ""
    if kind == "call" and isinstance(func, GlobalRef) and (func.module, func.name) in RECOGNISED:
      result = RECOGNISED[(func.module, func.name)](*args)
      if not isinstance(result, _NotData):
        if isinstance(result, GlobalRef):
          result = self.global_ref(result.module, result.name)
        if func.name == "_reconstruct" or (func.module, func.name) == ("numpy", "dtype"):
          self.pending[id(result)] = result  # one BUILD fills it
        if isinstance(result, LazyStorage):
          self.storages.append(result)
        return result
      reason = result.reason
    if self.strict:
      what = f"call of {func}" if isinstance(func, GlobalRef) else "call of a computed object"
      raise SnapshotError(f"{what} that is not recognised data"
                          f"{f' ({reason})' if reason else ''} (--strict)")
    return InertCall(func, args, kind, reason)

  def build(self, obj, state) -> None:
    if isinstance(obj, (_Obj, InertCall)):
      if isinstance(obj.state, dict) and isinstance(state, dict):
        obj.state.update(state)
      else:
        obj.state = state
    elif id(obj) in self.pending and self.pending[id(obj)] is obj:
      del self.pending[id(obj)]
      if isinstance(obj, np.ndarray):
        problem = _set_array_state(obj, state)
      else:
        problem = _set_dtype_state(obj, state)
      if problem:
        raise SnapshotError(f"corrupt numpy value: {problem}")
    elif isinstance(obj, GlobalRef):
      raise SnapshotError(f"corrupt pickle: BUILD on global {obj} (pickle never writes one; "
                          f"it would set the attributes of {obj})")
    else:
      raise SnapshotError(f"corrupt pickle: BUILD on a {type(obj).__name__}")

  # -- containers

  @staticmethod
  def _check_size(n: int) -> None:
    if n > MAX_CONTAINER_ITEMS:
      raise SnapshotError(f"a container of more than {MAX_CONTAINER_ITEMS} items (limit)")

  def set_items(self, target, pairs: list) -> None:
    if isinstance(target, (_Obj, InertCall)):
      store = target.items
    elif isinstance(target, dict):
      store = target
    else:
      raise SnapshotError(f"corrupt pickle: SETITEM on a {type(target).__name__}")
    if len(pairs) % 2:
      raise SnapshotError("corrupt pickle: odd number of SETITEMS values")
    self._check_size(len(store) + len(pairs) // 2)
    try:
      for i in range(0, len(pairs), 2):
        store[pairs[i]] = pairs[i + 1]
    except TypeError:
      raise SnapshotError("corrupt pickle: unhashable dict key") from None

  def add_elements(self, target, values: list, op: str) -> None:
    if isinstance(target, (_Obj, InertCall)):
      target.elements.extend(values)
      self._check_size(len(target.elements))
      return
    if op == "ADDITEMS" and isinstance(target, set) or op != "ADDITEMS" and isinstance(target, list):
      self._check_size(len(target) + len(values))
      try:
        target.update(values) if isinstance(target, set) else target.extend(values)
      except TypeError:
        raise SnapshotError("corrupt pickle: unhashable set item") from None
      return
    raise SnapshotError(f"corrupt pickle: {op} on a {type(target).__name__}")

  # -- the loop

  def load(self) -> Any:
    code2op = pickletools.code2op
    handlers = self._handlers()
    while True:
      pos = self.f.tell()
      code = self.f.read(1)
      if not code:
        raise SnapshotError("truncated or corrupt pickle (ended before STOP)")
      op = code2op.get(code.decode("latin-1"))
      if op is None:
        raise SnapshotError(f"truncated or corrupt pickle (unknown opcode {code!r} at byte {pos})")
      if op.name in _REFUSED_OPS:
        raise SnapshotError(f"forbidden opcode {op.name}: snapshots never use "
                            f"{_REFUSED_OPS[op.name]}")
      if op.name == "STOP":
        value = self.pop()
        if self.stack or self.marks:
          raise SnapshotError("truncated or corrupt pickle (values left on the stack at STOP)")
        return value
      try:
        handlers[op.name](op)
      except (ValueError, struct.error) as e:
        if isinstance(e, SnapshotError):
          raise
        raise SnapshotError(f"truncated or corrupt pickle ({op.name} at byte {pos}: "
                            f"{(str(e).splitlines() or [''])[0]})") from None

  def _handlers(self) -> dict[str, Callable]:
    push, pop, u = self.push, self.pop, self._unpack
    reader = lambda op: op.arg.reader(self.f)  # noqa: E731  newline-terminated / fixed args

    def memo_put(index):
      self.memo[index] = self.top()

    def memo_get(index):
      if index not in self.memo:
        raise SnapshotError(f"truncated or corrupt pickle (memo key {index} missing)")
      push(self.memo[index])

    def long_n(n):
      if n < 0:
        raise SnapshotError("truncated or corrupt pickle (negative length)")
      return int.from_bytes(self._read(n), "little", signed=True)

    def stack_global(op):
      name, module = pop(), pop()
      push(self.global_ref(module, name))

    def inst(op):
      module, name = reader(op).split(" ", 1)
      args = tuple(self.pop_mark())
      push(self.call(self.global_ref(module, name), args))

    def obj(op):
      items = self.pop_mark()
      if not items:
        raise SnapshotError("truncated or corrupt pickle (OBJ without a class)")
      push(self.call(items[0], tuple(items[1:])))

    def reduce(op):
      args = pop()
      func = pop()
      if not isinstance(args, tuple):
        raise SnapshotError("truncated or corrupt pickle (REDUCE arguments are not a tuple)")
      push(self.call(func, args))

    def newobj(op, with_kwargs=False):
      kwargs = pop() if with_kwargs else None
      args = pop()
      cls = pop()
      if isinstance(cls, GlobalRef):
        push(_Obj(cls))
      else:
        push(self.call(cls, (args, kwargs) if with_kwargs else (args,), kind="new"))

    def build(op):
      state = pop()
      self.build(self.top(), state)

    def setitem(op):
      value, key = pop(), pop()
      self.set_items(self.top(), [key, value])

    def setitems(op):
      pairs = self.pop_mark()
      self.set_items(self.top(), pairs)

    def append(op):
      value = pop()
      self.add_elements(self.top(), [value], "APPEND")

    def appends(op):
      values = self.pop_mark()
      self.add_elements(self.top(), values, "APPENDS")

    def additems(op):
      values = self.pop_mark()
      self.add_elements(self.top(), values, "ADDITEMS")

    def container(kind):
      def make(op):
        items = self.pop_mark()
        self._check_size(len(items))
        if kind is dict:
          if len(items) % 2:
            raise SnapshotError("corrupt pickle: odd number of DICT values")
          pairs = dict(zip(items[0::2], items[1::2]))
          push(pairs)
        else:
          try:
            push(kind(items))
          except TypeError:
            raise SnapshotError("corrupt pickle: unhashable set item") from None
      return make

    def tuple_n(n):
      def make(op):
        items = [pop() for _ in range(n)][::-1]
        push(tuple(items))
      return make

    def mark(op):
      if len(self.marks) >= MAX_CONTAINER_ITEMS:
        raise SnapshotError(f"more than {MAX_CONTAINER_ITEMS} open MARKs (limit)")
      self.marks.append(len(self.stack))

    def pop_op(op):
      if len(self.stack) > (self.marks[-1] if self.marks else 0):
        self.stack.pop()
      elif self.marks:
        self.marks.pop()
      else:
        raise SnapshotError("truncated or corrupt pickle (stack underflow)")

    def proto(op):
      version = u("B")
      if version > 5:
        raise SnapshotError(f"unsupported pickle protocol {version}")

    return {
        "PROTO": proto, "FRAME": lambda op: u("<Q"),
        "INT": lambda op: push(reader(op)), "LONG": lambda op: push(reader(op)),
        "BININT": lambda op: push(u("<i")), "BININT1": lambda op: push(u("B")),
        "BININT2": lambda op: push(u("<H")),
        "LONG1": lambda op: push(long_n(u("B"))), "LONG4": lambda op: push(long_n(u("<i"))),
        "NONE": lambda op: push(None), "NEWTRUE": lambda op: push(True),
        "NEWFALSE": lambda op: push(False),
        "FLOAT": lambda op: push(reader(op)), "BINFLOAT": lambda op: push(u(">d")),
        "STRING": lambda op: push(reader(op)),
        "BINSTRING": lambda op: push(self._read(u("<i")).decode("latin-1")),
        "SHORT_BINSTRING": lambda op: push(self._read(u("B")).decode("latin-1")),
        "UNICODE": lambda op: push(reader(op)),
        "BINUNICODE": lambda op: push(self._text(u("<I"))),
        "SHORT_BINUNICODE": lambda op: push(self._text(u("B"))),
        "BINUNICODE8": lambda op: push(self._text(u("<Q"))),
        "BINBYTES": lambda op: push(self._bytes(u("<I"))),
        "SHORT_BINBYTES": lambda op: push(self._read(u("B"))),
        "BINBYTES8": lambda op: push(self._bytes(u("<Q"))),
        "BYTEARRAY8": lambda op: push(bytearray(self._read(u("<Q")))),
        "EMPTY_LIST": lambda op: push([]), "EMPTY_DICT": lambda op: push({}),
        "EMPTY_SET": lambda op: push(set()), "EMPTY_TUPLE": lambda op: push(()),
        "LIST": container(list), "TUPLE": container(tuple), "DICT": container(dict),
        "FROZENSET": container(frozenset),
        "TUPLE1": tuple_n(1), "TUPLE2": tuple_n(2), "TUPLE3": tuple_n(3),
        "APPEND": append, "APPENDS": appends, "SETITEM": setitem, "SETITEMS": setitems,
        "ADDITEMS": additems,
        "MARK": mark, "POP": pop_op, "POP_MARK": lambda op: self.pop_mark(),
        "DUP": lambda op: push(self.top()),
        "PUT": lambda op: memo_put(reader(op)), "BINPUT": lambda op: memo_put(u("B")),
        "LONG_BINPUT": lambda op: memo_put(u("<I")),
        "MEMOIZE": lambda op: memo_put(len(self.memo)),
        "GET": lambda op: memo_get(reader(op)), "BINGET": lambda op: memo_get(u("B")),
        "LONG_BINGET": lambda op: memo_get(u("<I")),
        "GLOBAL": lambda op: push(self.global_ref(*reader(op).split(" ", 1))),
        "STACK_GLOBAL": stack_global, "INST": inst, "OBJ": obj, "REDUCE": reduce,
        "NEWOBJ": newobj, "NEWOBJ_EX": lambda op: newobj(op, with_kwargs=True),
        "BUILD": build,
    }


def _set_dtype_state(dtype: np.dtype, state) -> str | None:
  """np.dtype.__setstate__ for a plain (unstructured) dtype; the problem, or None."""
  if not (isinstance(state, tuple) and len(state) == 8 and state[1] in ("<", ">", "|", "=")
          and state[2] is None and state[3] is None and state[4] is None
          and all(_is_int(v) for v in (state[0], *state[5:]))):
    return "dtype state is not that of a plain dtype"
  dtype.__setstate__(state)
  return None


# ----------------------------------------------------------------------------- building values


def _children(v) -> Iterator[Any]:
  """The raw values directly inside raw value `v`."""
  if isinstance(v, dict):
    for k, x in v.items():
      yield k
      yield x
  elif isinstance(v, (list, tuple, set, frozenset)):
    yield from v
  elif isinstance(v, _Obj):
    yield v.state
    yield from _children(v.items)
    yield from v.elements
  elif isinstance(v, InertCall):
    yield v.func
    yield from v.args
    yield v.state
    yield from _children(v.items)
    yield from v.elements
  elif isinstance(v, _PersistentRecord):
    yield v.meta


def _reachable_tensors(root) -> set[int]:
  """ids of every LazyTensor reachable from raw value `root` (iterative, each object once)."""
  found, seen, todo = set(), set(), [root]
  while todo:
    v = todo.pop()
    if id(v) in seen:
      continue
    seen.add(id(v))
    if isinstance(v, LazyTensor):
      found.add(id(v))
    else:
      todo.extend(_children(v))
  return found


class _Builder:
  """Turns raw values into public ones (Nodes, plain containers), each object once.

  Args:
    machine: the machine that read the file (reads lazy bytes on decode).
    decode: ids of the LazyTensors to decode into numpy arrays; None decodes all.
    stats: LoadStats to count decoded storages into.
  """

  def __init__(self, machine: _Machine, decode: set[int] | None, stats: LoadStats):
    self.machine, self.decode, self.stats = machine, decode, stats
    self.done: dict[int, Any] = {}
    self.keep: list[Any] = []  # raw objects whose ids are keys of `done` stay alive

  def value(self, v, depth: int = 0) -> Any:
    if depth > MAX_NESTING:
      raise SnapshotError(f"values nested deeper than {MAX_NESTING} levels (limit)")
    if v is None or isinstance(v, (bool, int, float, complex, str, bytes, np.generic, np.dtype)):
      return v
    if id(v) in self.done:
      return self.done[id(v)]
    self.keep.append(v)
    d = depth + 1
    if isinstance(v, LazyTensor):
      out = self._tensor(v) if self.decode is None or id(v) in self.decode else v
    elif isinstance(v, (np.ndarray, bytearray, GlobalRef, LazyStorage, LazyBytes)):
      out = v
    elif isinstance(v, _Module):
      out = GlobalRef(v.name, "")
    elif isinstance(v, list):
      out = self.done[id(v)] = []
      out.extend(self.value(x, d) for x in v)
    elif isinstance(v, dict):
      out = self.done[id(v)] = type(v)() if isinstance(v, collections.OrderedDict) else {}
      for k, x in v.items():
        out[self.value(k, d)] = self.value(x, d)
    elif isinstance(v, (tuple, set, frozenset)):
      out = type(v)(self.value(x, d) for x in v)
    elif isinstance(v, InertCall):
      out = self.done[id(v)] = InertCall(None, kind=v.kind, reason=v.reason)
      out.func, out.args = self.value(v.func, d), self.value(v.args, d)
      out.state = self.value(v.state, d)
      out.items = {self.value(k, d): self.value(x, d) for k, x in v.items.items()}
      out.elements = [self.value(x, d) for x in v.elements]
    elif isinstance(v, _Obj) and v.state is None and (v.items or v.elements) \
        and not (v.items and v.elements):
      # An unknown dict / list subclass that carries only items (dnnlib.EasyDict).
      if v.items:
        out = self.done[id(v)] = {}
        for k, x in v.items.items():
          out[self.value(k, d)] = self.value(x, d)
      else:
        out = self.done[id(v)] = []
        out.extend(self.value(x, d) for x in v.elements)
    elif isinstance(v, (_Obj, _PersistentRecord)):
      out = self._node(v, d)
    else:
      raise SnapshotError(f"internal: unexpected value {type(v).__name__}")
    self.done[id(v)] = out
    return out

  def _node(self, v, depth: int) -> Node:
    if isinstance(v, _PersistentRecord):
      meta = v.meta
      node = Node(meta["class_name"], "persistent", version=meta["version"],
                  module_src=meta["module_src"])
      state = meta["state"]
    else:
      node = Node(v.cls.name, v.cls.module)
      state = v.state
      if v.items or v.elements:
        node.attrs["__items__"] = self.value(v.items, depth)
        node.attrs["__elements__"] = self.value(v.elements, depth)
    self.done[id(v)] = node  # registered first: cycles end here
    if not isinstance(state, dict):
      if state is not None:
        node.attrs["__state__"] = self.value(state, depth)  # not a module: keep what it pickled
      return node
    for slot, store in (("_parameters", node.params), ("_buffers", node.buffers),
                        ("_modules", node.children)):
      values = state.get(slot)
      if values is None:
        continue
      if not isinstance(values, dict):
        node.stray[slot] = self.value(values, depth)
        continue
      for key, raw in values.items():
        x = self.value(raw, depth + 1)
        if x is None:
          if slot == "_buffers":
            store[key] = None
        elif (isinstance(x, Node) if slot == "_modules" else isinstance(x, (np.ndarray, LazyTensor))):
          store[key] = x
        else:
          node.stray[f"{slot}.{key}"] = x
    for key, raw in state.items():
      if key in _TORCH_INTERNAL_ATTRS:
        if key not in ("_parameters", "_buffers", "_modules"):
          node.internals[key] = self.value(raw, depth)
      else:
        node.attrs[key] = self.value(raw, depth)
    return node

  def _tensor(self, t: LazyTensor) -> np.ndarray:
    """Decodes a LazyTensor (its storage once) into a numpy array; floats become float32."""
    flat = self._storage(t.storage)
    try:
      view = torch.as_strided(flat, t.size, t.stride, t.offset)
    except RuntimeError as e:
      raise SnapshotError(f"corrupt tensor ({(str(e).splitlines() or [''])[0]})") from None
    if view.is_floating_point() and view.dtype != torch.float32:
      return view.to(torch.float32).numpy()  # .to() makes a fresh tensor
    if t.offset == 0 and view.numel() == flat.numel() and view.is_contiguous():
      return view.numpy()  # shares the storage's memory: a snapshot is not held twice
    return view.clone().numpy()  # views of one storage never alias each other

  def _storage(self, s: LazyStorage) -> torch.Tensor:
    if s.flat is not None:
      return s.flat
    data = self.machine.read_lazy(s.data) if isinstance(s.data, LazyBytes) else s.data
    with warnings.catch_warnings():  # TypedStorage is deprecated, but it is what was saved
      warnings.simplefilter("ignore", UserWarning)
      try:
        storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
      except Exception as e:  # torch raises many types for bad bytes; report them uniformly
        raise SnapshotError(f"corrupt tensor storage ({type(e).__name__}: "
                            f"{(str(e).splitlines() or [''])[0]})") from None
      if isinstance(storage, torch.UntypedStorage):
        flat = torch.empty(0, dtype=torch.uint8).set_(storage)
      elif isinstance(storage, torch.TypedStorage):
        flat = torch.empty(0, dtype=storage.dtype).set_(storage._untyped_storage)[:storage.size()]
      else:
        raise SnapshotError(f"corrupt tensor storage: decoded to {type(storage).__name__}")
    s.flat = flat
    self.stats.decoded_storages += 1
    self.stats.decoded_bytes += len(data)
    return flat


# ----------------------------------------------------------------------------- records


def describe(record) -> str:
  """A short phrase for a value `find_records` reports."""
  if isinstance(record, InertCall):
    what = "an object of the computed class" if record.kind == "new" else "a call of"
    why = f"; not read as data: {record.reason}" if record.reason else ""
    return f"{what} {record.name} (recorded, never run{why})"
  if isinstance(record, GlobalRef):
    return f"a reference to the global {record} (never imported)"
  if isinstance(record, Node):
    return f"an object of class {record.qualname} (neither persistent nor {TORCH_MODULES}*)"
  if isinstance(record, LazyTensor):
    return "a tensor that was not decoded"
  return f"a {type(record).__name__} where a tensor or module belongs"


def find_records(value, path: str = "") -> list[tuple[str, Any]]:
  """Everything inside `value` that is not plain data, with its dotted path.

  Reported: InertCall records, GlobalRefs, Nodes of classes that are neither persistent
  nor torch.nn modules, stray values in parameter / buffer / child slots, undecoded
  tensors and any other non-data object. Searches params, buffers, children, attrs,
  internals and nested containers iteratively; each object once.

  Args:
    value: a Node (e.g. snapshot['G_ema']) or any value load_pickle returns.
    path: the dotted path reported for `value` itself ('' for the root).
  Returns:
    [(dotted path, record)] in visiting order; empty if everything is plain data.
  """
  plain = (type(None), bool, int, float, complex, str, bytes, np.ndarray, np.generic, np.dtype)
  found, seen, todo = [], set(), [(path, value)]
  while todo:
    where, v = todo.pop()
    if isinstance(v, plain):
      continue
    if id(v) in seen:
      continue
    seen.add(id(v))
    join = lambda k: f"{where}.{k}" if where else str(k)  # noqa: E731
    items: list[tuple[str, Any]] = []
    if isinstance(v, Node):
      if v.source != "persistent" and not v.source.startswith(TORCH_MODULES):
        found.append((where, v))
      for group in (v.params, v.buffers, v.children, v.attrs, v.internals):
        items += [(join(k), x) for k, x in group.items()]
      for k, x in v.stray.items():
        if isinstance(x, (InertCall, GlobalRef, Node)) or isinstance(x, plain):
          found.append((join(k), x))  # reported itself; records inside it follow from it
          seen.add(id(x))
        else:
          items.append((join(k), x))
    elif isinstance(v, dict):
      items = [(join(k), x) for k, x in v.items()] + [(join(f"<key {i}>"), k)
                                                    for i, k in enumerate(v)]
    elif isinstance(v, (list, tuple, set, frozenset)):
      items = [(join(i), x) for i, x in enumerate(v)]
    else:
      found.append((where, v))
      continue
    todo.extend(reversed(items))
  return found


def _count(value) -> tuple[int, int]:
  """(inert calls, elements of undecoded tensors) reachable from a public value."""
  calls = lazy = 0
  seen, todo = set(), [value]
  while todo:
    v = todo.pop()
    if v is None or isinstance(v, (bool, int, float, str, bytes, np.ndarray, np.generic)) \
        or id(v) in seen:
      continue
    seen.add(id(v))
    if isinstance(v, InertCall):
      calls += 1
      todo += [v.func, v.args, v.state, v.items, v.elements]
    elif isinstance(v, LazyTensor):
      lazy += v.numel
    elif isinstance(v, Node):
      todo += [v.params, v.buffers, v.children, v.attrs, v.internals, v.stray]
    elif isinstance(v, dict):
      todo += list(v.values())
    elif isinstance(v, (list, tuple, set, frozenset)):
      todo += list(v)
  return calls, lazy


# ----------------------------------------------------------------------------- entry points


def read_pickle(path: str, decode: Sequence[str] | None = None,
                strict: bool = False) -> tuple[Any, LoadStats]:
  """Reads `path` as data: returns (its top-level value with objects as Nodes, stats).

  Args:
    path: the pickle file.
    decode: top-level keys (the value must then be a dict) whose reachable tensors are
      decoded into numpy arrays; tensors elsewhere stay LazyTensors. None decodes all.
    strict: refuse any unknown global or unrecognised call anywhere (auditors).
  Raises:
    SnapshotError: missing file, truncated or corrupt pickle, a limit exceeded,
      (strict) an unknown global.
  """
  if not os.path.exists(path):
    raise SnapshotError(f"snapshot not found: {path}")
  if not os.path.isfile(path):
    raise SnapshotError(f"snapshot is not a file: {path}")
  stats = LoadStats()
  old_limit = sys.getrecursionlimit()
  try:
    with open(path, "rb") as f:
      machine = _Machine(f, os.fstat(f.fileno()).st_size, strict)
      raw = machine.load()
      stats.storages = len(machine.storages)
      stats.storage_bytes = sum(s.nbytes for s in machine.storages)
      wanted = None
      if decode is not None:
        wanted = set()
        for key in decode:
          if isinstance(raw, dict) and key in raw:
            wanted |= _reachable_tensors(raw[key])
      # The builder recurses about 3 frames per nesting level.
      sys.setrecursionlimit(max(old_limit, 4 * MAX_NESTING + 200))
      value = _Builder(machine, wanted, stats).value(raw)
  except SnapshotError as e:
    raise SnapshotError(f"{path}: {e}") from None
  except (EOFError, MemoryError, RecursionError, OSError) as e:
    raise SnapshotError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
  finally:
    sys.setrecursionlimit(old_limit)
  if isinstance(value, dict):
    for key, v in value.items():
      calls, lazy = _count(v)
      stats.inert_calls[key], stats.lazy_values[key] = calls, lazy
  return value, stats


def load_pickle(path: str, strict: bool = False) -> Any:
  """Reads `path` as data (every tensor decoded); see `read_pickle`."""
  return read_pickle(path, None, strict)[0]


def read_snapshot(path: str, decode: Sequence[str] | None = None,
                  strict: bool = False) -> tuple[dict[str, Any], LoadStats]:
  """Reads a StyleGAN-XL training snapshot as data.

  Args:
    path: a snapshot pickle (`network-snapshot-*.pkl`, `imagenet256.pkl`, ...).
    decode: top-level keys whose tensors are decoded (e.g. ('G_ema',)); None: all.
    strict: refuse any unknown global or unrecognised call anywhere.
  Returns:
    (snapshot, stats). The snapshot dict: 'G', 'D', 'G_ema' (and 'augment_pipe' if a
    module) as `Node` trees, 'training_set_kwargs' and 'progress' as plain values; keys
    the file lacks are absent. At least one of 'G_ema' / 'G' is a Node with children
    'mapping' and 'synthesis'.
  Raises:
    SnapshotError: as `read_pickle`, or a pickle that is not a StyleGAN-XL snapshot (a
      generator key that is an inert record is named with its global).
  """
  snap, stats = read_pickle(path, decode, strict)
  if not isinstance(snap, dict):
    raise SnapshotError(f"{path}: not a StyleGAN-XL snapshot (holds a "
                        f"{type(snap).__name__}, not a snapshot dict)")
  generators = [k for k in ("G_ema", "G") if isinstance(snap.get(k), Node)]
  if not generators:
    for key in ("G_ema", "G"):
      if key in snap and find_records(snap[key], key):
        where, record = find_records(snap[key], key)[0]
        raise SnapshotError(f"{path}: refused: {where} is {describe(record)}, not a generator")
      if key in snap:
        raise SnapshotError(f"{path}: not a StyleGAN-XL snapshot ({key} is a "
                            f"{type(snap[key]).__name__}, not a generator)")
    raise SnapshotError(f"{path}: not a StyleGAN-XL snapshot (no generator G_ema or G; "
                        f"keys: {', '.join(map(str, snap)) or 'none'})")
  for key in generators:
    missing = [c for c in ("mapping", "synthesis") if c not in snap[key].children]
    if missing:
      raise SnapshotError(f"{path}: not a StyleGAN-XL snapshot ({key} "
                          f"({snap[key].class_name}) lacks {' and '.join(missing)})")
  return snap, stats


def load_snapshot(path: str, strict: bool = False) -> dict[str, Any]:
  """Reads a snapshot with every tensor decoded; see `read_snapshot`."""
  return read_snapshot(path, None, strict)[0]
