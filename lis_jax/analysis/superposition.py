"""Superposition: how many concepts each unit is selective for.

Input: the per-(unit, concept) statistics of `quantify.selectivity.unit_statistics`
([U, P, M] arrays: `selective`, `effect`, `mean`), flattened to C = P x M concepts.

Per unit:
  n_concepts   concepts it is selective for
  n_groups     distinct concept families among them. A family is a set of measures that
               co-vary by construction (FAMILIES: a part that grows changes its area,
               width and height together), and families are not nested: the object is
               the union of its parts, so one change shows twice (a whole object that
               moves moves every part; a part that brightens brightens the object).
               The families counted (`concept_groups`): the object's geometry (size,
               position, shape: three families) and each part's appearance (colour,
               texture: two families per part); a part's own geometry and the object's
               appearance are left out as nested in those. So a unit that moves or
               scales the whole object is one family, not one per part.
  entropy      Shannon entropy of its normalised |effect| profile over all C concepts,
               divided by log(C): 0 = all effect in one concept, 1 = spread evenly
               (concepts with an undefined effect are left out)
  label        the rule, stated once here:
                 'none'            no selective concept
                 'single-concept'  all counted selective concepts in one family
                 'superposed'      counted selective concepts in two or more families
               ('selective' is quantify's call: BH q <= its level over unit x concept)

The population number (`fraction_superposed`) is shown with its Clopper-Pearson interval
beside the same fraction among the null's random directions, labelled by the same rule
from the same calls made on them (`null_fraction`).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from lis_jax.analysis import calls

# Measure families: metrics within one family co-vary by construction.
FAMILIES = {
    "area": "size", "width": "size", "height": "size",
    "luminance": "colour", "colour_r": "colour", "colour_g": "colour", "colour_b": "colour",
    "centre_x": "position", "centre_y": "position", "motion": "position",
    "eccentricity": "shape", "angle": "shape",
    "texture": "texture",
}
GEOMETRY = ("size", "position", "shape")  # counted on the object; colour and texture per part
OBJECT_PART = "object"  # quantify.metrics.OBJECT_PART: the union of the parts
LABELS = ("none", "single-concept", "superposed")


def profile_entropy(effect: np.ndarray) -> np.ndarray:
  """Normalised entropy of |effect| profiles.

  Args:
    effect: [U, C] effects (NaN / inf = undefined, left out).
  Returns:
    [U] entropy / log(number of defined concepts) in [0, 1]; NaN if no effect is non-zero.
  """
  a = np.abs(np.asarray(effect, np.float64))
  ok = np.isfinite(a)
  a = np.where(ok, a, 0.0)
  tot = a.sum(1, keepdims=True)
  p = a / np.where(tot > 0, tot, 1.0)
  with np.errstate(divide="ignore", invalid="ignore"):
    h = -np.sum(np.where(p > 0, p * np.log(p), 0.0), 1)
  c = ok.sum(1)
  return np.where((tot[:, 0] > 0) & (c > 1), h / np.log(np.maximum(c, 2)), np.nan)


def concept_groups(parts: Sequence[str], metrics: Sequence[str]) -> np.ndarray:
  """[P * M] family id of each concept (part-major, as `stats[...].reshape(U, -1)`); -1
  for the nested concepts left out (module docstring). Without an object part, every
  part's geometry counts as its own families."""
  has_object = OBJECT_PART in parts
  keys = []
  for p in parts:
    for m in metrics:
      fam = FAMILIES.get(m, m)
      geometric = fam in GEOMETRY
      if has_object and (geometric != (p == OBJECT_PART)):
        keys.append(None)  # a part's geometry, or the object's appearance: nested
      else:
        keys.append((p, fam))
  uniq = {k: i for i, k in enumerate(dict.fromkeys(k for k in keys if k is not None))}
  return np.asarray([-1 if k is None else uniq[k] for k in keys])


