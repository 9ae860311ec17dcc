"""On-disk I/O shared by converters and pipeline stages.

Everything that writes goes through a temporary path and a rename, so a crash or a
bad input never leaves a half-written file where a good one was (or was expected).

Checkpoint layout (a directory):
  DIR/params/     Orbax PyTree checkpoint of the params pytree (numpy leaves)
  DIR/meta.json   small JSON of metadata (architecture, source sha256, ...)
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from typing import Any, Iterator, Mapping

import jax
import numpy as np

META_FILE = "meta.json"
PARAMS_DIR = "params"


def _umask() -> int:
  """The process umask, read without changing it where possible (os.umask is process-wide)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except OSError:
    pass
  mask = os.umask(0o022)  # No /proc (macOS): set-and-restore.
  os.umask(mask)
  return mask


class CheckpointError(ValueError):
  """A checkpoint is missing, unreadable or does not match the expected structure."""


# ----------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_dir(out_dir: str, overwrite: bool = True) -> Iterator[str]:
  """Yields a fresh temp directory beside `out_dir`; renames it to `out_dir` on success.

  On an exception the temp directory is removed and `out_dir` is left untouched.
  If `out_dir` exists and `overwrite` is True it is replaced only after the new
  content is complete; otherwise FileExistsError is raised before anything is written.
  """
  out_dir = os.path.abspath(out_dir)
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  if os.path.exists(out_dir) and not overwrite:
    raise FileExistsError(f"{out_dir} already exists")
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
  os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; outputs follow the user's umask.
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if os.path.exists(out_dir):
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=parent)
    os.rmdir(old)
    os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.rename(tmp, out_dir)


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "wb") -> Iterator[Any]:
  """Opens a temp file beside `path`; on success fsyncs and renames it onto `path`."""
  path = os.path.abspath(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=os.path.dirname(path))
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs follow the user's umask.
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def write_json(path: str, obj: Any) -> None:
  """Atomically writes `obj` as indented JSON."""
  with atomic_file(path, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def savez(path: str, **arrays: Any) -> None:
  """Atomically writes an .npz of numpy-convertible arrays."""
  buf = io.BytesIO()
  np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
  with atomic_file(path, "wb") as f:
    f.write(buf.getvalue())


def _json_default(o: Any) -> Any:
  if isinstance(o, (np.integer,)):
    return int(o)
  if isinstance(o, (np.floating,)):
    return float(o)
  if isinstance(o, np.ndarray):
    return o.tolist()
  raise TypeError(f"not JSON serialisable: {type(o)}")


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(chunk):
      h.update(block)
  return h.hexdigest()


# ----------------------------------------------------------------------------- checkpoints


def _checkpointer():
  """An Orbax PyTree checkpointer private to this process.

  lis_jax's checkpoints are small numpy trees written and read by one process at a
  time; in a multi-process run Orbax would otherwise make every process join each save
  and restore (barriers that the processes not saving never reach).
  """
  import orbax.checkpoint as ocp  # Local: orbax is slow to import.

  me = jax.process_index()
  options = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
  return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(multiprocessing_options=options),
                          multiprocessing_options=options)


def save_checkpoint(out_dir: str, params: Any, meta: Mapping[str, Any],
                    overwrite: bool = True) -> None:
  """Atomically writes `params` (an Orbax PyTree checkpoint) and `meta` (JSON) to `out_dir`.

  With `overwrite` False an existing `out_dir` raises FileExistsError before anything is
  written (see `atomic_dir`).
  """
  params = jax.tree_util.tree_map(np.asarray, params)
  with atomic_dir(out_dir, overwrite=overwrite) as tmp:
    with _checkpointer() as ckptr:
      ckptr.save(os.path.join(tmp, PARAMS_DIR), params)
    write_json(os.path.join(tmp, META_FILE), dict(meta))


def load_meta(ckpt_dir: str) -> dict:
  """Reads the metadata JSON of a checkpoint dir, with a clear error if it is absent."""
  path = os.path.join(ckpt_dir, META_FILE)
  if not os.path.isdir(ckpt_dir):
    raise CheckpointError(f"checkpoint directory not found: {ckpt_dir}")
  if not os.path.isfile(path):
    raise CheckpointError(f"{ckpt_dir} is not a lis_jax checkpoint (no {META_FILE})")
  try:
    return read_json(path)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path} is not valid JSON: {e}") from e


def load_checkpoint(ckpt_dir: str, expected: Any | None = None) -> tuple[Any, dict]:
  """Restores `(params, meta)` from a checkpoint dir written by `save_checkpoint`.

  Args:
    ckpt_dir: directory holding `params/` and `meta.json`.
    expected: optional pytree (arrays or jax.ShapeDtypeStruct) of the structure the
      model expects; if given, the restored tree must match it key for key and shape
      for shape, otherwise CheckpointError lists the differences. None: no check.
  Returns:
    params as a nested dict of numpy arrays, and the metadata dict.
  """
  meta = load_meta(ckpt_dir)
  pdir = os.path.join(os.path.abspath(ckpt_dir), PARAMS_DIR)
  if not os.path.isdir(pdir):
    raise CheckpointError(f"{ckpt_dir} has no {PARAMS_DIR}/ directory")
  try:
    with _checkpointer() as ckptr:
      params = ckptr.restore(pdir)
  except Exception as e:  # Orbax raises many types; one clear message is what users need.
    raise CheckpointError(f"cannot restore params from {pdir}: {type(e).__name__}: {e}") from e
  params = jax.tree_util.tree_map(np.asarray, params)
  if expected is not None:
    check_tree(params, expected, what=ckpt_dir)
  return params, meta


def tree_shapes(tree: Any) -> dict[str, tuple]:
  """Flattens a pytree to {'a/b/c': shape}."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_path_str(p): tuple(np.shape(v)) for p, v in flat}


def check_tree(got: Any, expected: Any, what: str = "params") -> None:
  """Raises CheckpointError with a readable diff if `got` and `expected` differ in keys or shapes."""
  g, e = tree_shapes(got), tree_shapes(expected)
  missing = sorted(set(e) - set(g))
  unexpected = sorted(set(g) - set(e))
  mismatched = sorted(k for k in set(g) & set(e) if g[k] != e[k])
  if not (missing or unexpected or mismatched):
    return
  lines = [f"{what}: structure does not match the model"]
  lines += [f"  missing:    {k} {e[k]}" for k in missing[:20]]
  lines += [f"  unexpected: {k} {g[k]}" for k in unexpected[:20]]
  lines += [f"  shape:      {k} got {g[k]} expected {e[k]}" for k in mismatched[:20]]
  n = len(missing) + len(unexpected) + len(mismatched)
  if n > 60:
    lines.append(f"  ... {n} differences in all")
  raise CheckpointError("\n".join(lines))


def _path_str(path) -> str:
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)
