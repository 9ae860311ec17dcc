"""On-disk I/O shared by converters and pipeline stages.

Everything that writes goes through a temporary path and a rename, so a crash or a
bad input never leaves a half-written file where a good one was (or was expected).

Checkpoint layout (a directory):
  DIR/params/     Orbax PyTree checkpoint of the params pytree (numpy leaves)
  DIR/meta.json   small JSON of metadata (architecture, source sha256, ...) and
                  `params_sha256`, the sha256 of the params' content (`tree_sha256`)

Integrity (issue 11): `save_npz` / `load_npz` embed and verify a sha256 of an .npz's
arrays (and reject NaN/inf where asked); `params_sha256(ckpt_dir)` is a checkpoint's
content hash, cached in its meta.json; `workdir_lock` is the advisory lock a pipeline
run holds on its workdir; `create_json` writes a JSON file only if none exists.
Problems with a file are `CorruptFileError` (one line: the file and what to do).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import socket
import tempfile
import time
import zipfile
from typing import Any, Iterator, Mapping, Sequence

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


class CorruptFileError(ValueError):
  """A file is truncated, unreadable, fails its checksum or holds NaN/inf where it must not.

  `path` names the file; the message is one line saying what is wrong.
  """

  def __init__(self, path: str, problem: str):
    super().__init__(f"{path}: {problem}")
    self.path = path
    self.problem = problem


class WorkdirBusy(RuntimeError):
  """Another process holds the workdir's lock (`workdir_lock`)."""


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
    try:
      with _checkpointer() as ckptr:
        ckptr.save(os.path.join(tmp, PARAMS_DIR), params)
    except Exception as e:  # Orbax/TensorStore report a full disk as RESOURCE_EXHAUSTED.
      if "RESOURCE_EXHAUSTED" in str(e) or "No space left" in str(e):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), out_dir) from None
      raise
    # Identity and integrity of the content (verify_checkpoint, params_sha256).
    write_json(os.path.join(tmp, META_FILE), {**dict(meta), "params_sha256": tree_sha256(params)})


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


def load_checkpoint(ckpt_dir: str, expected: Any | None = None,
                    verify: bool = False) -> tuple[Any, dict]:
  """Restores `(params, meta)` from a checkpoint dir written by `save_checkpoint`.

  Args:
    ckpt_dir: directory holding `params/` and `meta.json`.
    expected: optional pytree (arrays or jax.ShapeDtypeStruct) of the structure the
      model expects; if given, the restored tree must match it key for key and shape
      for shape, otherwise CheckpointError lists the differences. None: no check.
    verify: check the restored params against meta.json's `params_sha256`
      (CorruptFileError on a mismatch).
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
  if verify:
    verify_checkpoint(ckpt_dir, params, meta)
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


# ----------------------------------------------------------------------------- integrity

# Key of the checksum member inside an .npz written by `save_npz`.
NPZ_CHECKSUM_KEY = "__sha256__"


def tree_sha256(tree: Any) -> str:
  """sha256 of a pytree's content: every leaf's path, dtype, shape and bytes, in path order.

  Equal for equal weights however they were saved (Orbax file names are random), so it
  identifies a model by what it computes with, not by where it is stored.
  """
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  h = hashlib.sha256()
  for path, leaf in sorted(((_path_str(p), v) for p, v in flat), key=lambda kv: kv[0]):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{path}|{a.dtype.str}|{a.shape}\n".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def arrays_sha256(arrays: Mapping[str, Any]) -> str:
  """sha256 of named arrays (the checksum `save_npz` embeds)."""
  return tree_sha256({k: np.asarray(v) for k, v in arrays.items()})


def save_npz(path: str, **arrays: Any) -> None:
  """Atomically writes an .npz with a sha256 of its arrays embedded (`load_npz` checks it)."""
  if NPZ_CHECKSUM_KEY in arrays:
    raise ValueError(f"{NPZ_CHECKSUM_KEY} is reserved")
  arrays = {k: np.asarray(v) for k, v in arrays.items()}
  savez(path, **arrays, **{NPZ_CHECKSUM_KEY: np.asarray(arrays_sha256(arrays))})


def load_npz(path: str, finite: bool | Sequence[str] = True,
             keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
  """Reads an .npz written by `save_npz`, verifying its checksum and finiteness.

  Args:
    path: the file.
    finite: True: every floating array must be free of NaN/inf; a sequence: only those
      keys; False: no check.
    keys: the keys that must be present (others are returned too); None: no check.
  Returns:
    {key: array}, without the checksum member.
  Raises:
    CorruptFileError: the file is missing, truncated, not an npz, lacks a key, fails its
      checksum (or has none) or holds NaN/inf where `finite` forbids it.
  """
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except FileNotFoundError:
    raise CorruptFileError(path, "missing") from None
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
    raise CorruptFileError(path, f"unreadable or truncated ({type(e).__name__}: "
                                 f"{_one_line(e)})") from None
  stored = arrays.pop(NPZ_CHECKSUM_KEY, None)
  if stored is None:
    raise CorruptFileError(path, "has no checksum (not written by this version of lis_jax)")
  if str(stored) != arrays_sha256(arrays):
    raise CorruptFileError(path, "checksum mismatch (the file changed after it was written)")
  missing = [k for k in (keys or ()) if k not in arrays]
  if missing:
    raise CorruptFileError(path, f"lacks the array(s) {missing}")
  check = [k for k in arrays if np.issubdtype(arrays[k].dtype, np.floating)] if finite is True \
      else list(finite or ())
  for k in check:
    if k in arrays and not np.all(np.isfinite(arrays[k])):
      n = int(arrays[k].size - np.count_nonzero(np.isfinite(arrays[k])))
      raise CorruptFileError(path, f"'{k}' holds {n} NaN/inf value(s)")
  return arrays


def npz_ok(path: str, finite: bool | Sequence[str] = True) -> bool:
  """True if `path` exists and passes `load_npz`'s checks."""
  try:
    load_npz(path, finite=finite)
    return True
  except CorruptFileError:
    return False


