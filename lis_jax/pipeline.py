"""The stage registry and runner: `config.stages` run in order over one workdir.

A stage is a function `run(config, workdir) -> None` named in `STAGES` as
"module:function". It reads what earlier stages wrote under `workdir` and writes its
own outputs there atomically (see WORKSPACE.md for the layout), so a killed stage can
be run again and resumes where it stopped. To add a stage, add ONE entry to `STAGES`
(re-read this file right before editing; others edit it too).

Errors a user can fix (bad config, bad input, incompatible workdir) are raised as
`PipelineError` (or `io.CheckpointError` for checkpoints); `lis_jax.main` prints them
as one line and exits 1.
"""
from __future__ import annotations

import importlib
import json
import os
import time
from typing import Any, Callable, Mapping, Sequence

import ml_collections
import numpy as np

from lis_jax import io

# Stage name -> "module:function(config, workdir) -> None".
STAGES: dict[str, str] = {
    "paired_data": "lis_jax.paired_data:run",
    "fit_link": "lis_jax.linking:run",
    "sweep": "lis_jax.sweeps:run",
    "counterfactual": "lis_jax.counterfactuals:run",
    "quantify": "lis_jax.quantify.stage:run",  # part segmentation, metrics, unit selectivity
    "report": "lis_jax.report:run",  # HTML page of the results (lis_jax/report.py)
}

# Each stage records the config it ran with here (inside its own output directory).
STAGE_CONFIG_FILE = "config.json"

# ImageNet class groups of the paper (DESIGN.md); `config.classes` may name one.
CLASS_GROUPS: dict[str, tuple[int, ...]] = {
    "dogs": (232, 254, 151, 197, 178),
    "fungi": (992, 993, 994, 997),
    "birds": (10, 12, 14, 92, 95, 96),
    "cars": (468, 609, 627, 717, 779, 817),
}


class PipelineError(ValueError):
  """A problem the user can fix: bad config, bad input, incompatible workdir, NaNs."""


def resolve(spec: str) -> Callable[..., Any]:
  """Imports "module:function" and returns the function."""
  module, fn = spec.split(":")
  return getattr(importlib.import_module(module), fn)


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Runs `config.stages` in order on `workdir`.

  Args:
    config: the full pipeline config (see configs/linear.py for its fields).
    workdir: directory holding checkpoints and every stage's outputs; created if absent.
  Raises:
    PipelineError: an unknown stage name (checked before anything runs), or any
      user-fixable problem a stage reports.
  """
  stages = parse_stages(config.stages)
  unknown = [s for s in stages if s not in STAGES]
  if unknown:
    raise PipelineError(f"unknown stage(s) {unknown}; known: {', '.join(STAGES)}")
  os.makedirs(workdir, exist_ok=True)
  io.write_json(os.path.join(workdir, "last_config.json"), config_to_dict(config))
  for name in stages:
    t0 = time.time()
    print(f"[lis_jax] stage {name}: start", flush=True)
    resolve(STAGES[name])(config, workdir)
    print(f"[lis_jax] stage {name}: done in {time.time() - t0:.1f} s", flush=True)


def parse_stages(stages: str | Sequence[str]) -> list[str]:
  """`config.stages` as a list of names; each entry may itself be comma-separated.

  A command-line override `--config.stages=sweep,report` arrives from ml_collections
  as the one-element tuple ('sweep,report',).
  """
  if isinstance(stages, str):
    stages = (stages,)
  return [s.strip() for entry in stages for s in entry.split(",") if s.strip()]


# ----------------------------------------------------------------------------- helpers for stages


def section_config(config: ml_collections.ConfigDict, name: str,
                   defaults: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`defaults` updated with `config.<name>` where the config has that section."""
  if name in config:
    defaults.update(config[name])
  return defaults


