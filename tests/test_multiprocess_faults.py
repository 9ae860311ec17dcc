"""Processes that disagree or lose each other stop with one line, in every process, within
the configured deadline (README, "Multi-process runs"): different configs, duplicate
process ids, a lone process, a port in use, an address without a port, a peer killed
mid-stage (then resumed); and a 2-process run passes on a machine loaded by busy loops.

Processes of lis_jax.main on 127.0.0.1 only (gloo), configs/tiny.py; short deadlines.
"""
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

from test_multiprocess import PORT_TRIES, jax_cache, popen_logged, read_logs

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Deadlines given to the runs (flags); the bar: every process ends within 60 s
# plus the configured deadline (start-up of a process under load is most of the 60 s).
# CONNECT_TIMEOUT where no peer is expected to answer (the test waits for it);
# START_TIMEOUT where all must start (the 4-process test took 17 s in all at load 5-8).
CONNECT_TIMEOUT = 5
START_TIMEOUT = 60
BARRIER_TIMEOUT = 20
BAR_SECONDS = 60


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(cache: pathlib.Path | None = None, kill_after: str | None = None) -> dict:
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  env.pop("LIS_JAX_TEST_KILL_AFTER", None)
  if cache is not None:
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  if kill_after:
    env["LIS_JAX_TEST_KILL_AFTER"] = kill_after
  return env


def launch(workdir, per_process: list[list[str]], port: int, n: int = 2, cache=None,
           kill_after: dict | None = None, common=("--config.stages=paired_data",),
           connect_timeout: int = CONNECT_TIMEOUT, barrier_timeout: int = BARRIER_TIMEOUT):
  """One lis_jax.main per entry of `per_process` (its own flags, e.g. --process_id)."""
  procs = []
  for i, own in enumerate(per_process):
    cmd = [sys.executable, "-m", "lis_jax.main", "--config=configs/tiny.py",
           f"--workdir={workdir}", f"--coordinator_address=127.0.0.1:{port}",
           f"--num_processes={n}", f"--connect_timeout={connect_timeout}",
           f"--barrier_timeout={barrier_timeout}", *common, *own]
    procs.append(popen_logged(cmd, _env(cache, (kill_after or {}).get(i))))
  return procs


def finish(procs, timeout: float) -> list[tuple[int, str, float]]:
  """(return code, stderr, seconds to exit) of each process; kills all after `timeout`."""
  start, ends = time.monotonic(), {}
  while len(ends) < len(procs) and time.monotonic() - start < timeout:
    for i, p in enumerate(procs):
      if i not in ends and p.poll() is not None:
        ends[i] = time.monotonic() - start
    time.sleep(0.2)
  for p in procs:
    if p.poll() is None:
      p.kill()
  for p in procs:
    p.wait()
  return [(p.returncode, read_logs(p)[1], ends.get(i, float("inf"))) for i, p in enumerate(procs)]


def _one_error_line(err: str) -> str:
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
  return lines[0]


def _all_stop_with_one_line(outs, deadline: float) -> list[str]:
  lines = []
  for pid, (rc, err, seconds) in enumerate(outs):
    assert rc == 1, (pid, rc, err[-3000:])
    assert seconds < BAR_SECONDS + deadline, (pid, seconds)
    lines.append(_one_error_line(err))
  return lines


def test_processes_that_disagree_all_stop_before_any_work(tmp_path):
  """4 processes, 3 of them each with one difference of the issue: seed, n_per_class, stages."""
  work = tmp_path / "work"
  own = [[], ["--config.seed=7"], ["--config.paired_data.n_per_class=40"],
         ["--config.stages=paired_data"]]
  outs = finish(launch(work, [[f"--process_id={i}", *o] for i, o in enumerate(own)], _free_port(),
                       n=4, common=(), connect_timeout=START_TIMEOUT),
                BAR_SECONDS + BARRIER_TIMEOUT + 60)
  lines = _all_stop_with_one_line(outs, BARRIER_TIMEOUT)
  assert len(set(lines)) == 1, lines   # every process names the same fields and processes
  assert "differs across processes" in lines[0], lines[0]
  for shown in ("config.seed (processes 0, 2, 3: 0; process 1: 7)",
                "config.paired_data.n_per_class (processes 0, 1, 3: 48; process 2: 40)",
                'config.stages (processes 0, 1, 2: ["paired_data","link","sweep","counterfactual"]; '
                'process 3: ["paired_data"])'):
    assert shown in lines[0], (shown, lines[0])
  assert not work.exists()   # nothing written, nothing merged


