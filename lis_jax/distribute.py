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
independent, so each process computes on its own row without cross-process collectives;
the processes meet only at barriers of the coordination service (`barrier`).

Agreement and deadlines (README, "Multi-process runs"). Before `jax.distributed` starts,
`handshake` has every process say hello to process 0 over a plain TCP socket on the
coordinator's port: a port in use, an address without a port, a duplicate process id, a
different number of processes or a peer that never starts ends every process with one
line within `Timeouts.connect`. After it, `agree` exchanges each process's resolved
config, flags and model hashes through the coordination service's key-value store and
stops every process, naming the fields and the processes, if any differ. `barrier` is a
key-value barrier with a deadline (`Timeouts.barrier`) that also sees a peer's failure
(`report_failure`), not an XLA collective (which waits without a deadline for a peer
that stopped, until `jax.distributed` aborts the process, SIGABRT: README,
"Multi-process runs").
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import sys
import time
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
  """A multi-process setting the user can fix (incomplete or inconsistent flags), or
  processes that disagree or lost each other.

  abandon: True when a peer may be gone, so this process should exit at once rather than
    wait for the others in `jax.distributed`'s shutdown.
  """

  def __init__(self, message: str, abandon: bool = False):
    super().__init__(message)
    self.abandon = abandon


@dataclasses.dataclass(frozen=True)
class Timeouts:
  """Deadlines of a multi-process run, in seconds (flags --connect_timeout, ...).

  connect: every process has started and said hello to process 0 (`handshake`), and has
    connected to `jax.distributed` (its initialization_timeout).
  barrier: the longest wait at a barrier: the slowest process's share of a stage plus
    process 0's merge. Also the fingerprint exchange (`agree`) and `jax.distributed`'s
    shutdown barrier.
  heartbeat: a process silent this long is taken as dead by `jax.distributed`, which
    then aborts every process (its own message, not one line): kept above `barrier`, so a
    lost peer is normally reported by a barrier's deadline first.
  """
  connect: int = 300
  barrier: int = 3600
  heartbeat: int = 3900

  def __post_init__(self):
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise DistributedError(f"--{f.name}_timeout={v!r}: give a whole number of seconds >= 1")


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
  parse_address(addr)
  return ProcessSetup("explicit", addr, n, pid)


def parse_address(address: str) -> tuple[str, int]:
  """host:port (or [v6]:port) -> (host, port); DistributedError (one line) otherwise."""
  host, sep, port = address.rpartition(":")
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise DistributedError(f"coordinator address {address!r} is not host:port (e.g. "
                           f"10.0.0.1:12345, a port in 1..65535)")
  return host.strip("[]"), int(port)


def _env_int(env: Mapping[str, str], name: str) -> int | None:
  value = env.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise DistributedError(f"${name}={value!r} is not an integer") from None


def initialize(setup: ProcessSetup, timeouts: Timeouts = Timeouts()) -> None:
  """Starts `jax.distributed` as `setup` says (nothing for 'single'), with `timeouts`.

  An explicit setup first runs `handshake` (every process present, ids distinct, the
  port free), so none of JAX's own start-up failures (a segfault on a port in use, an
  abort after a missing peer's deadline) can happen. Must run before anything touches a
  JAX device.
  Raises:
    DistributedError: one line, in every process, within `timeouts.connect`.
  """
  global _timeouts
  if setup.mode == "single":
    return
  _timeouts = timeouts
  if setup.mode == "explicit":
    handshake(setup, timeouts.connect)
  # Cross-process collectives of the CPU backend (only the model code's, if any: the
  # runner's barriers go through the key-value store); the accelerator backends bring their own.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = dict(initialization_timeout=timeouts.connect,
                heartbeat_timeout_seconds=max(timeouts.heartbeat, timeouts.barrier + 1),
                shutdown_timeout_seconds=timeouts.barrier)
  try:
    if setup.mode == "auto":
      jax.distributed.initialize(**kwargs)
    else:
      jax.distributed.initialize(coordinator_address=setup.coordinator_address,
                                 num_processes=setup.num_processes, process_id=setup.process_id,
                                 **kwargs)
  except (RuntimeError, ValueError) as e:   # JaxRuntimeError is a RuntimeError
    who = "this process" if setup.process_id is None else f"process {setup.process_id}"
    raise DistributedError(f"{who}: jax.distributed did not start "
                           f"({_first_line(e)}) within --connect_timeout={timeouts.connect} s",
                           abandon=True) from None


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return (text[0] if text else type(e).__name__)[:300]