def config_to_dict(config: Any) -> Any:
  """A JSON-friendly plain copy of a ConfigDict (tuples become lists)."""
  if isinstance(config, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    config = config.to_dict()
  return json.loads(json.dumps(config, default=io._json_default))


def check_stage_config(out_dir: str, fingerprint: Mapping[str, Any]) -> None:
  """Records `fingerprint` in `out_dir`, or checks it against the one recorded there.

  A stage calls this before writing anything, with every config value its outputs
  depend on (its own section and those of the stages it reads). A workdir filled by
  a different config is refused instead of being silently mixed with new outputs.

  Raises:
    PipelineError: `out_dir` holds outputs of a different config; names the fields.
  """
  fingerprint = config_to_dict(dict(fingerprint))
  path = os.path.join(out_dir, STAGE_CONFIG_FILE)
  if not os.path.exists(path):
    os.makedirs(out_dir, exist_ok=True)
    io.write_json(path, fingerprint)
    return
  old = io.read_json(path)
  diffs = _diff(old, fingerprint)
  if diffs:
    shown = "; ".join(diffs[:4]) + (f"; ... {len(diffs)} differences" if len(diffs) > 4 else "")
    raise PipelineError(
        f"{out_dir} was written by a different config ({shown}); use a fresh --workdir "
        f"or delete {out_dir}")


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for k in sorted(set(old) | set(new)):
      out += _diff(old.get(k, "<absent>"), new.get(k, "<absent>"), f"{prefix}{k}.")
    return out
  return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def resolve_path(workdir: str, path: str) -> str:
  """`path` if absolute or a built-in name, else relative to `workdir` when it exists there."""
  if os.path.isabs(path):
    return path
  inside = os.path.join(workdir, path)
  return inside if os.path.exists(inside) or os.sep in path else path


def parse_classes(spec: Any, num_classes: int) -> np.ndarray:
  """Class ids from a group name ('dogs'), a comma list ('1,2,3') or a sequence of ints.

  Raises:
    PipelineError: unknown group, unparsable list, or an id outside [0, num_classes).
  """
  if isinstance(spec, str):
    if spec in CLASS_GROUPS:
      ids = CLASS_GROUPS[spec]
    else:
      try:
        ids = [int(s) for s in spec.split(",") if s.strip()]
      except ValueError:
        raise PipelineError(f"config.classes={spec!r} is neither a class group "
                            f"({', '.join(CLASS_GROUPS)}) nor a comma list of ids") from None
  else:
    ids = [int(c) for c in spec]
  ids = np.asarray(ids, np.int32)
  if ids.size == 0:
    raise PipelineError("config.classes is empty")
  bad = ids[(ids < 0) | (ids >= num_classes)]
  if bad.size:
    raise PipelineError(f"unknown class id(s) {bad.tolist()}: the generator and classifier "
                        f"have {num_classes} classes (ids 0..{num_classes - 1})")
  if len(set(ids.tolist())) != ids.size:
    raise PipelineError(f"config.classes has duplicates: {ids.tolist()}")
  return ids


def parse_units(spec: Any, num_units: int) -> np.ndarray:
  """Unit ids from 'all', a comma list with ranges ('0,1,5:9') or a sequence of ints.

  Raises:
    PipelineError: unparsable spec or a unit outside [0, num_units).
  """
  if isinstance(spec, str):
    ids: list[int] = []
    if spec.strip() == "all":
      ids = list(range(num_units))
    else:
      try:
        for part in spec.split(","):
          part = part.strip()
          if ":" in part:
            a, b = part.split(":")
            ids += list(range(int(a), int(b)))
          elif part:
            ids.append(int(part))
      except ValueError:
        raise PipelineError(f"units={spec!r}: expected 'all' or a comma list like '0,1,5:9'") from None
  elif isinstance(spec, int):
    ids = [spec]
  else:
    ids = [int(u) for u in spec]
  ids = np.asarray(ids, np.int32)
  if ids.size == 0:
    raise PipelineError(f"units={spec!r} selects no unit")
  bad = ids[(ids < 0) | (ids >= num_units)]
  if bad.size:
    raise PipelineError(f"unit(s) {bad[:10].tolist()} out of range: the classifier "
                        f"representation has {num_units} units (0..{num_units - 1})")
  return ids


def check_finite(name: str, x: Any) -> None:
  """Raises PipelineError if the array `x` holds NaN or inf."""
  x = np.asarray(x)
  if not np.all(np.isfinite(x)):
    n = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    raise PipelineError(f"{name}: {n} non-finite value(s) (NaN/inf) out of {np.size(x)}")


def stage_dir(workdir: str, name: str) -> str:
  return os.path.join(workdir, name)


def require(path: str, produced_by: str) -> str:
  """Returns `path`, or raises PipelineError naming the stage that must run first."""
  if not os.path.exists(path):
    raise PipelineError(f"{path} not found: run the '{produced_by}' stage first "
                        f"(add it to config.stages)")
  return path


def as_tuple(x: Any) -> Sequence:
  return tuple(x) if isinstance(x, (list, tuple)) else (x,)


# ----------------------------------------------------------------------------- models


def load_models(config: ml_collections.ConfigDict, workdir: str):
  """Loads `(G, clf)` named by `config.generator` / `config.classifier`.

  Each is a built-in name, a converted checkpoint directory (relative paths are taken
  inside `workdir`), or "module:function" returning the object (custom models, tests).

  Raises:
    PipelineError: a checkpoint directory is missing (names the converter command from
      `config.checkpoint_hints`), or G and clf disagree on the number of classes.
  """
  from lis_jax import classifiers, generators  # Local: keeps `import lis_jax.pipeline` light.

  hints = config.get("checkpoint_hints", {}) or {}
  out = []
  for what, registry in (("generator", generators), ("classifier", classifiers)):
    spec = config[what]
    if ":" in spec and not os.path.exists(spec):
      out.append(resolve(spec)())
      continue
    path = resolve_path(workdir, spec)
    if path not in registry.BUILTINS and not os.path.exists(path):
      hint = hints.get(what)
      how = f"; convert it first: {hint.format(path=path)}" if hint else ""
      raise PipelineError(f"{what} checkpoint not found: {path}{how}")
    out.append(registry.load(path))
  G, clf = out
  if G.num_classes != clf.num_classes:
    raise PipelineError(f"generator has {G.num_classes} classes but classifier has "
                        f"{clf.num_classes}: they must share the label space")
  return G, clf


def broadcast_ws(w: Any, num_ws: int) -> Any:
  """w [..., w_dim] -> ws [..., num_ws, w_dim] (the same w for every synthesis layer)."""
  import jax.numpy as jnp
  return jnp.broadcast_to(w[..., None, :], (*w.shape[:-1], num_ws, w.shape[-1]))


def maybe_interrupt(stage: str, done: int) -> None:
  """Test hook: SIGKILLs this process when LIS_JAX_TEST_KILL_AFTER="stage:n" and done == n.

  Stages call it right after writing a unit of output and before recording it as done,
  the worst moment to die; tests use it to prove resumption loses and duplicates nothing.
  """
  spec = os.environ.get("LIS_JAX_TEST_KILL_AFTER")
  if spec and spec == f"{stage}:{done}":
    import signal
    os.kill(os.getpid(), signal.SIGKILL)
