"""The 'reference' feature layer: lis_jax's r equals the reference code's
`nn.Sequential(*list(net.children())[:-1])(x)` flattened, and its head gives the logits.

torchvision cannot be loaded here, so the truth is two steps away from it:
1. tests/tv_reference_models.py rebuilds torchvision's modules from plain torch.nn
   layers; each is loaded (strict) with the fixture's state_dict and must reproduce
   torchvision's own outputs stored in the fixture (`logits_224`, `r_224`);
2. that model's children()[:-1] output is then the truth for `feature_layer='reference'`.
densenet201 (no fixture) runs the same torch code as densenet121, with a random
state_dict made by FIXTURES.md's recipe from the converter's key table.
"""
import functools

import jax
import numpy as np
import pytest
import torch

from converters import torchvision as tvc
from lis_jax import classifiers
from lis_jax.classifiers.archs import module_for
from tests import tv_reference_models as tvr
from tests.torchvision_state_dicts import fixture_state_dict, recipe_state_dict

FIXTURE_ARCHS = ("resnet50", "vgg16", "alexnet", "densenet121")
# The reference widths at 224 px (issue 24): children()[:-1] flattened.
REFERENCE_DIMS = {"resnet50": 2048, "vgg16": 512 * 7 * 7, "alexnet": 256 * 6 * 6,
                  "densenet121": 1024 * 7 * 7, "densenet201": 1920 * 7 * 7}
# float32 parity, as tests/test_classifiers.py: max |diff| <= 1e-4 * max(1, max |truth|)
# (measured here: <= 1.1e-6 relative for every architecture, r and logits alike).
PARITY_RTOL = 1e-4
DENSENET201_SIZE = 64       # small input: 98 dense layers compile and run in seconds.
DENSENET201_SEED = 201

_jit_fast = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _close(got, want):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape, (got.shape, want.shape)
  err = np.abs(got - want).max()
  assert err <= PARITY_RTOL * max(1.0, np.abs(want).max()), err


@_jit_fast
def _ours(clf, x):
  r = clf.features(x)
  return r, clf.head(r)


def _lis_reference(arch, state_dict, input_spec=classifiers.InputSpec()):
  variables, _ = tvc.convert_state_dict(arch, state_dict)
  variables = jax.tree_util.tree_map(jax.numpy.asarray, variables)
  return classifiers.Classifier.create(module_for(arch), variables, arch=arch,
                                       input_spec=input_spec, feature_layer="reference")


@pytest.mark.parametrize("arch", FIXTURE_ARCHS)
def test_reference_layer_matches_children_minus_last(fixtures_dir, arch):
  _, sd = fixture_state_dict(fixtures_dir, arch)
  ref = np.load(fixtures_dir / f"tv_{arch}.npz")
  net = tvr.MODELS[arch]()
  net.load_state_dict(sd, strict=True)
  x = ref["x_224"]
  logits_t, r_pen_t, r_ref_t = tvr.run(net, arch, torch.from_numpy(x))
  # Step 1: the torch model is torchvision (its outputs stored in the fixture).
  _close(logits_t, ref["logits_224"])
  _close(r_pen_t, ref["r_224"])
  # Step 2: lis_jax's reference layer is that model's children()[:-1] output.
  clf = _lis_reference(arch, sd)
  del sd, net
  assert clf.feature_dim == REFERENCE_DIMS[arch] == r_ref_t.shape[1]
  r, logits = _ours(clf, np.transpose(x, (0, 2, 3, 1)))
  _close(r, r_ref_t)
  _close(logits, ref["logits_224"])          # the head maps the reference r to the logits
  if clf.features_nonnegative:
    assert np.asarray(r).min() >= 0


def test_reference_layer_densenet201():
  """densenet201: the same torch DenseNet code, torchvision's block config, random weights."""
  sd = recipe_state_dict(tvc.source_shapes("densenet201").items(), DENSENET201_SEED)
  net = tvr.MODELS["densenet201"]()
  net.load_state_dict(sd, strict=True)             # the key table is torchvision's
  x = np.random.default_rng(0).normal(size=(2, 3, DENSENET201_SIZE, DENSENET201_SIZE))
  x = x.astype(np.float32)
  logits_t, _, r_ref_t = tvr.run(net, "densenet201", torch.from_numpy(x))
  small = classifiers.InputSpec(resize=DENSENET201_SIZE, crop=DENSENET201_SIZE)
  clf = _lis_reference("densenet201", sd, small)
  del sd, net
  assert clf.feature_dim == r_ref_t.shape[1] == 1920 * 2 * 2
  r, logits = _ours(clf, np.transpose(x, (0, 2, 3, 1)))
  _close(r, r_ref_t)
  _close(logits, logits_t)
  assert np.asarray(r).min() < 0 and not clf.features_nonnegative      # before norm5's ReLU
  assert clf.with_settings(feature_layer="penultimate").features_nonnegative
  # At the ImageNet crop (224 px) the width is the reference's 1920 x 7 x 7.
  assert classifiers.reference_dim(clf.module, 224) == REFERENCE_DIMS["densenet201"]


def test_load_chooses_the_layer(tmp_path):
  clf = classifiers.load("tiny-resnet-random", feature_layer="reference", quantize=True)
  assert clf.feature_layer == "reference" and clf.input_spec.quantize
  assert clf.feature_dim == classifiers.load("tiny-resnet-random").feature_dim   # ResNet: same
  with pytest.raises(ValueError, match="feature_layer"):
    classifiers.load("tiny-resnet-random", feature_layer="fc7")
