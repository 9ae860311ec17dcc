"""Devices and processes: data parallelism with `jax.sharding`, multi-process with `jax.distributed`.

Inside one process, the pipeline's batches (latents, sweep images, counterfactual
searches) are split along their leading axis over a 1-D mesh of the process's devices
(`data_mesh`, axis `DATA_AXIS`); models are replicated; XLA (GSPMD) partitions the
jitted computation, and results are the same arrays as on one device. On CPU,
`XLA_FLAGS=--xla_force_host_platform_device_count=4` simulates 4 devices.

Across processes (TPU pod slices, multi-GPU machines, SLURM jobs), JAX's own
multi-controller runtime is used: `initialize` starts `jax.distributed` from flags, the
environment or JAX's cluster auto-detection; every process then runs the same stages,
takes its share of each stage's work items (`my_items`: blocks, shards, batches, all
numbered independently of the number of processes), computes them on its own devices
and writes one file per item, named by the item, so no two processes ever write the same
file and a run resumed with a different number of processes finds every finished item.
After a `barrier`, process 0 alone merges the items into the stage's manifests and
summaries. Progress bars and logs come from process 0 only (`progress`, `log`); each
process prints one line of its own when it is done (`process_line`).

`global_mesh` is the mesh over all global devices, axes (PROCESS_AXIS, DATA_AXIS): row
p holds process p's devices (`data_mesh` in process p). The pipeline's work items are
independent, so each process computes on its own row without cross-process collectives
in the hot loop; the only collective is the barrier.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
PROCESS_AXIS = "process"

# Environment variables read by `initialize` when the flags are not given.
ENV_COORDINATOR = "LIS_JAX_COORDINATOR_ADDRESS"   # host:port of process 0's coordinator
ENV_NUM_PROCESSES = "LIS_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "LIS_JAX_PROCESS_ID"


class DistributedError(ValueError):
  """A multi-process setting the user can fix (incomplete or inconsistent flags)."""


@dataclasses.dataclass(frozen=True)
class ProcessSetup:
  """How `jax.distributed` is started.

  mode: 'single' (no jax.distributed), 'explicit' (coordinator address, number of
  processes and process id given) or 'auto' (JAX's cluster auto-detection: TPU pod
  slices, SLURM, Open MPI, ...).
  """
  mode: str
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None


def process_setup(coordinator_address: str | None = None, num_processes: int | None = None,
                  process_id: int | None = None, auto: bool = False,
                  environ: Mapping[str, str] | None = None) -> ProcessSetup:
  """The multi-process setting from flags, else from `ENV_*` variables.

  Args:
    coordinator_address, num_processes, process_id: explicit settings (None: unset).
    auto: let JAX detect the cluster (TPU pod slice, SLURM, ...) when nothing is set.
    environ: the environment (default `os.environ`).
  Returns:
    a `ProcessSetup`; 'single' when nothing is set and not `auto`, or when
    num_processes is 1.
  Raises:
    DistributedError: a partial explicit setting (all three are needed) or a process id
      outside [0, num_processes).
  """
  env = os.environ if environ is None else environ
  addr = coordinator_address or env.get(ENV_COORDINATOR) or None
  n = num_processes if num_processes is not None else _env_int(env, ENV_NUM_PROCESSES)
  pid = process_id if process_id is not None else _env_int(env, ENV_PROCESS_ID)
  given = {"coordinator address": addr, "number of processes": n, "process id": pid}
  if all(v is None for v in given.values()):
    return ProcessSetup("auto" if auto else "single")
  if n == 1 and pid in (None, 0):
    return ProcessSetup("single")
  missing = [k for k, v in given.items() if v is None]
  if missing:
    raise DistributedError(
        f"multi-process run: {', '.join(missing)} not set (flags --coordinator_address, "
        f"--num_processes, --process_id or ${ENV_COORDINATOR}, ${ENV_NUM_PROCESSES}, "
        f"${ENV_PROCESS_ID}); on TPU pods and under SLURM use --distributed=auto instead")
  if n < 1 or not 0 <= pid < n:
    raise DistributedError(f"process id {pid} is not in [0, {n}) (number of processes {n})")
  return ProcessSetup("explicit", addr, n, pid)


def _env_int(env: Mapping[str, str], name: str) -> int | None:
  value = env.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise DistributedError(f"${name}={value!r} is not an integer") from None


def initialize(setup: ProcessSetup) -> None:
  """Starts `jax.distributed` as `setup` says (nothing for 'single').

  Must run before anything touches a JAX device.
  """
  if setup.mode == "single":
    return
  # Cross-process collectives of the CPU backend (the barrier, on CPU-only runs); the
  # accelerator backends bring their own.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if setup.mode == "auto":
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(coordinator_address=setup.coordinator_address,
                               num_processes=setup.num_processes, process_id=setup.process_id)


# ----------------------------------------------------------------------------- processes


def process_index() -> int:
  return jax.process_index()


def process_count() -> int:
  return jax.process_count()


def is_main() -> bool:
  """True in process 0, the one that logs, shows progress bars and merges."""
  return process_index() == 0


def my_items(n: int, index: int | None = None, count: int | None = None) -> np.ndarray:
  """The work items of `range(n)` that process `index` of `count` handles (default: this one).

  Round robin (item i goes to process i % count): every item to exactly one process,
  shares differ by at most one item, and early items (often the cheapest to resume)
  spread over all processes.
  Returns:
    [k] int64 item indices in increasing order.
  """
  mine = index is None
  index = process_index() if index is None else index
  count = process_count() if count is None else count
  if not 0 <= index < count:
    raise ValueError(f"process {index} is not in [0, {count})")
  items = np.arange(index, n, count)
  if mine:
    global _assigned
    _assigned += items.size
  return items


# Items handed to this process by `my_items` since the last `take_assigned` (its end-of-stage line).
_assigned = 0


def add_assigned(n: int) -> None:
  """Counts n work items for this process's end-of-stage line (stages that pick items themselves)."""
  global _assigned
  _assigned += n


