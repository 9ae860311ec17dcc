"""Superposition counts and class-wise selectivity on planted tables with known answers."""
import numpy as np
import pytest

from lis_jax.analysis import classwise, superposition
from lis_jax.quantify import selectivity

PARTS = ("body", "top", "extra")
METRICS = selectivity.CONCEPT_METRICS
P, M = len(PARTS), len(METRICS)
ROUNDOFF = 1e-12
# Fraction of null concepts flagged selective at alpha = 0.05 (binomial sd ~1%).
FALSE_POSITIVE_MAX = 0.08


def _idx(part, metric):
  return PARTS.index(part), METRICS.index(metric)


def _planted_stats():
  """5 units: none; one concept; one part's size (3 co-varying measures); two parts; three groups."""
  u = 5
  sel = np.zeros((u, P, M), bool)
  eff = np.full((u, P, M), 0.1)
  plant = {1: [("body", "area")], 2: [("top", "area"), ("top", "width"), ("top", "height")],
           3: [("body", "luminance"), ("extra", "luminance")],
           4: [("body", "centre_x"), ("body", "angle"), ("top", "texture")]}
  for unit, concepts in plant.items():
    for c in concepts:
      sel[(unit, *_idx(*c))] = True
      eff[(unit, *_idx(*c))] = 5.0
  return {"selective": sel, "effect": eff, "mean": eff / 10}


def test_rule_counts_planted_units():
  res = superposition.analyse(_planted_stats(), [10, 11, 12, 13, 14], PARTS, METRICS)
  by_unit = {r["unit"]: r for r in res["units"]}
  assert [by_unit[u]["n_concepts"] for u in range(10, 15)] == [0, 1, 3, 2, 3]
  assert [by_unit[u]["n_groups"] for u in range(10, 15)] == [0, 1, 1, 2, 3]
  assert [by_unit[u]["label"] for u in range(10, 15)] == ["none", "single-concept", "single-concept",
                                                           "superposed", "superposed"]
  assert res["counts"] == {"none": 1, "single-concept": 2, "superposed": 2}
  assert res["fraction_superposed"] == pytest.approx(2 / 5)
  assert res["fraction_superposed_of_selective"] == pytest.approx(2 / 4)
  assert res["histogram_groups"] == {0: 1, 1: 2, 2: 1, 3: 1}
  assert by_unit[11]["top_concept"] == "body area"
  # The tidy map: one row per selective (unit, concept).
  assert len(res["concept_map"]) == 9
  assert {(r["part"], r["metric"]) for r in res["concept_map"] if r["unit"] == 12} == {
      ("top", "area"), ("top", "width"), ("top", "height")}


def test_object_and_its_parts_are_one_family_not_two():
  parts = ("body", "top", "object")
  p_, m_ = len(parts), len(METRICS)
  sel = np.zeros((4, p_, m_), bool)
  at = lambda part, metric: (parts.index(part), METRICS.index(metric))
  # 0: the whole object moves: every part's and the object's position -> one family.
  for part in parts:
    sel[(0, *at(part, "centre_x"))] = sel[(0, *at(part, "motion"))] = True
  # 1: the body brightens: body colour and the object's colour (nested) -> one family.
  sel[(1, *at("body", "luminance"))] = sel[(1, *at("object", "luminance"))] = True
  # 2: the object grows and the top changes colour -> two families.
  sel[(2, *at("object", "area"))] = sel[(2, *at("body", "width"))] = True
  sel[(2, *at("top", "colour_r"))] = True
  # 3: only a part's own geometry (nested in the object's, which did not pass) -> none counted.
  sel[(3, *at("top", "height"))] = True
  stats = {"selective": sel, "effect": sel * 3.0 + 0.1, "mean": sel * 1.0}
  res = superposition.analyse(stats, [0, 1, 2, 3], parts, METRICS)
  assert [r["n_groups"] for r in res["units"]] == [1, 1, 2, 0]
  assert [r["label"] for r in res["units"]] == ["single-concept", "single-concept", "superposed", "none"]
  groups = superposition.concept_groups(parts, METRICS)
  # 3 object geometry families + 2 appearance families for each of the 2 parts.
  assert np.unique(groups[groups >= 0]).size == 3 + 2 * 2


def test_population_fractions_come_with_their_null_and_clopper_pearson_interval():
  from scipy import stats as sps
  null_sel = np.zeros((40, P, M), bool)
  null_sel[:3, 0, METRICS.index("luminance")] = True
  null_sel[:3, 1, METRICS.index("texture")] = True  # 3 of 40 directions superposed
  res = superposition.analyse(_planted_stats(), [10, 11, 12, 13, 14], PARTS, METRICS, null_selective=null_sel)
  sn = res["superposed_null"]
  assert (sn["k"], sn["n"]) == (3, 40) and sn["fraction"] == pytest.approx(3 / 40)
  ci = sps.binomtest(3, 40).proportion_ci(0.95, method="exact")
  assert (sn["ci_low"], sn["ci_high"]) == pytest.approx((ci.low, ci.high), abs=ROUNDOFF)
  assert res["superposed_units"]["k"] == 2 and res["superposed_units"]["n"] == 5


