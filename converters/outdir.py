"""Where a converter may write: never over anything the user made.

A converter's `--out` must be absent, an empty directory, or an earlier output of the
same converter: a directory holding exactly `meta.json` (whose `kind` is the
converter's) and `params/`. Replacing an earlier output needs `--force`; anything else
is refused with one line and nothing is deleted, `--force` or not. The check runs before
the (possibly long) conversion, and the write itself is atomic (`io.save_checkpoint`:
temp dir + rename), with `overwrite` only when the check found an earlier output.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time

from lis_jax import io

# What a converter writes into --out (io.save_checkpoint); nothing else may be there.
OUTPUT_ENTRIES = frozenset({io.META_FILE, io.PARAMS_DIR})


class OutDirError(ValueError):
  """--out names something the converter must not replace."""


def check_out(out: str, kind: str, force: bool) -> bool:
  """Checks that `out` may be written by the converter of checkpoint kind `kind`.

  Args:
    out: the --out path.
    kind: the `kind` this converter writes into meta.json ('stylegan_xl', 'torchvision').
    force: whether the user allowed replacing an earlier output of this converter.
  Returns:
    True if `out` holds something to replace (an earlier output, or an empty directory),
    False if it is absent.
  Raises:
    OutDirError: `out` is a file, a directory with other content, or an earlier output
      without `force`; the message is one line and says what to do.
  """
  if not os.path.lexists(out):
    return False
  if os.path.islink(out) or not os.path.isdir(out):
    raise OutDirError(f"--out {out} exists and is not a directory; choose a new path")
  entries = sorted(os.listdir(out))
  if not entries:
    return True
  meta = _read_meta(out)
  if set(entries) <= OUTPUT_ENTRIES and meta is not None and meta.get("kind") == kind:
    if not force:
      raise OutDirError(f"--out {out} already holds a converted checkpoint (from "
                        f"{meta.get('source', 'an earlier run')}); add --force to replace it")
    return True
  shown = ", ".join(entries[:5]) + (f", ... ({len(entries)} entries)" if len(entries) > 5 else "")
  why = (f"a {meta.get('kind')!r} checkpoint, not {kind!r}" if meta is not None and meta.get("kind") != kind
         else f"it holds {shown}, not only {' and '.join(sorted(OUTPUT_ENTRIES))} of an earlier output")
  raise OutDirError(f"--out {out} exists and is not an earlier output of this converter ({why}); "
                    f"nothing was changed: choose a new directory")


def _read_meta(out: str) -> dict | None:
  try:
    with open(os.path.join(out, io.META_FILE)) as f:
      meta = json.load(f)
  except (OSError, ValueError):
    return None
  return meta if isinstance(meta, dict) else None


class WriteError(ValueError):
  """Writing the checkpoint failed (no space, permission, ...); the message is one line."""


# errno -> what the user can do about it.
_HINTS = {28: "free some space or choose another --out", 13: "choose an --out you can write to",
          1: "choose an --out you can write to", 30: "choose an --out on a writable file system",
          17: "choose a new --out", 20: "choose an --out whose parents are directories"}


def write_checkpoint(out: str, variables, meta: dict, overwrite: bool) -> None:
  """io.save_checkpoint with every failure as one line (WriteError).

  Orbax / TensorStore report I/O failures as ValueError ('RESOURCE_EXHAUSTED: ... No
  space left on device [os_error_code=\'28\']'); OSErrors come from the temp dir and
  rename. Either way the temp dir is removed and `out` is as it was (io.atomic_dir).
  What the libraries print to stderr meanwhile (Orbax's writer threads log a failed
  write with tracebacks before save raises it) is shown only if the write succeeds.
  """
  parent, base = os.path.split(os.path.abspath(out))
  temps_before = set(_temp_dirs(parent, base))
  threads_before = set(threading.enumerate())
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  failure = None
  with _stderr_captured() as captured:
    absl_logger.setLevel(logging.CRITICAL)
    try:
      io.save_checkpoint(out, variables, meta, overwrite=overwrite)
    except Exception as e:  # Orbax wraps I/O errors in several types; see below.
      failure = e
      _settle(parent, base, temps_before, threads_before)
    finally:
      absl_logger.setLevel(level)
  if failure is None:
    sys.stderr.write(captured[0])
    return
  if isinstance(failure, OSError):
    raise WriteError(f"cannot write {out}: {os_error_line(failure)}") from None
  text = " ".join(str(failure).split())
  code = re.search(r"os_error_code='?(\d+)", text)
  if code:
    errno_ = int(code.group(1))
    raise WriteError(f"cannot write {out}: {os.strerror(errno_)}"
                     + (f"; {_HINTS[errno_]}" if errno_ in _HINTS else "")) from None
  raise WriteError(f"cannot write {out}: {type(failure).__name__}: {text[:300]}") from None


@contextlib.contextmanager
def _stderr_captured():
  """Sends file descriptor 2 to a temp file; yields a list that holds, after the block,
  the text written there."""
  sys.stderr.flush()
  saved = os.dup(2)
  text = []
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield text
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      text.append(captured.read().decode(errors="replace"))


# How long to wait, after a failed write, for Orbax's writer threads (they may still
# create files in the temp dir after save has raised, as seen on a full tmpfs).
SETTLE_SECONDS = 10.0


def _settle(parent: str, base: str, temps_before: set[str], threads_before: set) -> None:
  """After a failed write: waits for the threads the write started, then removes the
  temp dirs it left (until none reappears for 0.5 s)."""
  deadline = time.monotonic() + SETTLE_SECONDS
  for thread in set(threading.enumerate()) - threads_before:
    thread.join(max(0.0, deadline - time.monotonic()))
  quiet = 0  # TensorStore's own threads may recreate the temp dir after save raised
  while quiet < 5 and time.monotonic() < deadline:
    left = [n for n in _temp_dirs(parent, base) if n not in temps_before]
    for name in left:
      shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    quiet = 0 if left else quiet + 1
    time.sleep(0.1)


def _temp_dirs(parent: str, base: str) -> list[str]:
  """The temp dirs io.atomic_dir makes beside `parent/base`."""
  try:
    return [n for n in os.listdir(parent) if n.startswith(f".{base}.tmp-")]
  except OSError:
    return []


def exit_quietly(code: int) -> None:
  """Exits a converter's command line with `code`. After a failure the error line is
  already printed; late reports of library threads (Orbax's writers after a failed
  write print 'Event loop is closed' tracebacks at shutdown) are not shown."""
  sys.stdout.flush()
  sys.stderr.flush()
  if code:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
  sys.exit(code)


def os_error_line(e: OSError) -> str:
  """One line for an OS error: what failed, on which path, what to do."""
  errno_ = e.errno or (17 if isinstance(e, FileExistsError) else 0)
  what = e.strerror or " ".join(str(e).split()) or type(e).__name__
  where = f" ({e.filename})" if e.filename else ""
  return f"{what}{where}" + (f"; {_HINTS[errno_]}" if errno_ in _HINTS else "")
