"""Memory budgets, and batch sizes chosen from XLA's compiled memory analysis.

A configured batch size is a maximum, never a promise. Before a jitted function runs over
many rows, `choose_batch` compiles it at the configured batch and reads XLA's memory
analysis (`jitted.lower(...).compile().memory_analysis()`: argument, output, temporary
bytes); if even `PLAUSIBLE` times that fits the budget, that batch is taken (and the
compilation is the one the call's runs use: a jitted function is lowered as itself, so
jax's cache finds it). Otherwise it compiles the call at two probe batch sizes, fits
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

XLA's analysis is not what the process really takes on a CPU: the runtime's scratch
buffers and the allocator's reservations come on top, and an address-space limit
(`ulimit -v`) counts reserved pages never touched (measured: a 256-px synthesis takes
2.1x its analysed bytes of address space and 1.0x of resident memory; a matmul chain
2.0x of both). So on a host budget (`Budget.host`) `choose_batch` runs each call once at
the smallest probe batch (zeros in, not kept), samples the process's resident size and
address space while it runs (`PeakSampler`), and divides the budget by the measured
ratio (`BatchChoice.factor`, at least 1) before choosing the batch. Calls that fit even
at `PLAUSIBLE` x their analysed need are not run. Every `map_batches` records the peak it
really reached (`MEASURED`), which benchmarks/real_size.py prints beside the budget.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import resource
import threading
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np

from lis_jax import batching
from lis_jax.distribute import one_call_at_a_time, pad_batch
from lis_jax.errors import PipelineError

GiB = 1 << 30
MiB = 1 << 20
# Fraction of the budget a call may plan to use (after the measured ratio, below): the
# allocator's fragmentation, the host copies of inputs and results, and Python's arrays
# around the call are the rest. The ratio alone was missing before: under `prlimit --as=8G`
# (budget 7.2 GiB) a call analysed at 5.0 GiB aborted with std::bad_alloc: it reserves
# 2.1x that in address space (README, "Memory and the plan").
SAFETY = 0.8
# Probe batch sizes for the linear model (the smaller is also the "does one row fit" check).
PROBES = (1, 4)
# A chosen batch whose line-predicted need is under this fraction of the limit is taken
# without compiling it (the line's error stays well inside the rest); above it, it is
# compiled and checked.
TRUST = 0.5
# How often the chosen batch is re-checked (and shrunk) against a compile at that size.
MAX_REFINE = 4
# A call is run and measured only if this many times its analysed need at the configured
# batch would not fit (the largest ratio measured so far is 2.1: module docstring).
PLAUSIBLE = 3.0
# Bytes of a measured peak that do not grow with the batch (thread-local arenas, the
# runtime's buffers): measured 8-28 MiB resident and ~10-25 MiB of address space on a
# 256-px synthesis at batch 1, 4 and 8; not counted in the ratio, and kept out of the
# budget when a call measured more than its analysis.
MEASURE_SLACK = 64 * MiB
# How often `PeakSampler` reads /proc/self/status (a read takes ~20 us).
SAMPLE_S = 0.005
# A partial last batch is padded to the full batch (one compile for any row count) unless
# the padding's work is above this many FLOPs; then only to the next multiple of the device
# count (one more compile). 1 TFLOP is ~10 s of this 2-core CPU at its measured ~100 GFLOP/s,
# more than compiling our calls takes here; one 256-px StyleGAN-XL synthesis is 3.07 TFLOP
# (XLA's cost analysis), so at the paper's size a search file or a sweep of 4 images pads
# to 4, not to 64 (60 wasted syntheses, ~35 min on this CPU); the demo world's calls
# (MFLOPs per row) keep their single compile.
PAD_FLOPS = 1e12


# ----------------------------------------------------------------------------- budget


@dataclasses.dataclass(frozen=True)
class Budget:
  """Bytes a process may allocate on its device, and where the number came from."""
  bytes: int
  source: str
  host: bool = False  # host memory (CPU backend): calls are measured, not only analysed
  virtual: bool = False  # an address-space limit: measured in address space, not resident

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
  """memory.max less memory.current (cgroup v2), else this process's cgroup v1 memory
  controller's limit_in_bytes less usage_in_bytes (None: no limit found)."""
  try:
    with open(os.path.join(root, "memory.max")) as f:
      limit = f.read().strip()
    if limit == "max":
      return None
    with open(os.path.join(root, "memory.current")) as f:
      return max(0, int(limit) - int(f.read().strip()))
  except (OSError, ValueError):
    return _cgroup_v1_left(root)