def test_duplicate_process_ids_stop_both(tmp_path):
  work = tmp_path / "work"
  outs = finish(launch(work, [["--process_id=0"], ["--process_id=0"]], _free_port()),
                BAR_SECONDS + CONNECT_TIMEOUT + 60)
  lines = sorted(_all_stop_with_one_line(outs, CONNECT_TIMEOUT))
  # One process 0 gets the port; the other is told it is taken (maybe by a second process 0);
  # the first waits for process 1 until its deadline.
  assert "is in use" in lines[0] and "--process_id=0" in lines[0], lines
  assert "process(es) 1 did not join" in lines[1] and "same --process_id" in lines[1], lines
  assert not work.exists()


def test_lone_process_stops_at_its_deadline(tmp_path):
  work = tmp_path / "work"
  [(rc, err, seconds)] = finish(launch(work, [["--process_id=0"]], _free_port()),
                                BAR_SECONDS + CONNECT_TIMEOUT + 60)
  assert rc == 1 and CONNECT_TIMEOUT <= seconds < BAR_SECONDS + CONNECT_TIMEOUT, (rc, seconds, err)
  line = _one_error_line(err)
  assert f"process(es) 1 did not join within --connect_timeout={CONNECT_TIMEOUT} s" in line, line
  assert not work.exists()


def test_port_in_use_stops_every_process(tmp_path):
  work = tmp_path / "work"
  with socket.socket() as blocker:   # another program's listening socket, never answering
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(4)
    port = blocker.getsockname()[1]
    outs = finish(launch(work, [["--process_id=0"], ["--process_id=1"]], port),
                  BAR_SECONDS + CONNECT_TIMEOUT + 60)
  lines = _all_stop_with_one_line(outs, CONNECT_TIMEOUT)
  assert f"coordinator port {port} is in use" in lines[0], lines
  assert f"process 1: no answer from process 0 at 127.0.0.1:{port}" in lines[1], lines
  assert not work.exists()


def test_address_without_port_is_one_line(tmp_path):
  out = subprocess.run([sys.executable, "-m", "lis_jax.main", "--config=configs/tiny.py",
                        f"--workdir={tmp_path / 'work'}", "--coordinator_address=127.0.0.1",
                        "--num_processes=2", "--process_id=1"], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=BAR_SECONDS)
  assert out.returncode == 1
  assert "coordinator address '127.0.0.1' is not host:port" in _one_error_line(out.stderr)


# ----------------------------------------------------------------------------- a lost peer, load

# Busy loops per core of the load generator (the "2 busy-loop processes per core").
LOAD_PER_CORE = 2
# The load generator stops by itself after this long, whatever happens to the test; also
# the rerun's barrier deadline (a process's share under this load took over 20 s).
LOAD_SECONDS = 600


def _busy_loops(n: int, seconds: float) -> list[subprocess.Popen]:
  code = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass\n"
  return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]


# Where process 1 is killed (`errors.maybe_interrupt`: sweep counts block index + 1, and
# block 1 is process 1's first),
# the stages run, and the stage's directory and item files. sweep: its items are blocks,
# and the survivor then waits at the barrier after the stage's run.
KILL_AT, STAGES, ITEMS = "sweep:2", "paired_data,link,sweep", ("sweep", "block_*.npz")
# The deadline of the run whose process 1 is killed: process 0 waits it out at the sweep's
# barrier. Process 1 must reach its kill point (its first block) before then, so the deadline
# also bounds how far it may lag behind process 0: more than 20 s (BARRIER_TIMEOUT) at load
# 10 (2 busy loops and other jobs on 2 cores, 7 Dec: process 0 stopped at the deadline while
# process 1 was still working, and then aborted). 45 s leaves twice that.
LOST_PEER_BARRIER = 45


