"""Shared test settings: where the reference fixtures live, and one compilation cache per session.

The suite compiles the same XLA programs many times: the same tiny models and stages in many
tests, and in the `python -m lis_jax.main` subprocesses that tests start. JAX's persistent
compilation cache turns each repeat into a load. The cache lives in a fresh temporary folder made
when the session starts (so a fresh clone starts with it empty) and removed when it ends; it is
set in this process and, through the environment, in every subprocess a test starts (a test that
passes its own JAX_COMPILATION_CACHE_DIR keeps it). Nothing outside the pytest session sees it.
A cached program is the compiled program itself, so results are bit-identical with or without it
(LIS_JAX_TEST_NO_COMPILE_CACHE=1 runs the suite without it, to check).

Most of the suite's CPU time is XLA compiling small programs that then run for milliseconds, so
the session (and, through the environment, every subprocess a test starts) compiles with JAX's
`jax_disable_most_optimizations` (LLVM optimization level 0, no expensive LLVM passes; XLA's HLO
passes, fusion included, still run). The programs compute the same functions; float results may
differ from the optimized build's in the last bits (e.g. no fused multiply-add), well inside every
tolerance of the suite, which holds for other CPUs' kernels too. Measured on tests/test_invert.py,
test_stylegan_xl.py, test_flows.py, test_classifiers.py (100 tests, one process, load 6-8): 279 CPU s
optimized, 228 CPU s not (-18%). LIS_JAX_TEST_OPTIMIZED=1 runs the suite with the optimized build.
Production runs never see this setting (it lives in the pytest session only).

The exception: files whose tests only start subprocesses that run long (the multi-process runs,
the device benchmark's smoke run) give those subprocesses the optimized build (`OPTIMIZED_FILES`),
because there the unoptimized programs' slower execution costs more than their compilation
saves. Measured per file in one process, `python -m pytest -q -p no:xdist tests/FILE` with and
without LIS_JAX_TEST_OPTIMIZED=1, CPU s (user + sys, load 4-13, 6 Dec):
test_multiprocess.py 248 unoptimized vs 213 optimized; benchmarks/device_check.py --small
(test_device_check.py's one command then; --smoke since, the same parts at their fewest) 177 vs 76. The other way: test_invert.py 105 vs 135,
test_label_pipeline.py 66 vs 75, test_quantify_segment.py 56 vs 63 (those stay unoptimized).
Only subprocesses: the in-process setting is one per worker, because JAX keeps a compiled
program for the process's life whatever the flag says later.
"""
import os
import pathlib
import shutil
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# ../shared/fixtures beside the project root (CI clones with shared/ beside it).
FIXTURES = ROOT.parent / "shared" / "fixtures"

NO_CACHE_ENV = "LIS_JAX_TEST_NO_COMPILE_CACHE"
OPTIMIZED_ENV = "LIS_JAX_TEST_OPTIMIZED"
_FAST_COMPILE_ENV = "JAX_DISABLE_MOST_OPTIMIZATIONS"   # jax.config's jax_disable_most_optimizations
_SESSION_ENV = "LIS_JAX_TEST_SESSION_CACHE"   # the controller's folder, for pytest-xdist workers
_CACHE_ENV = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
              "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", _SESSION_ENV, _FAST_COMPILE_ENV)
_session_cache = {}


def pytest_configure(config):
  """Before any test module imports JAX: the session's cache, here and for subprocesses.

  Under pytest-xdist each worker has its own folder inside the controller's (JAX writes a
  cache entry in place, so two processes compiling the same program at once should not
  share one): its tests and their subprocesses share it.
  """
  _session_cache["saved"] = {k: os.environ.get(k) for k in _CACHE_ENV}
  if os.environ.get(OPTIMIZED_ENV) != "1":
    os.environ[_FAST_COMPILE_ENV] = "1"   # before JAX is imported here or in a subprocess
    import jax  # noqa: PLC0415
    jax.config.update("jax_disable_most_optimizations", True)
  if os.environ.get(NO_CACHE_ENV) == "1":
    return
  worker_of = os.environ.get(_SESSION_ENV) if hasattr(config, "workerinput") else None
  cache = tempfile.mkdtemp(prefix="lis_jax_test_jax_cache_", dir=worker_of)
  _session_cache["dir"] = cache
  # Every compilation is cached (by default JAX caches only those over 1 s).
  os.environ.update({"JAX_COMPILATION_CACHE_DIR": cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                     "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"})
  if worker_of is None:
    os.environ[_SESSION_ENV] = cache
  import jax  # noqa: PLC0415  (after the environment: JAX reads it at import)
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
  """The cache goes with the session; the environment is as it was."""
  if "saved" not in _session_cache:
    return
  for k, v in _session_cache["saved"].items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v
  _session_cache.pop("saved")
  if "dir" in _session_cache:
    shutil.rmtree(_session_cache.pop("dir"), ignore_errors=True)


# The longest test files (minutes of the suite alone), longest first. Under pytest-xdist
# (scripts/test.sh: `-n 2 --dist loadfile`) whole files go to the workers in collection order,
# the first ones dealt in turn, so these start first and no long file is left to run alone at
# the end. The two multi-process files alternate with others, so they land on one worker and
# never run at the same time.
SLOW_FIRST = ("test_multiprocess_faults.py", "test_demo.py", "test_multiprocess.py", "test_label_pipeline.py",
              "test_reliability.py", "test_pipeline_e2e.py", "test_device_check.py", "test_quantify_segment.py",
              "test_classifiers.py", "test_train_shapes_classifier.py", "test_label_roundtrip.py")


# Files whose subprocesses compile with the optimized build (see the module docstring).
OPTIMIZED_FILES = ("test_multiprocess.py", "test_multiprocess_faults.py", "test_device_check.py")


@pytest.fixture(scope="module", autouse=True)
def _optimized_subprocesses(request):
  """Subprocesses started by an OPTIMIZED_FILES file compile optimized (before its fixtures)."""
  if request.path.name not in OPTIMIZED_FILES or os.environ.get(_FAST_COMPILE_ENV) != "1":
    yield
    return
  os.environ[_FAST_COMPILE_ENV] = "0"
  try:
    yield
  finally:
    os.environ[_FAST_COMPILE_ENV] = "1"


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
  """pytest-xdist's controller: deal the files in SLOW_FIRST's order. By default (its
  --loadscope-reorder) it deals files with the most tests first, which left the few-test
  multi-process files and test_label_pipeline.py to the end of the suite (seen in a full run:
  test_multiprocess.py's fixture and test_label_pipeline.py ran last, on one worker)."""
  if not hasattr(session.config, "workerinput") and hasattr(session.config.option, "loadscopereorder"):
    session.config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
  """Under pytest-xdist: SLOW_FIRST's files first (a stable sort: each file keeps its order)."""
  if hasattr(config, "workerinput"):
    rank = {name: k for k, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
  assert FIXTURES.is_dir(), f"reference fixtures not found at {FIXTURES}"
  return FIXTURES
