"""Config values checked before anything runs: sizes, fractions, bounds (issue 11).

`check(config, stages)` looks at the top-level fields and every stage section the
config has (a wrong value is refused even in a section this run skips), and raises `ValueError` with one line naming the first bad field, its
value and what it must be (the runner turns it into `errors.PipelineError`).
Fields a config does not have are skipped, so a rule never invents a default.

A rule is `(kind, low, high)`: `int` and `float` values must lie in [low, high]
(None: unbounded; floats must also be finite), `open` floats in (low, high).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from lis_jax.quantify import selectivity

_INF = None
Rule = tuple[str, float | None, float | None]


def _pos_int() -> Rule:
  return ("int", 1, _INF)


def _nonneg_int() -> Rule:
  return ("int", 0, _INF)


def _pos_float() -> Rule:
  return ("open", 0.0, _INF)


def _unit_open() -> Rule:
  return ("open", 0.0, 1.0)


# Top-level fields (every stage reads them).
TOP_RULES: dict[str, Rule] = {
    "psi": ("float", 0.0, _INF),
}

# Per stage section: field -> rule. Sizes >= 1, fractions inside their interval.
RULES: dict[str, dict[str, Rule]] = {
    "paired_data": {
        "n_per_class": _pos_int(), "batch_size": _pos_int(), "shard_size": _pos_int(),
        "max_tries_factor": ("float", 1.0, _INF),
    },
    "link": {
        "alpha": ("float", 0.0, _INF), "l1_ratio": ("float", 0.0, 1.0), "jitter": ("float", 0.0, _INF),
        "max_iter": _pos_int(), "tol": _pos_float(), "epochs": _pos_int(), "batch_size": _pos_int(),
        "learning_rate": _pos_float(), "holdout_fraction": _unit_open(),
        "cycle_samples": _nonneg_int(),
    },
    "sweep": {
        "samples_per_class": _pos_int(), "n_steps": ("int", 2, _INF), "k_std": _pos_float(),
        "units_per_block": _pos_int(), "batch_size": _pos_int(),
    },
    "counterfactual": {
        "samples_per_pair": _pos_int(), "lr": _pos_float(), "max_steps": _pos_int(),
        "check_every": _pos_int(), "w_origin": ("float", _INF, _INF), "w_cos": ("float", _INF, _INF),
        "batch_size": _pos_int(), "compact_rows": _nonneg_int(), "top_units": _pos_int(),
    },
    "quantify": {
        "n_labelled": _pos_int(), "n_heldout": _nonneg_int(), "resolution": _nonneg_int(),
        "epochs": _pos_int(), "train_batch": _pos_int(), "lr": _pos_float(),
        "weight_decay": ("float", 0.0, _INF), "lr_step_epochs": _pos_int(), "lr_gamma": _pos_float(),
        "samples_per_unit": ("int", 2, _INF), "null_draws": ("int", 2, _INF), "max_components": _pos_int(),
        "batch_size": _pos_int(), "n_boot": _pos_int(), "level": _unit_open(), "alpha": _unit_open(),
        "top_k": _pos_int(), "cards": _nonneg_int(),
    },
}


# Per stage section: field -> the values it may take.
CHOICES: dict[str, dict[str, tuple[str, ...]]] = {
    "quantify": {"rank_by": ("mean", "effect"), "average": ("mean", "median"),
                 "concepts": tuple(selectivity.CONCEPT_SETS)},
}


def check_value(name: str, value: Any, rule: Rule) -> None:
  """Raises ValueError (one line) if `value` breaks `rule`."""
  kind, lo, hi = rule
  if kind == "int":
    ok_type = isinstance(value, int) and not isinstance(value, bool)
    what = "an integer"
  else:
    ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
    what = "a number"
  if not ok_type:
    raise ValueError(f"config.{name}={value!r} must be {what}")
  if kind != "int" and not math.isfinite(value):
    raise ValueError(f"config.{name}={value!r} must be a finite number")
  if kind == "open":
    bad = (lo is not None and value <= lo) or (hi is not None and value >= hi)
    interval = f"in ({_b(lo, '-inf')}, {_b(hi, 'inf')})"
  else:
    bad = (lo is not None and value < lo) or (hi is not None and value > hi)
    interval = f">= {lo}" if hi is None and lo is not None else f"in [{_b(lo, '-inf')}, {_b(hi, 'inf')}]"
  if bad:
    raise ValueError(f"config.{name}={value!r} must be {interval}")


def _b(x, default: str) -> str:
  return default if x is None else str(x)


def check(config: Mapping[str, Any], stages: Sequence[str]) -> None:
  """Checks `stages` is not empty, and the config's values (see the module docstring).

  Raises:
    ValueError: the first bad value, in one line; or an empty stage list.
  """
  if not stages:
    raise ValueError("config.stages is empty: name at least one stage "
                     "(e.g. --config.stages=paired_data,link)")
  for field, rule in TOP_RULES.items():
    if field in config:
      check_value(field, config[field], rule)
  for stage, rules in RULES.items():
    section = config[stage] if stage in config else None
    for field, rule in rules.items():
      if section is not None and field in section:
        check_value(f"{stage}.{field}", section[field], rule)
  for stage, choices in CHOICES.items():
    section = config[stage] if stage in config else None
    for field, allowed in choices.items():
      if section is not None and field in section and section[field] not in allowed:
        raise ValueError(f"config.{stage}.{field}={section[field]!r} must be one of "
                         f"{', '.join(allowed)}")


def check_top_units(top_units: int, feature_dim: int) -> None:
  """counterfactual.top_units must be at most the classifier's number of units."""
  check_value("counterfactual.top_units", top_units, ("int", 1, feature_dim))