def classify(selective: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The rule of the module docstring.

  Args:
    selective: [U, C] bool; groups: [C] group id of each concept.
  Returns:
    n_concepts [U] int, n_groups [U] int, label [U] (strings of LABELS).
  """
  sel = np.asarray(selective, bool)
  n_concepts = sel.sum(1)
  n_groups = np.asarray([np.unique(groups[s & (groups >= 0)]).size for s in sel])
  label = np.where(n_groups == 0, LABELS[0], np.where(n_groups == 1, LABELS[1], LABELS[2]))
  return n_concepts, n_groups, label


def null_fraction(null_selective: np.ndarray, parts: Sequence[str], metrics: Sequence[str],
                  level: float = 0.95) -> dict:
  """The fraction of null directions labelled superposed ([R, P, M] calls made on them,
  selectivity.null_calls), with its interval: `calls.fraction`'s dict."""
  sel = np.asarray(null_selective, bool).reshape(np.shape(null_selective)[0], -1)
  _, _, label = classify(sel, concept_groups(parts, metrics))
  return calls.fraction(label == LABELS[2], level)


def analyse(stats: Mapping[str, np.ndarray], units: Sequence[int], parts: Sequence[str],
            metrics: Sequence[str], null_selective: np.ndarray | None = None) -> dict:
  """Per-unit superposition table, its distribution, and the tidy unit-to-concept map.

  Args:
    stats: [U, P, M] arrays 'selective', 'effect', 'mean' (selectivity.unit_statistics).
    units: [U] unit ids; parts: P part names; metrics: M metric names.
  Returns:
    units: list of per-unit dicts (unit, n_concepts, n_groups, entropy, label,
      top_concept, top_effect); concept_map: one dict per selective (unit, concept)
      (unit, part, metric, family, effect, mean); counts: {label: units};
      fraction_superposed (of the units with any selective concept and of all units);
      histogram: {n_groups: units}; superposed_units and (with null_selective, the
      calls on the null's directions [R, P, M]) superposed_null: calls.fraction dicts
      (fraction, k, n, ci_low, ci_high).
  """
  u_n = len(units)
  sel = np.asarray(stats["selective"], bool).reshape(u_n, -1)
  eff = np.asarray(stats["effect"], np.float64).reshape(u_n, -1)
  mean = np.asarray(stats["mean"], np.float64).reshape(u_n, -1)
  groups = concept_groups(parts, metrics)
  names = [(p, m) for p in parts for m in metrics]
  n_concepts, n_groups, label = classify(sel, groups)
  ent = profile_entropy(eff)
  score = np.where(np.isfinite(eff), np.abs(eff), -1.0)
  rows, cmap = [], []
  for i, u in enumerate(units):
    top = int(np.argmax(score[i]))
    rows.append({"unit": int(u), "n_concepts": int(n_concepts[i]), "n_groups": int(n_groups[i]),
                 "entropy": float(ent[i]), "label": str(label[i]),
                 "top_concept": f"{names[top][0]} {names[top][1]}", "top_effect": float(eff[i, top])})
    for c in np.flatnonzero(sel[i]):
      p, m = names[c]
      cmap.append({"unit": int(u), "part": p, "metric": m, "family": FAMILIES.get(m, m),
                   "effect": float(eff[i, c]), "mean": float(mean[i, c])})
  counts = {k: int(np.sum(label == k)) for k in LABELS}
  any_sel = counts["single-concept"] + counts["superposed"]
  hist = {int(k): int(v) for k, v in zip(*np.unique(n_groups, return_counts=True))}
  out = {"units": rows, "concept_map": cmap, "counts": counts, "histogram_groups": hist,
          "fraction_superposed": counts["superposed"] / u_n if u_n else float("nan"),
          "fraction_superposed_of_selective": counts["superposed"] / any_sel if any_sel else float("nan"),
         "superposed_units": calls.fraction(label == LABELS[2]),
         "rule": "families (not nested): the object's size, position and shape; each part's "
                 "colour and texture. single-concept: all selective concepts in one family; "
                 "superposed: two or more families; none: no selective concept"}
  if null_selective is not None:
    out["superposed_null"] = null_fraction(null_selective, parts, metrics)
  return out