# The deadlines of this process's run (`initialize`).
_timeouts = Timeouts()


def timeouts() -> Timeouts:
  return _timeouts


# ----------------------------------------------------------------------------- start-up handshake

_HELLO = "lis_jax-hello-1"


def handshake(setup: ProcessSetup, timeout: float) -> None:
  """Every process says hello to process 0 over TCP on the coordinator's port, before
  `jax.distributed` binds it.

  Process 0 binds the port (DistributedError at once if it is taken: another program,
  or a second process given --process_id=0) and waits for processes 1..n-1, each once,
  each with the same number of processes; it then answers every peer 'ok' or the
  problem, and closes the port for `jax.distributed`. The others retry connecting until
  process 0 answers.
  Raises:
    DistributedError: one line naming the problem and the processes, within `timeout` s.
  """
  host, port = parse_address(setup.coordinator_address)
  deadline = time.monotonic() + timeout
  if setup.process_id == 0:
    _handshake_serve(port, setup.num_processes, deadline, timeout)
  else:
    _handshake_join(host, port, setup.num_processes, setup.process_id, deadline, timeout)


def _handshake_serve(port: int, n: int, deadline: float, timeout: float) -> None:
  srv = socket.socket(socket.AF_INET6 if socket.has_dualstack_ipv6() else socket.AF_INET)
  srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  if srv.family == socket.AF_INET6:
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
  try:
    srv.bind(("", port))
    srv.listen(max(n, 8))
  except OSError as e:
    srv.close()
    raise DistributedError(
        f"process 0: coordinator port {port} is in use on this host ({e.strerror}): another "
        f"program holds it, or another process was also given --process_id=0; pick a free "
        f"port in --coordinator_address") from None
  peers: dict[int, socket.socket] = {}
  problems: list[str] = []
  extra: list[socket.socket] = []
  try:
    while len(peers) < n - 1 and not problems:
      left = deadline - time.monotonic()
      if left <= 0:
        missing = sorted(set(range(1, n)) - set(peers))
        problems.append(f"process(es) {_ids(missing)} did not join within --connect_timeout="
                        f"{timeout:g} s (not started, given another --coordinator_address, "
                        f"or two processes given the same --process_id)")
        break
      srv.settimeout(min(left, 1.0))
      try:
        conn, _ = srv.accept()
      except socket.timeout:
        continue
      hello = _recv_line(conn, min(deadline - time.monotonic(), 10.0))
      pid, count = _parse_hello(hello)
      if pid is None:
        extra.append(conn)   # not one of ours (a port scanner, another program): ignored
        continue
      if count != n:
        problems.append(f"process {pid} was started with --num_processes={count}, process 0 "
                        f"with {n}")
      elif pid in peers or pid == 0:
        problems.append(f"two processes were given --process_id={pid}")
      elif not 0 < pid < n:
        problems.append(f"process id {pid} is not in [0, {n})")
      if pid in peers:
        extra.append(conn)
      else:
        peers[pid] = conn
    answer = "ok" if not problems else "error " + problems[0]
    for conn in [*peers.values(), *extra]:
      _send_line(conn, answer)
    for conn in peers.values():   # the peers close first: the port is left free for JAX
      _recv_line(conn, 5.0)
  finally:
    for conn in [*peers.values(), *extra]:
      conn.close()
    srv.close()
  if problems:
    raise DistributedError(f"process 0: {problems[0]}", abandon=True)


def _handshake_join(host: str, port: int, n: int, pid: int, deadline: float,
                    timeout: float) -> None:
  answer = None
  while answer is None:
    left = deadline - time.monotonic()
    if left <= 0:
      raise DistributedError(
          f"process {pid}: no answer from process 0 at {host}:{port} within --connect_timeout="
          f"{timeout:g} s (process 0 not started, the address is another program's, or "
          f"process 0 stopped)", abandon=True)
    try:
      conn = socket.create_connection((host, port), timeout=min(left, 5.0))
    except OSError:   # refused: process 0 not listening yet
      time.sleep(min(0.5, max(left, 0)))
      continue
    try:
      _send_line(conn, json.dumps({"hello": _HELLO, "process_id": pid, "num_processes": n}))
      answer = _recv_line(conn, deadline - time.monotonic())
    finally:
      conn.close()
    if answer is None:
      continue
  if answer != "ok":
    msg = (answer[len("error "):] if answer.startswith("error ")
           else f"unexpected answer {answer[:80]!r}")
    raise DistributedError(f"process {pid}: process 0 refused the start: {msg}", abandon=True)


