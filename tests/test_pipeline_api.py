"""The stage API: a toy stage registered next to the built-in ones, the runner's checks,
fingerprints derived from requirements, and named random streams."""
import dataclasses
import os
import sys

import jax
import ml_collections
import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT))  # configs/ is not an installed package.
from configs import tiny  # noqa: E402
from lis_jax import context, errors, io, pipeline, stages  # noqa: E402
from lis_jax.stages.base import Stage  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Count:
  n: int


def _toy(name, requires=(), calls=None):
  """A stage writing n = its config's `start` + the n of each stage it requires."""
  def default_config():
    return ml_collections.ConfigDict({"start": 1, "batch_size": 4})

  def run(ctx):
    calls.append(name)
    n = ctx.cfg(name).start + sum(ctx.result(r).n for r in requires)
    os.makedirs(ctx.out_dir(name), exist_ok=True)
    io.write_json(os.path.join(ctx.out_dir(name), "n.json"), {"n": n})

  def load(workdir):
    path = errors.require(os.path.join(workdir, name, "n.json"), name)
    return Count(io.read_json(path)["n"])

  return Stage(name=name, requires=requires, default_config=default_config, run=run, load=load,
               uses=("seed",), ignores=("batch_size",))


def _config(stages_, **sections):
  c = ml_collections.ConfigDict({"stages": stages_, "seed": 0})
  for k, v in sections.items():
    c[k] = v
  return c


@pytest.fixture
def registry():
  calls = []
  reg = {"a": _toy("a", calls=calls), "b": _toy("b", ("a",), calls)}
  return reg, calls


def test_toy_stage_runs_and_reads_its_requirement(tmp_path, registry):
  reg, calls = registry
  pipeline.run(_config(("a", "b"), a={"start": 5}), str(tmp_path), reg)
  assert calls == ["a", "b"]
  assert reg["b"].load(str(tmp_path)).n == 5 + 1
  # b alone: a is done in the workdir with the same config.
  pipeline.run(_config(("b",), a={"start": 5}, b={"batch_size": 99}), str(tmp_path), reg)
  assert calls == ["a", "b", "b"]


def test_runner_checks_requirements_before_running(tmp_path, registry):
  reg, calls = registry
  with pytest.raises(errors.PipelineError, match="requires 'a', which has not run"):
    pipeline.run(_config(("b",)), str(tmp_path), reg)
  with pytest.raises(errors.PipelineError, match="list 'a' before 'b'"):
    pipeline.run(_config(("b", "a")), str(tmp_path), reg)
  assert calls == []
  pipeline.run(_config(("a",)), str(tmp_path), reg)
  with pytest.raises(errors.PipelineError, match=r"a\.start: 1 -> 2"):   # a changed since
    pipeline.run(_config(("b",), a={"start": 2}), str(tmp_path), reg)
  with pytest.raises(errors.PipelineError, match="unknown field"):
    pipeline.run(_config(("a",), a={"strat": 2}), str(tmp_path), reg)
  with pytest.raises(errors.PipelineError, match="config.a: .*start"):   # a type the default refuses
    pipeline.run(_config(("a",), a={"start": "two"}), str(tmp_path), reg)


def test_fingerprint_is_own_section_uses_and_requirements(registry):
  reg, _ = registry
  ctx = context.RunContext(_config(("a", "b"), a={"start": 3}), "/nonexistent", reg)
  fa = {"layout": context.LAYOUT, "a": {"start": 3}, "seed": 0}   # batch_size is ignored
  assert ctx.fingerprint("a") == fa
  assert ctx.fingerprint("b") == {"layout": context.LAYOUT, "b": {"start": 1}, "seed": 0,
                                  "requires": {"a": fa}}


def test_new_stage_is_one_import_line():
  assert list(stages.REGISTRY) == ["paired_data", "link", "sweep", "counterfactual", "quantify",
                                   "boundary", "population", "invariances",
                                   "motion", "photos", "report"]
  for name, st in stages.REGISTRY.items():
    assert st.name == name and st.run.__module__ == f"lis_jax.stages.{name}"
    assert all(r in stages.REGISTRY for r in st.requires)


