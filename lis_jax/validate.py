"""Config values checked before anything runs: sizes, fractions, bounds, choices (issue 11).

The rules live beside each stage's defaults: a stage module defines `RULES` (field ->
rule) next to its `default_config()` and gives it to its `Stage(rules=...)`; this module
holds the rule kinds and the checker. `check(config, stages, registry)` looks at the
top-level fields and every stage section the config has (a wrong value is refused even in
a section this run skips), and raises `ValueError` with one line naming the first bad
field, its value and what it must be (the run context turns it into
`errors.PipelineError`). An unknown field in a section is refused when the section is
merged over its defaults, naming the known ones (`context.RunContext`).

A rule is `(kind, low, high)`: `int` and `float` values must lie in [low, high]
(None: unbounded; floats must also be finite), `open` floats in (low, high); or
`("choice", values, None)`: the value must be one of `values`.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

_INF = None
Rule = tuple[str, Any, Any]


def pos_int() -> Rule:
  return ("int", 1, _INF)


def nonneg_int() -> Rule:
  return ("int", 0, _INF)


def int_at_least(low: int) -> Rule:
  return ("int", low, _INF)


def pos_float() -> Rule:
  return ("open", 0.0, _INF)


def nonneg_float() -> Rule:
  return ("float", 0.0, _INF)


def any_float() -> Rule:
  return ("float", _INF, _INF)


def unit_open() -> Rule:
  return ("open", 0.0, 1.0)


def unit_closed() -> Rule:
  return ("float", 0.0, 1.0)


def choice(*values: str) -> Rule:
  return ("choice", tuple(values), None)


# Top-level fields (every stage reads them).
TOP_RULES: dict[str, Rule] = {
    "psi": ("float", 0.0, _INF),
    "feature_layer": ("choice", ("penultimate", "reference"), None),
    "quantize": ("bool", None, None),
    "memory_gb": ("float", 0.0, _INF),   # 0: measure the device's memory (lis_jax/memory.py)
}


def why(rule: Rule, reason: str) -> tuple:
  """`rule` with the reason for its bound, said in the error line."""
  return (*rule[:3], reason)


def check_value(name: str, value: Any, rule: Rule) -> None:
  """Raises ValueError (one line) if `value` breaks `rule`."""
  try:
    _check_value(name, value, rule[:3])
  except ValueError as e:
    raise ValueError(f"{e} ({rule[3]})" if len(rule) > 3 else str(e)) from None


def _check_value(name: str, value: Any, rule: Rule) -> None:
  kind, lo, hi = rule
  if kind == "bool":
    if not isinstance(value, bool):
      raise ValueError(f"config.{name}={value!r} must be True or False")
    return
  if kind == "choice":
    if value not in lo:
      raise ValueError(f"config.{name}={value!r} must be one of {', '.join(lo)}")
    return
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


def check(config: Mapping[str, Any], stages: Sequence[str],
          registry: Mapping[str, Any] | None = None) -> None:
  """Checks `stages` is not empty, and the config's values (see the module docstring).

  registry: stage name -> Stage; each Stage's `rules` check its section.
  Raises:
    ValueError: the first bad value, in one line; or an empty stage list.
  """
  if not stages:
    raise ValueError("config.stages is empty: name at least one stage "
                     "(e.g. --config.stages=paired_data,link)")
  for field, rule in TOP_RULES.items():
    if field in config:
      check_value(field, config[field], rule)
  for name, stage in (registry or {}).items():
    section = config[name] if name in config else None
    for field, rule in getattr(stage, "rules", {}).items():
      if section is not None and field in section:
        check_value(f"{name}.{field}", section[field], rule)


def check_top_units(top_units: int, feature_dim: int) -> None:
  """counterfactual.top_units must be at most the classifier's number of units."""
  check_value("counterfactual.top_units", top_units, ("int", 1, feature_dim))