def read_json_checked(path: str, what: str = "") -> Any:
  """`read_json` with one-line errors: CorruptFileError if missing, empty or not JSON."""
  try:
    with open(path) as f:
      text = f.read()
  except FileNotFoundError:
    raise CorruptFileError(path, "missing") from None
  except UnicodeDecodeError:
    raise CorruptFileError(path, f"not a text file{what}") from None
  if not text.strip():
    raise CorruptFileError(path, f"empty{what}")
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise CorruptFileError(path, f"invalid JSON ({e}){what}") from None


def create_json(path: str, obj: Any) -> bool:
  """Writes `obj` to `path` only if `path` does not exist; atomic and race-free.

  The content is written to a temp file, then hard-linked to `path` (fails if it
  exists), so a reader sees no file or the whole file. Returns whether it was created.
  """
  path = os.path.abspath(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.new-", dir=os.path.dirname(path))
  os.close(fd)   # unique per call (threads share a pid)
  write_json(tmp, obj)
  try:
    os.link(tmp, path)
    return True
  except FileExistsError:
    return False
  finally:
    os.remove(tmp)


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).split())[:300]


# ----------------------------------------------------------------------------- checkpoint content


def _params_stat(pdir: str) -> list:
  """Names, sizes and mtimes of a params dir's files: changes when any file is replaced."""
  out = []
  for root, _, files in os.walk(pdir):
    for name in sorted(files):
      p = os.path.join(root, name)
      st = os.stat(p)
      out.append([os.path.relpath(p, pdir), st.st_size, st.st_mtime_ns])
  return sorted(out)


def params_sha256(ckpt_dir: str) -> str:
  """The sha256 of a checkpoint's params content (`tree_sha256`), cached in its meta.json.

  The cache holds the params files' names, sizes and mtimes; if any differ (the
  checkpoint was replaced or edited) the hash is recomputed from the restored params
  and the cache rewritten (skipped silently when the directory is read-only).
  """
  meta = load_meta(ckpt_dir)
  pdir = os.path.join(os.path.abspath(ckpt_dir), PARAMS_DIR)
  stat = _params_stat(pdir) if os.path.isdir(pdir) else None
  cached = meta.get("params_sha256_cache") or {}
  if stat is not None and cached.get("stat") == stat and meta.get("params_sha256"):
    return meta["params_sha256"]
  params, _ = load_checkpoint(ckpt_dir)
  digest = tree_sha256(params)
  stored = meta.get("params_sha256")
  if stored and stored != digest:  # params/ replaced or damaged under an unchanged meta.json
    raise CorruptFileError(pdir, f"params checksum mismatch (meta.json says {stored[:12]}..., "
                                 f"the files hold {digest[:12]}...): re-create this checkpoint")
  meta.update(params_sha256=digest, params_sha256_cache={"stat": stat})
  with contextlib.suppress(OSError):
    write_json(os.path.join(ckpt_dir, META_FILE), meta)
  return digest