def test_old_stage_name_and_old_layout_get_one_line_errors(tmp_path):
  config = tiny.get_config()
  config.stages = ("paired_data", "fit_link")
  with pytest.raises(errors.PipelineError, match=r"\['fit_link'\] are now called \['link'\]"):
    pipeline.run(config, str(tmp_path))
  io.write_json(str(tmp_path / "link" / "config.json"), {"paired_data": {}, "link": {}})
  config.stages = ("paired_data",)
  with pytest.raises(errors.PipelineError, match="earlier version of lis_jax.*fresh --workdir"):
    pipeline.run(config, str(tmp_path))


def test_stream_key_folds_name_then_indices():
  k = context.stream_key(7, "counterfactual")
  np.testing.assert_array_equal(context.stream_key(7, "counterfactual", 3, 4),
                                jax.random.fold_in(jax.random.fold_in(k, 3), 4))
  assert not np.array_equal(k, context.stream_key(7, "quantify"))
  assert not np.array_equal(k, context.stream_key(8, "counterfactual"))


def _fold(keys, idx):
  """keys [K, 2] x idx [I] -> [K * I, 2]: every key folded with every index."""
  f = jax.vmap(lambda k: jax.vmap(lambda i: jax.random.fold_in(k, i))(idx))(keys)
  return f.reshape(-1, 2)


def test_named_streams_never_share_a_key():
  """Every key the stages draw in the demo config, over every index they use: all distinct.

  The old integer tags made counterfactual search i start from fold_in(fold_in(root, 2), i),
  the latent key of class 2, sample i of paired_data; named streams cannot meet.
  """
  from configs import demo
  config = demo.get_config()
  seed = config.seed
  p, cf, q = config.paired_data, config.counterfactual, config.quantify
  n_classes, n_tries = 8, int(p.n_per_class * p.max_tries_factor)
  n_pairs = n_classes * (n_classes - 1)
  n_searches = -(-n_pairs * cf.samples_per_pair // cf.batch_size) * cf.batch_size   # padded batches
  n_rows = n_classes * p.n_per_class
  base = lambda name: context.stream_key(seed, name)[None]
  used = {
      # paired_data: latent i of class c (stages/paired_data.py: latents).
      "paired_data": _fold(_fold(base("paired_data"), np.arange(n_classes)), np.arange(n_tries)),
      # link: the MLP's init (0) and epoch permutations (1..epochs), linking.fit_mlp.
      "link": _fold(base("link"), np.arange(config.link.epochs + 1)),
      # counterfactual: the start shift of search i (initial_shift).
      "counterfactual": _fold(base("counterfactual"), np.arange(n_searches)),
      # quantify: labelled latents and head init use the stream key itself; null
      # directions fold unit u, then paired-data row r (null_ends).
      "quantify.labelled": base("quantify.labelled"),
      "quantify.init": base("quantify.init"),
      "quantify.null": _fold(_fold(base("quantify.null"), np.arange(128)), np.arange(n_rows)),
      # boundary: the random-path directions of search i (analysis.boundary.null_ends).
      "boundary.null": _fold(base("boundary.null"), np.arange(n_searches)),
      # population: the MLP link fitted for the side-by-side comparison (as link's).
      "population.link.mlp": _fold(base("population.link.mlp"), np.arange(config.link.epochs + 1)),
  }
  # Streams that fold indices never use their bare key, but it must not be drawn elsewhere.
  bare = [base(n) for n in ("paired_data", "link", "counterfactual", "quantify.null", "boundary.null",
                            "population.link.mlp")]
  keys = np.concatenate([np.asarray(k) for k in list(used.values()) + bare])
  assert np.unique(keys, axis=0).shape[0] == keys.shape[0]
  # The stages draw from exactly these streams.
  assert set(used) >= {"paired_data", "link", "counterfactual"}
