"""Where a converter may write: never over anything the user made.

A converter's `--out` must be absent, an empty directory, or an earlier output of the
same converter: a directory holding exactly `meta.json` (whose `kind` is the
converter's) and `params/`. Replacing an earlier output needs `--force`; anything else
is refused with one line and nothing is deleted, `--force` or not. The check runs before
the (possibly long) conversion, and the write itself is atomic (`io.save_checkpoint`:
temp dir + rename), with `overwrite` only when the check found an earlier output.
"""
from __future__ import annotations

import json
import os

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


def os_error_line(e: OSError) -> str:
  """One line for an OS error of a converter: what failed, on which path, what to do."""
  what = e.strerror or type(e).__name__
  where = f" ({e.filename})" if e.filename else ""
  hint = {28: "free some space or choose another --out",
          13: "choose an --out you can write to", 1: "choose an --out you can write to",
          30: "choose an --out on a writable file system",
          17: "choose a new --out"}.get(e.errno or 0, "")
  return f"{what}{where}" + (f"; {hint}" if hint else "")