def _cgroup_v1_left(root: str, proc: str = "/proc/self/cgroup") -> int | None:
  try:
    with open(proc) as f:
      rel = next(line.strip().split(":", 2)[2] for line in f if ":memory:" in line)
    d = os.path.join(root, "memory", rel.lstrip("/"))
    with open(os.path.join(d, "memory.limit_in_bytes")) as f:
      limit = int(f.read().strip())
    if limit >= 1 << 60:   # v1 spells "no limit" as a huge number
      return None
    with open(os.path.join(d, "memory.usage_in_bytes")) as f:
      return max(0, limit - int(f.read().strip()))
  except (OSError, ValueError, StopIteration, IndexError):
    return None


def host_budget() -> Budget:
  """The host's memory this process may still use (CPU backend): the smallest of
  MemAvailable, the address-space limit left and the cgroup limit left."""
  found = [(b, s) for b, s in ((_meminfo_available(), "host MemAvailable"),
                               (_address_space_left(), "ulimit -v less VmSize"),
                               (_cgroup_left(), "cgroup memory.max"))
           if b is not None]
  if not found:
    return Budget(8 * GiB, "unknown host memory: assumed 8 GiB (set config.memory_gb)", host=True)
  b, s = min(found)
  return Budget(int(b), s, host=True, virtual=s.startswith("ulimit"))


def device_budget(memory_gb: float = 0.0, device: Any = None) -> Budget:
  """The memory budget of `device` (default: the first local device).

  Args:
    memory_gb: an override in GiB (config.memory_gb); <= 0: measure.
    device: a jax Device.
  """
  device = device or jax.local_devices()[0]
  if memory_gb and memory_gb > 0:
    return Budget(int(memory_gb * GiB), "config.memory_gb", host=device.platform == "cpu")
  stats = None
  try:
    stats = device.memory_stats()
  except Exception:  # Backends without allocator statistics raise or return None.
    stats = None
  if stats and stats.get("bytes_limit"):
    free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return Budget(free, f"{device.platform} memory_stats")
  return host_budget()


# The running config's memory_gb (set by `config_budget`): the override `default_budget`
# applies to the library calls a stage makes without passing its budget.
_RUN_GB = 0.0


def config_budget(config: Any) -> Budget:
  """`device_budget` with the override `config.memory_gb` when the config has it; the
  override also becomes `default_budget`'s for the rest of the process."""
  global _RUN_GB
  gb = float(config.get("memory_gb", 0) or 0) if hasattr(config, "get") else 0.0
  _RUN_GB = gb
  return device_budget(gb)


# ----------------------------------------------------------------------------- measuring


def _status(path: str = "/proc/self/status") -> tuple[int, int]:
  """(resident bytes, address-space bytes) of this process now ((0, 0) if unknown)."""
  rss = vm = 0
  try:
    with open(path) as f:
      for line in f:
        if line.startswith("VmRSS:"):
          rss = int(line.split()[1]) * 1024
        elif line.startswith("VmSize:"):
          vm = int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  return rss, vm


class PeakSampler:
  """Samples this process's resident size and address space every SAMPLE_S seconds while
  the block runs; `.rss` and `.vm`: the growth of each over its value at the start."""

  def __enter__(self) -> "PeakSampler":
    self._base = _status()
    self._peak = list(self._base)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()
    return self

  def _run(self) -> None:
    while not self._stop.is_set():
      self._take()
      time.sleep(SAMPLE_S)

  def _take(self) -> None:
    now = _status()
    self._peak = [max(p, n) for p, n in zip(self._peak, now)]

  def __exit__(self, *exc: Any) -> None:
    self._stop.set()
    self._thread.join()
    self._take()

  @property
  def rss(self) -> int:
    return max(0, self._peak[0] - self._base[0])

  @property
  def vm(self) -> int:
    return max(0, self._peak[1] - self._base[1])

  def grown(self, budget: "Budget") -> int:
    """The growth in the budget's measure (address space under `ulimit -v`, else resident)."""
    return self.vm if budget.virtual else self.rss