def _items(work: pathlib.Path) -> dict[str, bytes]:
  return {p.name: p.read_bytes() for p in (work / ITEMS[0]).glob(ITEMS[1])}


def _port_taken(outs) -> bool:
  """Did a run stop at start-up because its port, picked free, was taken meanwhile?"""
  return any(rc != 0 and "is in use on this host" in err for rc, err, _ in outs)


def test_lost_peer_stops_the_survivor_then_a_rerun_under_load_resumes(tmp_path, tmp_path_factory):
  """Process 1 is killed mid-stage: process 0 ends at the stage's barrier with one line
  within --barrier_timeout, nothing merged. The same command then finishes the run, with
  the finished items kept, while busy loops load every core (2 per core)."""
  work, cache = tmp_path / "work", jax_cache(tmp_path_factory)
  common = (f"--config.stages={STAGES}",)
  for _ in range(PORT_TRIES):
    procs = launch(work, [["--process_id=0"], ["--process_id=1"]], _free_port(), cache=cache,
                   kill_after={1: KILL_AT}, connect_timeout=START_TIMEOUT, common=common,
                   barrier_timeout=LOST_PEER_BARRIER)
    outs = finish(procs, 900)
    if not _port_taken(outs):
      break
  assert outs[1][0] == -9, _why(outs)   # SIGKILLed after its first item
  rc, err, _ = outs[0]
  assert rc == 1, _why(outs)
  line = _the_error_line(err)
  stage = KILL_AT.split(":")[0]
  assert ("waited" in line and f"barrier '{stage}:run'" in line and "process(es) 1" in line
          and f"--barrier_timeout={LOST_PEER_BARRIER} s" in line), line
  before = _items(work)
  assert before and not (work / stage / "index.csv").exists(), sorted(before)   # not merged

  load = _busy_loops(LOAD_PER_CORE * os.cpu_count(), LOAD_SECONDS)
  try:
    for _ in range(PORT_TRIES):
      procs = launch(work, [["--process_id=0"], ["--process_id=1"]], _free_port(), cache=cache,
                     common=common, connect_timeout=START_TIMEOUT, barrier_timeout=LOAD_SECONDS)
      outs = finish(procs, LOAD_SECONDS)
      if not _port_taken(outs):
        break
  finally:
    for p in load:
      p.kill()
      p.wait()
  assert all(rc == 0 for rc, _, _ in outs), _why(outs)
  after = _items(work)
  assert (work / stage / "index.csv").exists()
  assert set(before) < set(after) and all(after[k] == v for k, v in before.items())   # resumed


# Lines of a process's stderr that say why it stopped: its error line, XLA's and the
# runtime's fatal messages (a rendezvous or heartbeat deadline), Python's fatal-signal dump.
_WHY = ("error", "rendezvous", "fatal", "check fail", "terminat", "timeout", "deadline")


def _why(outs) -> str:
  """Each process's exit code and the lines of its stderr that say why it stopped (a
  failure message: the tail of stderr alone is mostly the list of extension modules)."""
  parts = []
  for pid, (rc, err, _) in enumerate(outs):
    lines = [l for l in err.replace("\r", "\n").splitlines() if any(w in l.lower() for w in _WHY)]
    parts.append(f"process {pid}: exit code {rc}\n" + "\n".join(l[:300] for l in lines[:20]))
  return "\n".join(parts)


def _the_error_line(err: str) -> str:
  """The one error line of a run's stderr, which also holds progress bars and per-process
  lines; no traceback and no abort of the runtime."""
  lines = [l for l in err.replace("\r", "\n").splitlines() if l.startswith("error: ")]
  assert len(lines) == 1 and "Traceback" not in err and "Check failure" not in err, err[-3000:]
  return lines[0]
