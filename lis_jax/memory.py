"""Memory budgets, and batch sizes chosen from XLA's compiled memory analysis.

A configured batch size is a maximum, never a promise. Before a jitted function runs over
many rows, `choose_batch` compiles it at two probe batch sizes, reads XLA's memory analysis
(`jitted.lower(...).compile().memory_analysis()`: argument, output, temporary bytes), fits
a line in the batch size, and takes the largest batch <= the configured maximum whose
predicted need stays under `SAFETY` x the budget (checked by compiling at that batch). A
function whose batch of 1 does not fit raises a one-line `PipelineError` naming the stage,
the call and the setting to change; `guard` turns XLA's RESOURCE_EXHAUSTED at run time
into the same kind of line.

The budget (`device_budget`) is, in order: `config.memory_gb` when set (> 0); else the
accelerator's `device.memory_stats()` (bytes_limit - bytes_in_use); else, on CPU, the
smallest of the host's MemAvailable (/proc/meminfo), the address-space limit
(`ulimit -v`, RLIMIT_AS, less this process's VmSize) and a cgroup limit (memory.max less
memory.current).

What a call needs (`CallMemory.need`): its temporaries, its outputs and its batch of
rows, less buffers XLA aliases (donated inputs reused as outputs); the other arguments
(the models' parameters, passed unchanged to every call) are resident already and count
in the budget as memory in use.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import resource
from typing import Any, Callable, Iterator

import jax
import numpy as np

from lis_jax import batching
from lis_jax.errors import PipelineError

GiB = 1 << 30
MiB = 1 << 20
# Fraction of the budget a call may plan to use. XLA's analysis counts the buffers of one
# call, not the allocator's fragmentation, the runtime's own buffers, the host copies of
# inputs and results, or Python's arrays around the call; the rest is that headroom.
# Not enough under an address-space cap: benchmarks/real_size.py (reduced-width 256-px
# generator, `prlimit --as=8G`, budget 7.2 GiB) aborted with std::bad_alloc in a call
# analysed at 5.0 GiB (README, "Memory and the plan"); virtual reservations are not counted.
SAFETY = 0.8
# Probe batch sizes for the linear model (the smaller is also the "does one row fit" check).
PROBES = (1, 4)
# A chosen batch whose line-predicted need is under this fraction of the limit is taken
# without compiling it (the line's error stays well inside the rest); above it, it is
# compiled and checked.
TRUST = 0.5
# How often the chosen batch is re-checked (and shrunk) against a compile at that size.
MAX_REFINE = 4


# ----------------------------------------------------------------------------- budget


@dataclasses.dataclass(frozen=True)
class Budget:
  """Bytes a process may allocate on its device, and where the number came from."""
  bytes: int
  source: str

  def __str__(self) -> str:
    return f"{self.bytes / GiB:.1f} GiB ({self.source})"


def _meminfo_available(path: str = "/proc/meminfo") -> int | None:
  try:
    with open(path) as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    return None
  return None


def _vm_size() -> int:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmSize:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return 0


def _address_space_left() -> int | None:
  soft, _ = resource.getrlimit(resource.RLIMIT_AS)
  if soft == resource.RLIM_INFINITY or soft < 0:
    return None
  return max(0, soft - _vm_size())


def _cgroup_left(root: str = "/sys/fs/cgroup") -> int | None:
  try:
    with open(os.path.join(root, "memory.max")) as f:
      limit = f.read().strip()
    if limit == "max":
      return None
    with open(os.path.join(root, "memory.current")) as f:
      return max(0, int(limit) - int(f.read().strip()))
  except (OSError, ValueError):
    return None


def host_budget() -> Budget:
  """The host's memory this process may still use (CPU backend): the smallest of
  MemAvailable, the address-space limit left and the cgroup limit left."""
  found = [(b, s) for b, s in ((_meminfo_available(), "host MemAvailable"),
                               (_address_space_left(), "ulimit -v less VmSize"),
                               (_cgroup_left(), "cgroup memory.max"))
           if b is not None]
  if not found:
    return Budget(8 * GiB, "unknown host memory: assumed 8 GiB (set config.memory_gb)")
  b, s = min(found)
  return Budget(int(b), s)


def device_budget(memory_gb: float = 0.0, device: Any = None) -> Budget:
  """The memory budget of `device` (default: the first local device).

  Args:
    memory_gb: an override in GiB (config.memory_gb); <= 0: measure.
    device: a jax Device.
  """
  if memory_gb and memory_gb > 0:
    return Budget(int(memory_gb * GiB), "config.memory_gb")
  device = device or jax.local_devices()[0]
  stats = None
  try:
    stats = device.memory_stats()
  except Exception:  # Backends without allocator statistics raise or return None.
    stats = None
  if stats and stats.get("bytes_limit"):
    free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return Budget(free, f"{device.platform} memory_stats")
  return host_budget()


def config_budget(config: Any) -> Budget:
  """`device_budget` with the override `config.memory_gb` when the config has it."""
  gb = float(config.get("memory_gb", 0) or 0) if hasattr(config, "get") else 0.0
  return device_budget(gb)


# ----------------------------------------------------------------------------- analysis


@dataclasses.dataclass(frozen=True)
class CallMemory:
  """XLA's memory (bytes) and cost analysis of one compiled call at one batch size."""
  batch: int
  temp: int
  argument: int
  output: int
  alias: int
  rows: int  # bytes of the batch argument (the rest of `argument` is resident already)
  flops: float
  predicted: bool = False  # from the line through two compiled sizes (temp holds the need)

  @property
  def need(self) -> int:
    """New bytes the call allocates: temporaries + outputs + the batch - aliased."""
    return max(0, self.temp + self.output + self.rows - self.alias)


