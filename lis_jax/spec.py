"""Parsing of the config's specs: class ids and groups, unit lists, stage lists (ground
floor: imports only `errors`)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from lis_jax.errors import PipelineError

# ImageNet class groups of the paper; `config.classes` may name one.
CLASS_GROUPS: dict[str, tuple[int, ...]] = {
    "dogs": (232, 254, 151, 197, 178),
    "fungi": (992, 993, 994, 997),
    "birds": (10, 12, 14, 92, 95, 96),
    "cars": (468, 609, 627, 717, 779, 817),
}

# The reference's part lists per class group (kaschube-lab/LinkingInStyle, src/metadata.py
# SEG_LABELS), in its order: a part's label value is its index, background is 0.
SEG_LABELS: dict[str, tuple[str, ...]] = {
    "dogs": ("background", "leg", "body", "tail", "tongue", "eye", "nose", "snout", "ear", "head"),
    "fungi": ("background", "cap", "stem"),
    "birds": ("background", "beak", "eye", "head", "leg", "wing", "body", "tail"),
    "cars": ("background", "shell", "tire", "window"),
}


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


def parse_stages(stages: str | Sequence[str]) -> list[str]:
  """`config.stages` as a list of names; each entry may itself be comma-separated.

  A command-line override `--config.stages=sweep,report` arrives from ml_collections
  as the one-element tuple ('sweep,report',).
  """
  if isinstance(stages, str):
    stages = (stages,)
  return [s.strip() for entry in stages for s in entry.split(",") if s.strip()]


def as_tuple(x: Any) -> Sequence:
  return tuple(x) if isinstance(x, (list, tuple)) else (x,)


def flat_dict(d: dict, prefix: str = "") -> dict:
  """A nested dict (a config's `to_dict()`, a JSON record) as {"a.b.c": value}."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flat_dict(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out