def verify_checkpoint(ckpt_dir: str, params: Any, meta: Mapping[str, Any]) -> None:
  """Raises CorruptFileError if restored `params` do not hash to meta['params_sha256']."""
  stored = meta.get("params_sha256")
  if stored is None:
    raise CorruptFileError(os.path.join(ckpt_dir, META_FILE), "has no params_sha256 "
                           "(not written by this version of lis_jax)")
  if tree_sha256(params) != stored:
    raise CorruptFileError(os.path.join(ckpt_dir, PARAMS_DIR),
                           "params checksum mismatch (the files changed after they were written)")


# ----------------------------------------------------------------------------- leftovers

# Names of the temp files and directories this module makes (`atomic_dir`, `atomic_file`,
# `create_json`): "." + the target's name + ".tmp-" / ".old-" / ".new-" + the 8 random
# characters tempfile adds ([a-z0-9_]). Nothing else is matched.
_LEFTOVER = re.compile(r"^\..+\.(tmp|old|new)-[a-z0-9_]{8}$")


def is_leftover(name: str) -> bool:
  """True for a temp file/directory name of an atomic write (`atomic_dir`, `atomic_file`,
  `create_json`)."""
  return bool(_LEFTOVER.match(name))


def remove_leftovers(root: str) -> list[str]:
  """Removes the temp files and directories that killed runs left under `root`.

  Call it only while holding `root`'s `workdir_lock` (no other writer can own a temp
  file then). Symbolic links are never followed or removed, and nothing but names of
  the atomic writes' temp files is touched (`is_leftover`).
  Returns:
    the removed paths, relative to `root`, sorted.
  """
  removed = []
  for d, dirs, files in os.walk(root):
    for name in [n for n in dirs if is_leftover(n)]:
      path = os.path.join(d, name)
      dirs.remove(name)   # not walked into
      if not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
        removed.append(os.path.relpath(path, root))
    for name in files:
      path = os.path.join(d, name)
      if is_leftover(name) and not os.path.islink(path):
        with contextlib.suppress(FileNotFoundError):
          os.remove(path)
          removed.append(os.path.relpath(path, root))
  return sorted(removed)


# ----------------------------------------------------------------------------- workdir lock

LOCK_FILE = ".lock"


def _holder(fd: int) -> dict:
  """The lock holder's record, waiting briefly for it to be written after the lock."""
  for _ in range(20):
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors="replace")
    with contextlib.suppress(ValueError):
      return json.loads(text)
    time.sleep(0.05)
  return {}


@contextlib.contextmanager
def workdir_lock(workdir: str) -> Iterator[None]:
  """Holds an exclusive advisory lock (flock) on `workdir/.lock` for the block's duration.

  The holder's pid, host and start time are written into the lock file. The lock is
  released by the kernel when the process exits however it exits (a SIGKILL leaves no
  stale lock); the file itself stays.

  Raises:
    WorkdirBusy: another process holds it (one line naming its pid and host).
  """
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise
      h = _holder(fd)
      raise WorkdirBusy(
          f"{workdir} is in use by another run (pid {h.get('pid', '?')} on host "
          f"{h.get('host', '?')}, started {h.get('started', '?')}); wait for it to finish "
          f"or use another --workdir") from None
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                         "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, record, 0)
    try:
      yield
    finally:
      os.ftruncate(fd, 0)
      fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)


# ----------------------------------------------------------------------------- OS errors

_OS_HINTS = {
    errno.ENOSPC: "free some space (or use a --workdir on another disk) and run again: "
                  "finished outputs are kept and the run resumes",
    errno.EDQUOT: "free some space within your quota and run again: the run resumes",
    errno.EACCES: "check the permissions of that path (or use another --workdir)",
    errno.EPERM: "check the permissions of that path (or use another --workdir)",
    errno.EROFS: "the file system is read-only: use another --workdir",
    errno.EEXIST: "a file is in the way of a directory: move it or use another --workdir",
    errno.ENOTDIR: "a file is in the way of a directory: move it or use another --workdir",
    errno.EISDIR: "a directory is in the way of a file: move it or use another --workdir",
}


def describe_os_error(e: OSError) -> str:
  """One line for an OSError: what failed, on which path, and what to do."""
  where = " -> ".join(str(p) for p in (e.filename, e.filename2) if p)
  what = e.strerror or _one_line(e) or type(e).__name__
  hint = _OS_HINTS.get(e.errno, "")
  return f"{where + ': ' if where else ''}{what}{'; ' + hint if hint else ''}"