def _abstract_rows(rows: Any, batch: int) -> Any:
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct((batch,) + tuple(np.shape(x)[1:]), np.asarray(x).dtype
                                     if not hasattr(x, "dtype") else x.dtype), rows)


def _nbytes(tree: Any) -> int:
  return int(sum(np.dtype(x.dtype).itemsize * int(np.prod(np.shape(x)))
                 for x in jax.tree_util.tree_leaves(tree) if hasattr(x, "dtype")))


def compiled(fn: Callable[..., Any], args: tuple, rows: Any, batch: int) -> Any:
  """`jax.jit(fn).lower(*args, rows at batch).compile()` (rows only by shape)."""
  return jax.jit(fn).lower(*args, _abstract_rows(rows, batch)).compile()


def analyse(fn: Callable[..., Any], args: tuple, rows: Any, batch: int) -> CallMemory:
  """Memory and FLOPs of `fn(*args, rows[:batch])`, compiled (not run).

  Args:
    fn: as for `batching.map_batches`: fn(*args, batch) -> pytree of [B, ...].
    args: the arguments before the batch (models, parameters), concrete or abstract.
    rows: a pytree of [N, ...] arrays or ShapeDtypeStructs (only shapes and dtypes used).
    batch: the batch size to compile for.
  """
  c = compiled(fn, args, rows, batch)
  m = c.memory_analysis()
  cost = c.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return CallMemory(batch=batch, temp=int(m.temp_size_in_bytes),
                    argument=int(m.argument_size_in_bytes), output=int(m.output_size_in_bytes),
                    alias=int(m.alias_size_in_bytes),
                    rows=_nbytes(_abstract_rows(rows, batch)),
                    flops=float((cost or {}).get("flops", 0.0)))


