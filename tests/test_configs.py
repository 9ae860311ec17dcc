"""The configs compose as docs/architecture.md says: each stage's `default_config()` is
the paper's setting, configs/linear.py runs every stage at those defaults, configs/demo.py
changes only what the demo changes; values are checked by the rules beside each stage's
defaults, and an unknown field is refused with the list of known ones."""
import ast
import os
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, ROOT)
from configs import demo, linear  # noqa: E402
from lis_jax import errors, spec, stages, validate  # noqa: E402


def _assigned(path: str) -> set[str]:
  """The fields a config file sets: targets `config.<a>.<b> = ...` of its get_config()."""
  tree = ast.parse(open(os.path.join(ROOT, path)).read())
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Assign):
      for t in node.targets:
        s = ast.unparse(t)
        if s.startswith("config."):
          out.add(s[len("config."):])
  return out


def _diff(a: dict, b: dict) -> set[str]:
  fa, fb = spec.flat_dict(a), spec.flat_dict(b)
  return {k for k in set(fa) | set(fb) if fa.get(k, "<absent>") != fb.get(k, "<absent>")}


def test_demo_differs_from_linear_in_exactly_the_fields_it_sets():
  differ = _diff(demo.get_config().to_dict(), linear.get_config().to_dict())
  assert differ == _assigned("configs/demo.py"), (
      f"set but unchanged: {sorted(_assigned('configs/demo.py') - differ)}; "
      f"changed but not set: {sorted(differ - _assigned('configs/demo.py'))}")


def test_linear_runs_every_stage_at_its_defaults():
  config = linear.get_config()
  assert tuple(config.stages) == tuple(stages.REGISTRY)
  for name, st in stages.REGISTRY.items():
    assert config[name].to_dict() == st.default_config().to_dict(), name
  # Its own lines set only top-level fields (models, classes, psi, seed, stages).
  assert all("." not in f for f in _assigned("configs/linear.py")), _assigned("configs/linear.py")


def test_demo_imports_no_stage_module():
  tree = ast.parse(open(os.path.join(ROOT, "configs/demo.py")).read())
  names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
  names += [f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names]
  assert names == ["configs.linear"], names


def test_every_default_passes_its_own_rules_and_every_rule_names_a_field():
  for name, st in stages.REGISTRY.items():
    section = st.default_config()
    for field, rule in st.rules.items():
      assert field in section, f"{name}.{field}: a rule for no field"
      validate.check_value(f"{name}.{field}", section[field], rule)


def test_unknown_field_is_refused_with_the_known_ones():
  config = linear.get_config()
  config.quantify.unlock()
  config.quantify.n_lablled = 3
  with pytest.raises(errors.PipelineError) as e:
    stages.context(config, "/nonexistent")
  msg = str(e.value)
  assert "config.quantify has unknown field(s) ['n_lablled']" in msg
  known = msg.split("known: ")[1].split(", ")
  assert sorted(known) == sorted(stages.REGISTRY["quantify"].default_config().keys())


def test_a_rule_beside_the_defaults_refuses_a_bad_value():
  config = linear.get_config()
  config.boundary.n_grid = 1
  ctx = stages.context(config, "/nonexistent")
  with pytest.raises(errors.PipelineError, match=r"config\.boundary\.n_grid=1 must be >= 2"):
    ctx.validate(config.stages)
  config.boundary.n_grid = 2
  stages.context(config, "/nonexistent").validate(config.stages)   # accepted


def test_choice_rule():
  with pytest.raises(ValueError, match=r"config\.q\.x='c' must be one of a, b"):
    validate.check_value("q.x", "c", validate.choice("a", "b"))
  validate.check_value("q.x", "b", validate.choice("a", "b"))


def test_invariances_requires_quantify_exactly_when_it_measures_parts():
  """Its part-metric read-outs use quantify's segmenter: then quantify is a requirement
  (the runner checks it) and its fingerprint is part of invariances' own."""
  from configs import tiny   # built-in models: the fingerprints hash them
  config = tiny.get_config()
  ctx = stages.context(config, "/nonexistent")
  assert "quantify" in ctx.requires("invariances")
  assert "quantify" in ctx.fingerprint("invariances")["requires"]
  config.invariances.part_metric_train = 0
  ctx = stages.context(config, "/nonexistent")
  assert ctx.requires("invariances") == ("paired_data", "link")
  assert set(ctx.fingerprint("invariances")["requires"]) == {"paired_data", "link"}