@dataclasses.dataclass(frozen=True)
class Measured:
  """One call's analysed need against what the process really grew by while it ran."""
  call: str
  batch: int
  analysed: int
  rss: int
  vm: int
  budget: "Budget"

  def line(self) -> str:
    grown = self.vm if self.budget.virtual else self.rss
    return (f"{self.call}: batch {self.batch}, analysed {self.analysed / MiB:.0f} MiB, measured "
            f"{self.rss / MiB:.0f} MiB resident / {self.vm / MiB:.0f} MiB address space "
            f"({grown / max(1, self.budget.bytes):.0%} of the budget {self.budget})")


# The largest measured peak of each call (by name) in this process: benchmarks print them.
MEASURED: dict = {}


def _record(call: str, batch: int, analysed: int, sampler: PeakSampler, budget: "Budget") -> None:
  old = MEASURED.get(call)
  new = Measured(call, batch, analysed, sampler.rss, sampler.vm, budget)
  if old is None or sampler.grown(budget) >= (old.vm if budget.virtual else old.rss):
    MEASURED[call] = new


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
  collectives: bool = False  # sharded over several CPU devices, with cross-device collectives

  @property
  def need(self) -> int:
    """New bytes the call allocates: temporaries + outputs + the batch - aliased."""
    return max(0, self.temp + self.output + self.rows - self.alias)