@dataclasses.dataclass(frozen=True)
class LinearModel:
  """need(b) = fixed + per_row * b, fitted from two compiled batch sizes."""
  fixed: float
  per_row: float

  def at(self, batch: int) -> float:
    return self.fixed + self.per_row * batch

  def largest(self, limit: float) -> int:
    """The largest b with at(b) <= limit (0 if none)."""
    if self.per_row <= 0:
      return 1 << 30 if self.fixed <= limit else 0
    return max(0, int((limit - self.fixed) // self.per_row))

  @staticmethod
  def through(a: CallMemory, b: CallMemory) -> "LinearModel":
    if a.batch == b.batch:
      return LinearModel(0.0, a.need / a.batch)
    per_row = max(0.0, (b.need - a.need) / (b.batch - a.batch))
    return LinearModel(a.need - per_row * a.batch, per_row)


@dataclasses.dataclass(frozen=True)
class BatchChoice:
  """The batch a call runs at, its analysed memory there and the budget it fits."""
  call: str
  batch: int
  max_batch: int
  memory: CallMemory
  budget: Budget
  model: LinearModel

  def line(self) -> str:
    return (f"{self.call}: batch {self.batch} (max {self.max_batch}), peak "
            f"{self.memory.need / MiB:.0f} MiB of {SAFETY:.0%} x {self.budget}")


def _fail(stage: str, call: str, batch: int, need: int, budget: Budget, setting: str) -> PipelineError:
  where = f"{stage}: " if stage else ""
  return PipelineError(
      f"{where}{call} needs {need / GiB:.2f} GiB at batch {batch}, more than {SAFETY:.0%} of the "
      f"memory budget {budget}; lower {setting}, use a smaller model or a device with more memory "
      f"(or set config.memory_gb if the budget is wrong)")


_CHOICES: dict = {}
_ANALYSES: dict = {}


def choose_batch(fn: Callable[..., Any], rows: Any, max_batch: int, *args: Any, budget: Budget,
                 call: str, setting: str, stage: str = "", multiple: int = 1) -> BatchChoice:
  """The largest batch <= max_batch (a multiple of `multiple`) whose compiled need fits.

  Args:
    fn, rows, *args: as `batching.map_batches(fn, rows, batch, *args)`.
    max_batch: the configured batch size (a maximum).
    budget: `device_budget(...)`.
    call, setting, stage: named in the error when even the smallest batch does not fit
      (`setting`: the config field to lower, e.g. 'quantify.resolution').
    multiple: batches are multiples of this (the device count of a sharded call).
  Raises:
    PipelineError: the smallest batch does not fit.
  Results are cached per (call, shapes, budget, max_batch): one analysis per run and call.
  """
  limit = SAFETY * budget.bytes
  max_batch = max(multiple, int(max_batch) // multiple * multiple)
  statics = repr(sorted(fn.keywords.items())) if isinstance(fn, functools.partial) else id(fn)
  key = (call, statics, str(jax.tree_util.tree_map(lambda x: (np.shape(x)[1:], str(x.dtype)), rows)),
         str([(np.shape(x), str(x.dtype)) for x in jax.tree_util.tree_leaves(args)
              if hasattr(x, "dtype")]), budget.bytes, max_batch, multiple)
  if key in _CHOICES:
    return _CHOICES[key]
  analysed = _ANALYSES.setdefault(key[:3], {})   # per function and shapes, any max_batch

  def at(b: int) -> CallMemory:
    if b not in analysed:
      analysed[b] = analyse(fn, args, rows, b)
    return analysed[b]

  probes = sorted({min(max_batch, p * multiple) for p in PROBES})
  mems = [at(b) for b in probes]
  if mems[0].need > limit:
    raise _fail(stage, call, probes[0], mems[0].need, budget, setting)
  model = LinearModel.through(mems[0], mems[-1])
  by_batch = {m.batch: m for m in mems}
  b = min(max_batch, model.largest(limit))
  for _ in range(MAX_REFINE):
    b = max(multiple, b // multiple * multiple)
    if b not in by_batch and model.at(b) <= TRUST * limit:
      by_batch[b] = dataclasses.replace(mems[-1], batch=b, temp=int(model.at(b)), output=0, rows=0,
                                        alias=0, flops=mems[-1].flops / mems[-1].batch * b,
                                        predicted=True)
      break
    if b not in by_batch:
      by_batch[b] = at(b)
    if by_batch[b].need <= limit or b == multiple:
      break
    b = int(b * limit / by_batch[b].need)  # the line under-predicted: scale down and recheck
  m = by_batch[b]
  if m.need > limit:
    raise _fail(stage, call, b, m.need, budget, setting)
  choice = BatchChoice(call=call, batch=b, max_batch=max_batch, memory=m, budget=budget, model=model)
  _CHOICES[key] = choice
  return choice


# ----------------------------------------------------------------------------- running


def is_oom(e: BaseException) -> bool:
  """True for XLA's out-of-memory error (RESOURCE_EXHAUSTED) at compile or run time."""
  return "RESOURCE_EXHAUSTED" in str(e) or "Out of memory" in str(e)


@contextlib.contextmanager
def guard(stage: str, call: str, batch: int, setting: str) -> Iterator[None]:
  """Turns an out-of-memory error inside the block into a one-line PipelineError."""
  try:
    yield
  except PipelineError:
    raise
  except Exception as e:  # jax.errors.JaxRuntimeError (XlaRuntimeError) and relatives
    if not is_oom(e):
      raise
    first = str(e).strip().splitlines()[0][:200]
    where = f"{stage}: " if stage else ""
    raise PipelineError(
        f"{where}out of memory in {call} at batch {batch} ({first}); lower {setting} (or "
        f"config.memory_gb) and run again: finished work is kept") from None


def map_batches(fn: Callable[..., Any], rows: Any, max_batch: int, *args: Any, budget: Budget,
                call: str, setting: str, stage: str = "", log: Callable[[str], None] | None = None
                ) -> Any:
  """`batching.map_batches` at the batch `choose_batch` picks, with OOM as one line.

  The outputs are those of `batching.map_batches(fn, rows, b, *args)` for the chosen b
  (row-wise functions give the same rows at any batch size).
  """
  n = jax.tree_util.tree_leaves(rows)[0].shape[0]
  if n == 0:   # nothing to size (batching.map_batches' own behaviour for no rows)
    return batching.map_batches(fn, rows, max_batch, *args)
  # Not clipped to n: one batch size (one compile) whatever the number of rows.
  choice = choose_batch(fn, rows, max_batch, *args, budget=budget, call=call,
                        setting=setting, stage=stage)
  if log and choice.batch < choice.max_batch:
    log(choice.line())
  with guard(stage, call, choice.batch, setting):
    return batching.map_batches(fn, rows, choice.batch, *args)


def default_budget() -> Budget:
  """The first local device's budget now (no override): measured at each call, since the
  memory in use grows as models load and programs compile."""
  return device_budget()