def test_profile_entropy_closed_forms():
  c = 8
  eff = np.zeros((4, c))
  eff[0, 3] = 2.0  # all in one concept -> 0
  eff[1] = -1.0  # uniform |effect| -> 1
  eff[2, :2] = [1.0, 1.0]  # two equal concepts of 8 -> log 2 / log 8 = 1/3
  eff[3, :4] = [1.0, 1.0, np.nan, np.inf]  # undefined ones left out: 2 equal of 6 defined
  h = superposition.profile_entropy(eff)
  np.testing.assert_allclose(h, [0.0, 1.0, 1 / 3, np.log(2) / np.log(6)], atol=ROUNDOFF)
  assert np.isnan(superposition.profile_entropy(np.zeros((1, c))))[0]


def test_split_by_class_keeps_each_samples_null_draws():
  u, s, r = 2, 4, 3
  deltas = np.arange(u * s * P * M, dtype=float).reshape(u, s, P, M)
  null = np.arange(r * s * P * M, dtype=float).reshape(r, s, P, M)
  cls = np.array([5, 7, 5, 7])
  out = classwise.split_by_class(deltas, null, cls)
  d5, n5 = out[5]
  np.testing.assert_array_equal(d5, deltas[:, [0, 2]])
  np.testing.assert_array_equal(n5, null[:, [0, 2]])


NULL_DRAWS = 59   # random directions: permutation p-values down to 1/60


def test_classwise_finds_a_unit_selective_in_one_class_only():
  rng = np.random.default_rng(0)
  u, s_per = 6, 12
  cls = np.repeat([0, 1], s_per)
  deltas = rng.normal(size=(u, 2 * s_per, P, M))
  null = rng.normal(size=(NULL_DRAWS, 2 * s_per, P, M))
  lengths, null_lengths = np.ones(u), np.ones(NULL_DRAWS)
  planted = (3, *_idx("top", "area"))
  deltas[planted[0], :s_per, planted[1], planted[2]] += 2.0  # class 0 only
  per_class = classwise.statistics(deltas, lengths, null, null_lengths, cls, seed=0, n_boot=400)
  assert per_class[0]["selective"][planted] and per_class[0]["rank"][planted] == 1
  assert not per_class[1]["selective"][planted]
  for c in (0, 1):
    others = np.ones((u, P, M), bool)
    others[planted] = False
    assert np.mean(per_class[c]["selective"][others]) < FALSE_POSITIVE_MAX
  pooled = selectivity.shared_null_statistics(deltas, lengths, null, null_lengths, seed=0, n_boot=400)
  rows = classwise.summary(pooled, per_class)
  assert [r["class"] for r in rows] == [0, 1] and rows[0]["n_samples"] == s_per
  for r in rows:  # Jaccard of the two selective sets (NaN where both are empty)
    ps, cs = pooled["selective"], per_class[r["class"]]["selective"]
    union = np.sum(ps | cs)
    expected = np.sum(ps & cs) / union if union else np.nan
    np.testing.assert_equal(r["jaccard"], expected)


def test_population_reads_quantify_rows_back_into_arrays():
  from lis_jax.stages import population
  st = _planted_stats()
  full = {k: st[k] if k in st else np.zeros_like(st["effect"]) for k in selectivity.TABLE_COLUMNS[3:]}
  full["selective"] = st["selective"]
  rows = selectivity.table_rows(full, [10, 11, 12, 13, 14], PARTS)
  units, parts, back = population.stats_from_rows(rows[::-1])  # order of rows does not matter
  assert units == [10, 11, 12, 13, 14] and sorted(parts) == sorted(PARTS)
  order = [parts.index(p) for p in PARTS]
  for k in ("selective", "effect", "mean"):
    np.testing.assert_array_equal(back[k][:, order], st[k])


def test_held_out_items_spread_over_classes():
  from lis_jax.stages import population
  cls = np.repeat([0, 1, 2], 10)
  test = np.arange(0, 30, 2)  # 5 held-out rows per class
  items = population.held_out_items(cls, test, 7)
  assert items.size == 7 and set(items) <= set(test)
  assert sorted(np.bincount(cls[items]).tolist()) == [2, 2, 3]


def test_every_concept_has_a_measure_family():
  """The families cover quantify's concepts exactly (a renamed concept must not fall out)."""
  assert set(superposition.FAMILIES) == set(selectivity.CONCEPT_METRICS)


def test_classwise_null_counts_scale_the_null_calls_to_the_units():
  rng = np.random.default_rng(3)
  cls = np.repeat([0, 1], 6)
  null = rng.normal(size=(100, 12, P, M))
  null[0, :6, 0, METRICS.index("area")] += 30.0  # one direction stands out, in class 0 only
  counts = classwise.null_counts(null, np.ones(100), cls, n_units=20, seed=0, q_level=0.1)
  assert counts[0] == pytest.approx(1 * 20 / 100) and counts[1] == 0.0
