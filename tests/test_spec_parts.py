"""The reference's part lists (spec.SEG_LABELS) beside its class groups, and the label
export's starting part list taken from them."""
import ml_collections
import numpy as np
import pytest

from lis_jax import spec
from lis_jax.label import export


def test_every_class_group_has_a_part_list():
  assert set(spec.SEG_LABELS) == set(spec.CLASS_GROUPS)
  for group, parts in spec.SEG_LABELS.items():
    assert parts[0] == "background" and len(set(parts)) == len(parts) >= 3, group


@pytest.mark.parametrize("group", sorted(spec.CLASS_GROUPS))
def test_label_export_starts_from_the_reference_list(group):
  config = ml_collections.ConfigDict({"classes": group})
  classes = np.asarray(spec.CLASS_GROUPS[group])
  # G=None: not a ground-truth world, so the class group's list applies.
  assert export.starting_parts(config, None, classes) == spec.SEG_LABELS[group]


def test_label_export_recognises_a_group_given_as_ids():
  classes = np.asarray(spec.CLASS_GROUPS["birds"])
  config = ml_collections.ConfigDict({"classes": ",".join(map(str, classes[::-1]))})
  assert export.starting_parts(config, None, classes) == spec.SEG_LABELS["birds"]