def _parse_hello(line: str | None) -> tuple[int | None, int | None]:
  try:
    d = json.loads(line)
    if d.get("hello") == _HELLO:
      return int(d["process_id"]), int(d["num_processes"])
  except (TypeError, ValueError, KeyError, AttributeError):
    pass
  return None, None


def _send_line(conn: socket.socket, line: str) -> None:
  try:
    conn.sendall(line.encode() + b"\n")
  except OSError:
    pass


def _recv_line(conn: socket.socket, timeout: float) -> str | None:
  """One line from `conn`, or None on a timeout or a closed connection."""
  buf = b""
  end = time.monotonic() + max(timeout, 0.01)
  while b"\n" not in buf:
    left = end - time.monotonic()
    if left <= 0 or len(buf) > 65536:
      return None
    conn.settimeout(left)
    try:
      chunk = conn.recv(4096)
    except OSError:
      return None
    if not chunk:
      return None
    buf += chunk
  return buf.split(b"\n", 1)[0].decode(errors="replace")


def _ids(ids) -> str:
  return ", ".join(str(i) for i in ids)


# ----------------------------------------------------------------------------- agreement


def _client():
  from jax._src import distributed   # the runtime's key-value store: no public handle in JAX
  client = distributed.global_state.client
  if client is None:
    raise DistributedError("jax.distributed is not initialized")
  return client


_KEY = "lis_jax"
_calls = {"agree": 0, "barrier": 0}


def fingerprint(fields: Mapping[str, Any]) -> dict[str, str]:
  """sha256 of each top-level field's canonical JSON (what `agree` compares)."""
  return {k: hashlib.sha256(_canonical(v).encode()).hexdigest() for k, v in fields.items()}


def _canonical(v: Any) -> str:
  return json.dumps(v, sort_keys=True, default=repr, separators=(",", ":"))


def agree(fields: Mapping[str, Any], what: str = "config") -> None:
  """Every process exchanges `fields` (a JSON-able dict: resolved config, flags, model
  hashes); any difference stops every process (nothing with one process).

  Each process publishes its fields in the key-value store and reads every other's, so
  every process finds the same differences and raises the same error.
  Raises:
    DistributedError: '<what> differs across processes: <field> (process 0: 0; process 1:
      7), ...', or a process that did not publish within `Timeouts.barrier`.
  """
  if process_count() <= 1:
    return
  client, me, n = _client(), process_index(), process_count()
  _calls["agree"] += 1
  prefix = f"{_KEY}/agree/{_calls['agree']}"
  client.key_value_set(f"{prefix}/{me}", _canonical(dict(fields)))
  seen = {}
  for p in range(n):
    try:
      seen[p] = json.loads(client.blocking_key_value_get(f"{prefix}/{p}",
                                                         _timeouts.barrier * 1000))
    except Exception as e:   # JaxRuntimeError (deadline): no public class to name
      raise DistributedError(f"process {me}: process {p} did not report its {what} within "
                             f"--barrier_timeout={_timeouts.barrier} s ({_first_line(e)})",
                             abandon=True) from None
  diffs = differences(seen)
  if diffs:
    raise DistributedError(f"{what} differs across processes: {diffs}; start every process "
                           f"with the same --config, overrides, flags and model files")


def differences(seen: Mapping[int, Mapping[str, Any]], limit: int = 3) -> str:
  """'field (process 0: v0; process 1: v1), ...' for the leaves that differ; '' if none.

  seen: process id -> its fields (nested dicts are compared leaf by leaf, by sha256).
  """
  flat = {p: _flatten(v) for p, v in seen.items()}
  keys = sorted(set().union(*(f.keys() for f in flat.values())))
  out = []
  for k in keys:
    vals = {p: f.get(k, "<absent>") for p, f in flat.items()}
    digests = {p: hashlib.sha256(_canonical(v).encode()).hexdigest() for p, v in vals.items()}
    if len(set(digests.values())) > 1:
      groups: dict[str, list[int]] = {}
      for p in sorted(digests):
        groups.setdefault(digests[p], []).append(p)
      shown = "; ".join(f"process{'es' if len(ps) > 1 else ''} {_ids(ps)}: "
                        f"{_short(vals[ps[0]])}" for ps in groups.values())
      out.append(f"{k} ({shown})")
  if len(out) > limit:
    out = out[:limit] + [f"... {len(out)} fields in all"]
  return ", ".join(out)