def _abstract_rows(rows: Any, batch: int) -> Any:
  """rows' leaves as ShapeDtypeStructs of `batch` rows (a ShapeDtypeStruct leaf's sharding kept)."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct((batch,) + tuple(np.shape(x)[1:]), np.asarray(x).dtype
                                     if not hasattr(x, "dtype") else x.dtype,
                                     sharding=x.sharding if isinstance(x, jax.ShapeDtypeStruct)
                                     else None), rows)


def _nbytes(tree: Any) -> int:
  return int(sum(np.dtype(x.dtype).itemsize * int(np.prod(np.shape(x)))
                 for x in jax.tree_util.tree_leaves(tree) if hasattr(x, "dtype")))


def _lowerable(fn: Callable[..., Any]) -> tuple[Any, tuple, dict]:
  """(a jitted function, its leading args, its keyword args) that `fn(*args, rows)` calls.

  A jitted function, or a functools.partial of one with keyword (static) arguments, is
  lowered as itself: its compilation is then the one its own calls find in jax's cache
  (`jax.jit(fn)` around it would be compiled again at the first real call)."""
  if hasattr(fn, "lower"):
    return fn, (), {}
  if isinstance(fn, functools.partial) and hasattr(fn.func, "lower"):
    return fn.func, tuple(fn.args), dict(fn.keywords)
  return jax.jit(fn), (), {}


def compiled(fn: Callable[..., Any], args: tuple, rows: Any, batch: int) -> Any:
  """`jax.jit(fn).lower(*args, rows at batch).compile()` (rows only by shape; a
  ShapeDtypeStruct leaf's sharding is kept). A jitted `fn` (or a partial of one) is lowered as itself, so
  that its calls at this batch reuse this compilation."""
  f, lead, kw = _lowerable(fn)
  return f.lower(*lead, *args, _abstract_rows(rows, batch), **kw).compile()


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
                    flops=float((cost or {}).get("flops", 0.0)),
                    collectives=_multi_cpu(rows) and _has_collectives(c))


# HLO ops that exchange data between devices.
_COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter",
                "collective-broadcast")


def _multi_cpu(rows: Any) -> bool:
  """Whether rows (ShapeDtypeStructs from `map_chunks`) are placed over several CPU devices."""
  for x in jax.tree_util.tree_leaves(rows):
    sh = getattr(x, "sharding", None) if isinstance(x, jax.ShapeDtypeStruct) else None
    if sh is not None and one_call_at_a_time(sh.device_set):
      return True
  return False


def _has_collectives(c: Any) -> bool:
  """Whether a compiled call's optimised HLO exchanges data between devices."""
  try:
    text = c.as_text()
  except Exception:  # an executable without text: assume it may (waiting is only slower)
    return True
  return any(op in text for op in _COLLECTIVES)


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
  """The batch a call runs at, its analysed memory there and the budget it fits.

  `model` (the line through the probes) is fitted when first read where the call fit at
  its configured batch without it (`choose_batch`'s first compile)."""
  call: str
  batch: int
  max_batch: int
  memory: CallMemory
  budget: Budget
  fit: Callable[[], LinearModel] = dataclasses.field(repr=False, compare=False)
  factor: float = 1.0  # measured bytes per analysed byte (1: not measured, or no more)

  @functools.cached_property
  def model(self) -> LinearModel:
    """need(b) as a line through the probe batches (compiled on first use if not yet)."""
    return self.fit()

  @property
  def peak(self) -> int:
    """The bytes this call is expected to take: analysed need x measured factor."""
    return int(self.memory.need * self.factor)

  def line(self) -> str:
    ratio = f" x measured {self.factor:.2f}" if self.factor > 1 else ""
    return (f"{self.call}: batch {self.batch} (max {self.max_batch}), peak "
            f"{self.memory.need / MiB:.0f} MiB analysed{ratio} of {SAFETY:.0%} x {self.budget}")


def tail_size(choice: BatchChoice, multiple: int = 1) -> Callable[[int], int]:
  """The padded size of a last batch of m rows (`batching.map_batches(tail=...)`): the
  chosen batch, or the next multiple of `multiple` when the padding's work (XLA's FLOPs per
  row of this call) is above PAD_FLOPS."""
  per_row = choice.memory.flops / max(choice.memory.batch, 1)

  def size(m: int) -> int:
    small = -(-m // multiple) * multiple
    return small if (choice.batch - small) * per_row > PAD_FLOPS else choice.batch
  return size


def _fail(stage: str, call: str, batch: int, need: int, budget: Budget, setting: str) -> PipelineError:
  where = f"{stage}: " if stage else ""
  return PipelineError(
      f"{where}{call} needs {need / GiB:.2f} GiB at batch {batch}, more than {SAFETY:.0%} of the "
      f"memory budget {budget}; lower {setting}, use a smaller model or a device with more memory "
      f"(or set config.memory_gb if the budget is wrong)")


def _concrete(args: tuple) -> bool:
  return all(not isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree_util.tree_leaves(args))


def measure(fn: Callable[..., Any], args: tuple, rows: Any, batch: int, budget: Budget,
            call: str) -> PeakSampler:
  """Runs `fn(*args, zeros at batch)` (bool rows: True) once (compiled, results copied to the host and
  dropped) and returns the sampler of that run."""
  c = compiled(fn, args, rows, batch)
  zeros = jax.tree_util.tree_map(   # bools True: an `active` mask keeps a search loop running
      lambda x: (np.ones if x.dtype == bool else np.zeros)((batch,) + tuple(np.shape(x)[1:]), x.dtype),
      _abstract_rows(rows, batch))
  zeros = jax.tree_util.tree_map(   # placed as the call expects (`map_chunks`' sharded rows)
      lambda z, x: jax.device_put(z, x.sharding) if isinstance(x, jax.ShapeDtypeStruct) and x.sharding
      is not None else z, zeros, rows)
  with PeakSampler() as s:
    jax.tree_util.tree_map(np.asarray, c(*args, zeros))
  return s


def measured_factor(need: int, grown: int) -> float:
  """Measured bytes per analysed byte, the fixed MEASURE_SLACK aside (at least 1)."""
  return max(1.0, (grown - MEASURE_SLACK) / max(1, need))


_CHOICES: dict = {}
_ANALYSES: dict = {}
_FACTORS: dict = {}   # measured factor per function and shapes


def choose_batch(fn: Callable[..., Any], rows: Any, max_batch: int, *args: Any, budget: Budget,
                 call: str, setting: str, stage: str = "", multiple: int = 1,
                 first_at_max: bool = True) -> BatchChoice:
  """The largest batch <= max_batch (a multiple of `multiple`) whose compiled need fits.

  Args:
    fn, rows, *args: as `batching.map_batches(fn, rows, batch, *args)`.
    max_batch: the configured batch size (a maximum).
    budget: `device_budget(...)`.
    call, setting, stage: named in the error when even the smallest batch does not fit
      (`setting`: the config field to lower, e.g. 'quantify.resolution').
    multiple: batches are multiples of this (the device count of a sharded call).
    first_at_max: compile at max_batch first and take it if it fits PLAUSIBLE times over
      (one compile, which the call's runs reuse); False: the probes first (the plan, which
      sizes one call at several max_batch, predicts each from their line).
  Raises:
    PipelineError: the smallest batch does not fit.
  On a host budget (`budget.host`) with concrete `args`, a call that could need more than
  the budget (PLAUSIBLE x its analysed need at max_batch) is run once at the smallest
  probe and the limit divided by the measured factor (module docstring).
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
  fit = lambda: LinearModel.through(at(probes[0]), at(probes[-1]))
  # First the configured batch itself: the batch the call runs at when it fits with room to
  # spare (even PLAUSIBLE x its need: nothing to measure), then compiled once, not three times
  # (the probes are only compiled if `model` is read). jax's cache keeps the compilation
  # for the call's own runs (`compiled`).
  if first_at_max and PLAUSIBLE * at(max_batch).need <= limit:
    choice = BatchChoice(call=call, batch=max_batch, max_batch=max_batch, memory=at(max_batch),
                         budget=budget, fit=fit)
    _CHOICES[key] = choice
    return choice
  mems = [at(b) for b in probes]
  model = LinearModel.through(mems[0], mems[-1])
  factor = 1.0
  if budget.host and _concrete(args) and PLAUSIBLE * model.at(max_batch) > limit:
    if key[:3] not in _FACTORS:
      s = measure(fn, args, rows, probes[0], budget, call)
      _record(call, probes[0], mems[0].need, s, budget)
      _FACTORS[key[:3]] = measured_factor(mems[0].need, s.grown(budget))
    factor = _FACTORS[key[:3]]
    if factor > 1:   # (the slack was measured in excess of the analysis: it is kept out too)
      limit = max(0.0, limit - MEASURE_SLACK) / factor
  if mems[0].need > limit:
    raise _fail(stage, call, probes[0], int(mems[0].need * factor), budget, setting)
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
    raise _fail(stage, call, b, int(m.need * factor), budget, setting)
  choice = BatchChoice(call=call, batch=b, max_batch=max_batch, memory=m, budget=budget,
                       fit=lambda: model, factor=factor)
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


# Calls of one map run at once on a CPU, each from its own thread. XLA:CPU runs a small
# convolution on one core: a jitted stack of six 3x3 convolutions on [16, 64, 64, 32] took
# 6.5 s for 40 calls one after another (6.9 s of CPU time) and 3.5 s from two threads on
# this 2-core machine (an AMD EPYC); larger ones (a [64, 64, 64, 128] convolution, a
# 2048^2 matmul) use both cores already (cpu time 1.9-2x wall). Not for calls that
# exchange data between CPU devices (`one_call_at_a_time`), nor where two calls' need
# (PLAUSIBLE x each) would not fit the budget, nor across processes' calls.
CPU_CALLS_AT_ONCE = 2


def calls_at_once(choice: "BatchChoice", devices: Any = None) -> int:
  """How many batches of `choice`'s call `map_batches` / `map_chunks` run at once:
  `CPU_CALLS_AT_ONCE` (at most the cores this process may use) on the CPU backend for a
  call without cross-device collectives whose expected bytes (`peak`) fit that many times over
  (PLAUSIBLE x each, as an unmeasured call is taken at max_batch); else 1. `devices` (a
  mesh or devices) are those a caller shards its own calls over when they are not
  `choice`'s (the sweep sizes a chunk and sends whole blocks): over several CPU devices,
  1 (`one_call_at_a_time`)."""
  if jax.default_backend() != "cpu" or choice.memory.collectives:
    return 1
  if devices is not None and one_call_at_a_time(devices):
    return 1
  k = min(CPU_CALLS_AT_ONCE, len(os.sched_getaffinity(0)))
  return k if k * PLAUSIBLE * choice.peak <= SAFETY * choice.budget.bytes else 1


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
  # Not clipped to n: one batch size (one compile) whatever the number of rows, unless
  # the padding costs more than a compile (PAD_FLOPS).
  choice = choose_batch(fn, rows, max_batch, *args, budget=budget, call=call,
                        setting=setting, stage=stage)
  if log and choice.batch < choice.max_batch:
    log(choice.line())
  tail = tail_size(choice)
  workers = calls_at_once(choice)
  with guard(stage, call, choice.batch, setting):
    if not budget.host:
      return batching.map_batches(fn, rows, choice.batch, *args, tail=tail, workers=workers)
    with PeakSampler() as s:
      out = batching.map_batches(fn, rows, choice.batch, *args, tail=tail, workers=workers)
  _record(call, choice.batch, choice.memory.need, s, budget)
  return out


def map_chunks(fn: Callable[..., Any], rows: Any, max_batch: int, *args: Any, budget: Budget,
               call: str, setting: str, stage: str = "", multiple: int = 1,
               place: Callable[[Any], Any] | None = None) -> Any:
  """`fn(*args, rows)` for rows that one output file holds together (a counterfactual or
  boundary batch): run in chunks of the batch the budget allows (<= max_batch, a multiple
  of `multiple`), each padded to it and put on the devices by `place`
  (`distribute.shard_batch`); the numpy results concatenated in row order. With memory
  for all rows it is one call at max_batch, as before budgets.
  """
  n = jax.tree_util.tree_leaves(rows)[0].shape[0]
  if n == 0:   # nothing to size (batching.map_batches' own behaviour for no rows)
    return batching.map_batches(lambda *a: fn(*a[:-1], (place or (lambda x: x))(a[-1])), rows,
                                max_batch, *args)
  choice = choose_batch(fn, _placed(rows, place, multiple), max_batch, *args, budget=budget, call=call,
                        setting=setting, stage=stage, multiple=multiple)
  place = place or (lambda x: x)
  b = choice.batch
  # XLA:CPU runs a sharded call's collectives on the devices' threads: with several such
  # calls in flight their all-gathers waited on each other (a 4-device demo deadlocked), so
  # a chunk whose call exchanges data between CPU devices is waited for before the next.
  # Other calls run `calls_at_once` chunks at a time.
  wait = jax.block_until_ready if choice.memory.collectives else (lambda x: x)
  placed = lambda *a: wait(fn(*a[:-1], place(a[-1])))
  with guard(stage, call, b, setting), PeakSampler() as s:
    out = batching.map_batches(placed, rows, b, *args, tail=tail_size(choice, multiple),
                               workers=calls_at_once(choice))
  if budget.host:
    _record(call, b, choice.memory.need, s, budget)
  return out


def _placed(rows: Any, place: Callable[[Any], Any] | None, multiple: int) -> Any:
  """rows as ShapeDtypeStructs with the sharding `place` gives a chunk (read from `multiple`
  placed rows), so that the sized call is compiled as it will run (once: `compiled`);
  rows unchanged without `place`."""
  if place is None:
    return rows
  probe = place(jax.tree_util.tree_map(lambda x: pad_batch(np.asarray(x)[:1], multiple), rows))
  return jax.tree_util.tree_map(
      lambda x, p: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=getattr(p, "sharding", None)),
      rows, probe)


def default_budget() -> Budget:
  """The first local device's budget now (the running config's memory_gb if set, see
  `config_budget`): measured at each call, since the memory in use grows as models load
  and programs compile."""
  return device_budget(_RUN_GB)
