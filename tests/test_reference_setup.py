"""A run of configs/linear.py's settings (on the tiny stand-in models of configs/tiny.py)
uses the reference's setup: its feature layer and 8-bit image, its own start samples
(seed 136, per class, not filtered) and the sweep range over them."""
import csv
import sys

import jax.numpy as jnp
import numpy as np

from conftest import ROOT

sys.path.insert(0, str(ROOT))
from configs import linear, tiny  # noqa: E402
from lis_jax import context, pipeline  # noqa: E402
from lis_jax.stages import sweep  # noqa: E402


def test_linear_config_is_the_reference_setup():
  config = linear.get_config()
  assert config.feature_layer == "reference" and config.quantize is True
  assert config.sweep.starts == "reference" and config.sweep.starts_seed == 136
  assert config.sweep.range == "starts_minmax"


def test_tiny_run_uses_the_reference_starts_and_range(tmp_path):
  config = tiny.get_config()           # linear's settings, tiny models
  config.stages = ("paired_data", "link", "sweep")
  # The test asserts on the sweep's reference starts and range only: those come from the
  # reference's seed, not from the paired data, and a range per unit is checked the same way
  # for 2 units as for 6. So a small paired data set (the link only has to exist: an
  # underdetermined fit just warns) and one block of 2 units without PNG strips suffice.
  config.paired_data.n_per_class = 8
  config.sweep.units = "0:2"
  config.sweep.save_png = False
  ctx = pipeline.run(config, str(tmp_path))
  assert ctx.clf.feature_layer == "reference" and ctx.clf.input_spec.quantize
  res = sweep.load(str(tmp_path))
  classes = np.asarray([1, 2, 3])
  per = config.sweep.samples_per_class
  np.testing.assert_array_equal(res.cls, np.repeat(classes, per))
  # The reference's draw: np.random.RandomState(136).randn(n, z_dim), the same z per class
  # (stylegan-xl gen_utils.get_w_from_seed), truncated toward the class with psi.
  G, clf = context.load_models(config, str(tmp_path))
  z = np.random.RandomState(136).randn(per, G.z_dim).astype(np.float32)
  for k, c in enumerate(classes):
    ws = G.mapping(jnp.asarray(z), jnp.full((per,), c, jnp.int32), psi=config.psi)
    r = np.asarray(clf.features(clf.preprocess(G.synthesis(ws))))
    # Same jitted ops, other batch composition: float32 rounding only.
    np.testing.assert_allclose(res.r_start[k * per:(k + 1) * per], r, rtol=1e-5, atol=1e-5)
  # The sweep range: [min, max] of each unit over those start samples.
  with open(tmp_path / "sweep" / "activation_ranges.csv") as f:
    ranges = list(csv.DictReader(f))
  for row in ranges:
    u = int(row["unit"])
    assert float(row["min"]) == np.float64(res.r_start[:, u].astype(np.float64).min())
    assert float(row["max"]) == np.float64(res.r_start[:, u].astype(np.float64).max())