def _flatten(v: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(v, Mapping) and v:
    out = {}
    for k, x in v.items():
      out.update(_flatten(x, f"{prefix}{k}."))
    return out
  return {prefix[:-1] or "<value>": v}


def _short(v: Any, n: int = 60) -> str:
  text = _canonical(v)
  return text if len(text) <= n else text[:n - 3] + "..."


def report_failure(message: str) -> None:
  """Tells the other processes that this one stops with `message` (best effort): they
  raise it at their next `barrier` instead of waiting for its deadline."""
  if process_count() <= 1:
    return
  try:
    _client().key_value_set(f"{_KEY}/error/{process_index()}", " ".join(message.split())[:500],
                            allow_overwrite=True)
  except Exception:   # the coordinator may be gone already: nothing more to tell
    pass


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


def barrier(name: str, timeout: float | None = None) -> None:
  """Blocks until every process reaches the barrier `name` (nothing with one process).

  Every process must call the same barriers in the same order. A key-value barrier of the
  coordination service, polled, not an XLA collective: a deadline (`Timeouts.barrier`,
  or `timeout` s) and a peer's failure (`report_failure`) each end the wait with one line.
  Raises:
    DistributedError: a peer failed, the deadline passed (naming the processes that did
      not arrive), or the processes are at different barriers.
  """
  if process_count() <= 1:
    return
  client, me, n = _client(), process_index(), process_count()
  _calls["barrier"] += 1
  prefix = f"{_KEY}/barrier/{_calls['barrier']}"
  limit = _timeouts.barrier if timeout is None else timeout
  client.key_value_set(f"{prefix}/{me}", name)
  start, pause = time.monotonic(), 0.05
  while True:
    _raise_peer_failure(client, me)
    arrived = {int(k.rsplit("/", 1)[1]): v for k, v in client.key_value_dir_get(f"{prefix}/")}
    if len(arrived) == n:
      break
    waited = time.monotonic() - start
    if waited > limit:
      missing = sorted(set(range(n)) - set(arrived))
      raise DistributedError(
          f"process {me}: waited {waited:.0f} s at barrier '{name}' for process(es) "
          f"{_ids(missing)} (stopped, killed or too slow; --barrier_timeout={limit:g} s); "
          f"rerun the same command: finished work items are kept", abandon=True)
    time.sleep(pause)
    pause = min(pause * 1.5, 1.0)
  names = set(arrived.values())
  if len(names) > 1:
    raise DistributedError(f"processes reached different barriers: "
                           f"{'; '.join(f'process {p}: {v}' for p, v in sorted(arrived.items()))}")


def check_wait(since: float, what: str) -> None:
  """For a stage that polls for files other processes write (nothing with one process).

  Call it in the polling loop; `since` is `time.monotonic()` when the wait began.
  Raises:
    DistributedError: a peer failed (`report_failure`), or the wait has lasted longer
      than `Timeouts.barrier` (`what` names what is awaited, e.g. "process 1's chunk 2").
  """
  if process_count() <= 1:
    return
  me = process_index()
  _raise_peer_failure(_client(), me)
  waited = time.monotonic() - since
  if waited > _timeouts.barrier:
    raise DistributedError(
        f"process {me}: waited {waited:.0f} s for {what} (stopped, killed or too slow; "
        f"--barrier_timeout={_timeouts.barrier} s); rerun the same command: finished work "
        f"items are kept", abandon=True)


def _raise_peer_failure(client, me: int) -> None:
  for key, msg in client.key_value_dir_get(f"{_KEY}/error/"):
    p = int(key.rsplit("/", 1)[1])
    if p != me:
      raise DistributedError(f"process {me} stops: process {p} failed: {msg}")


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


def one_call_at_a_time(devices: Any) -> bool:
  """Whether calls sharded over `devices` (a mesh, or an iterable of devices) must be waited
  for before the next is sent.

  True for several CPU devices: XLA:CPU runs a sharded call's collectives (the all-gathers
  GSPMD inserts) on the devices' threads, and with several such calls in flight they can
  wait on each other until the 40 s rendezvous deadline aborts the process (SIGABRT;
  README, "Multi-process runs"). Accelerators queue each device's calls in order.
  """
  devices = list(devices.devices.flat) if isinstance(devices, Mesh) else list(devices)
  return len(devices) > 1 and all(d.platform == "cpu" for d in devices)


def finish_each(mesh: Mesh) -> Any:
  """x -> x for a caller that sends calls sharded over `mesh` one after another:
  `jax.block_until_ready` where `one_call_at_a_time(mesh)`, else the identity (the calls
  stay in flight together)."""
  return jax.block_until_ready if one_call_at_a_time(mesh) else (lambda x: x)


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