def take_assigned() -> int:
  """Work items `my_items` gave this process since the last call (and resets the count)."""
  global _assigned
  n, _assigned = _assigned, 0
  return n


def barrier(name: str) -> None:
  """Blocks until every process reaches the barrier `name` (nothing with one process).

  Every process must call the same barriers in the same order.
  """
  if process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def log(message: str) -> None:
  """Prints `message` from process 0 only."""
  if is_main():
    print(message, flush=True)


def progress(*args: Any, **kwargs: Any):
  """A tqdm progress bar, shown by process 0 only (the others get a disabled one)."""
  from tqdm import tqdm
  kwargs["disable"] = kwargs.get("disable", False) or not is_main()
  return tqdm(*args, **kwargs)


def process_line(what: str, items: int, seconds: float) -> None:
  """The line every process prints at the end of its share of a stage and of the run."""
  print(f"[lis_jax] process {process_index()}/{process_count()} ({len(jax.local_devices())} "
        f"device(s)): {what}: {items} item(s) in {seconds:.1f} s", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- meshes


def data_mesh() -> Mesh:
  """A 1-D mesh over this process's devices, axis name `DATA_AXIS` (all devices with one process)."""
  return Mesh(np.asarray(jax.local_devices()), (DATA_AXIS,))


def global_mesh() -> Mesh:
  """The mesh over all global devices, [process_count, local devices]: row p is process p's `data_mesh`."""
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  grid = np.asarray(devices).reshape(process_count(), -1)   # [P, local]
  return Mesh(grid, (PROCESS_AXIS, DATA_AXIS))


def num_shards(mesh: Mesh) -> int:
  return mesh.shape[DATA_AXIS]


def round_up(n: int, mesh: Mesh) -> int:
  """The smallest multiple of the device count >= n (a batch size every device can split)."""
  k = num_shards(mesh)
  return -(-max(n, 1) // k) * k


def shard_batch(tree: Any, mesh: Mesh) -> Any:
  """Places every array of `tree` split along axis 0 over the mesh (axis 0 must divide)."""
  def put(x):
    spec = PartitionSpec(DATA_AXIS, *([None] * (np.ndim(x) - 1)))
    return jax.device_put(x, NamedSharding(mesh, spec))
  return jax.tree_util.tree_map(put, tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a full copy of every array of `tree` (e.g. model params) on each device."""
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def pad_batch(x: np.ndarray, size: int) -> np.ndarray:
  """Pads axis 0 of `x` to `size` by repeating its last row (results for pads are dropped)."""
  x = np.asarray(x)
  if x.shape[0] == size:
    return x
  if x.shape[0] > size or x.shape[0] == 0:
    raise ValueError(f"cannot pad a batch of {x.shape[0]} rows to {size}")
  reps = np.repeat(x[-1:], size - x.shape[0], axis=0)
  return np.concatenate([x, reps], axis=0)

