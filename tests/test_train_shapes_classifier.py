"""scripts/train_shapes_classifier.py: seeded runs are reproducible and load as 'shapes-resnet'."""
import importlib.util

import jax
import numpy as np
import pytest

from conftest import ROOT
from lis_jax import io
from lis_jax.classifiers import shapes_resnet

TINY = ["--steps=2", "--batch=8", "--eval_n=8"]  # Seconds: this checks plumbing, not accuracy.


@pytest.fixture(scope="module")
def script():
  spec = importlib.util.spec_from_file_location(
      "train_shapes_classifier", ROOT / "scripts" / "train_shapes_classifier.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_same_seed_same_weights_and_loadable(script, tmp_path):
  outs = [str(tmp_path / name) for name in ("a", "b")]
  for out in outs:
    assert script.main([f"--out={out}", *TINY]) == 0
  (pa, meta), (pb, _) = (io.load_checkpoint(o) for o in outs)
  jax.tree_util.tree_map(np.testing.assert_array_equal, pa, pb)
  assert meta["train"]["seed"] == 0 and meta["heldout"]["eval_seed"] != meta["train"]["seed"]
  clf = shapes_resnet.load_shapes_resnet(outs[0])
  assert clf.feature_dim == 128 and clf.num_classes == 8


def test_bad_argument_is_one_line_error(script, tmp_path, capsys):
  assert script.main([f"--out={tmp_path / 'c'}", "--world_seed=0", "--steps=0"]) == 1
  assert capsys.readouterr().err.startswith("error: ")
