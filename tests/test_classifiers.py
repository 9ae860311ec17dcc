"""Flax classifiers: parity with torchvision (fixtures, through the .pth -> CLI -> load path),
the Classifier pytree, built-ins, loading errors, and import without torch."""
import functools
import json
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from converters import torchvision as tvc
from lis_jax import classifiers, io
from tests.conftest import ROOT
from tests.torchvision_state_dicts import fixture_state_dict

PARITY_ARCHS = ("resnet18", "resnet50", "vgg16", "alexnet", "densenet121")
SIZES = (224, 160)
# Issue #2: float32 parity, max |diff| <= 1e-4 * max(1, max |reference|).
PARITY_RTOL = 1e-4

# Each parity model runs once per size: compile fast (LLVM -O0); the arithmetic is the same.
_jit_fast = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


@pytest.fixture(scope="module")
def converted(fixtures_dir, tmp_path_factory):
  """arch -> classifier converted from the fixture's state_dict: torch.save, CLI, load."""
  cache = {}

  def get(arch):
    if arch not in cache:
      tmp = tmp_path_factory.mktemp(arch)
      torch.save(fixture_state_dict(fixtures_dir, arch)[1], tmp / f"{arch}.pth")
      argv = ["--arch", arch, "--weights", str(tmp / f"{arch}.pth"), "--out", str(tmp / "ckpt")]
      assert tvc.main(argv) == 0
      (tmp / f"{arch}.pth").unlink()
      cache.clear()                   # Keep one model in memory (VGG16 is 0.5 GB).
      cache[arch] = classifiers.load(str(tmp / "ckpt"))
    return cache[arch]

  return get


@pytest.mark.parametrize("arch,size", [(a, s) for a in PARITY_ARCHS for s in SIZES])
def test_parity_with_torchvision(fixtures_dir, converted, arch, size):
  clf = converted(arch)
  ref = np.load(fixtures_dir / f"tv_{arch}.npz")
  x = np.transpose(ref[f"x_{size}"], (0, 2, 3, 1))                      # NCHW -> NHWC

  @_jit_fast
  def run(clf, x):
    r = clf.features(x)                                                # [N, D]
    return r, clf.head(r)

  r, logits = run(clf, x)
  assert clf.feature_dim == r.shape[1] and clf.num_classes == 1000
  for got, want in ((r, ref[f"r_{size}"]), (logits, ref[f"logits_{size}"])):
    assert got.shape == want.shape
    err = np.abs(np.asarray(got) - want).max()
    assert err <= PARITY_RTOL * max(1.0, np.abs(want).max()), err


# ----------------------------------------------------------------------------- Classifier pytree


@pytest.fixture(scope="module")
def tiny():
  return classifiers.load("tiny-resnet-random")


@pytest.mark.parametrize("size", [16, 32, 64])
def test_tiny_builtin_takes_small_generator_images(tiny, size):
  img = jax.random.uniform(jax.random.key(size), (2, size, size, 3), minval=-1, maxval=1)
  x = tiny.preprocess(img)
  assert x.shape == (2, 32, 32, 3)                                      # resized to 32 px
  r = tiny.features(x)
  assert r.shape == (2, tiny.feature_dim) and tiny(x).shape == (2, 1000)
  np.testing.assert_allclose(np.asarray(tiny(x)), np.asarray(tiny.head(r)), rtol=1e-6, atol=1e-6)


def test_tiny_builtin_is_reproducible(tiny):
  again = classifiers.load("tiny-resnet-random")
  jax.tree_util.tree_map(np.testing.assert_array_equal, tiny.variables, again.variables)
  other = classifiers.load("tiny-resnet-random", seed=1)
  assert not np.array_equal(other.variables["params"]["fc"]["kernel"],
                            tiny.variables["params"]["fc"]["kernel"])


def test_classifier_is_a_pytree_of_its_variables(tiny):
  leaves = jax.tree_util.tree_leaves(tiny)
  assert len(leaves) == len(jax.tree_util.tree_leaves(tiny.variables))
  other = classifiers.load("tiny-resnet-random", seed=1)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def logits(clf, x):
    return clf(x)

  a, b = logits(tiny, x), logits(other, x)                              # new weights, no retrace
  assert not np.allclose(np.asarray(a), np.asarray(b))


def test_gradients_flow_through_preprocess_and_features(tiny):
  img = jax.random.uniform(jax.random.key(0), (2, 40, 40, 3), minval=-1, maxval=1)
  g = jax.jit(jax.grad(lambda im: tiny.features(tiny.preprocess(im)).sum()))(img)
  assert g.shape == img.shape and np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).max() > 0


def test_small_resnet_variant_for_toy_worlds():
  module = classifiers.resnet.ResNet(block="basic", stage_sizes=(1, 1, 1), widths=(8, 16, 32),
                                     stem="cifar", stem_width=8, num_classes=5)
  variables = classifiers.random_variables(module, jax.random.key(0), 64)
  clf = classifiers.Classifier.create(module, variables, "toy",
                                      classifiers.InputSpec(resize=None, crop=None))
  x = clf.preprocess(jnp.zeros((3, 64, 64, 3)))
  assert x.shape == (3, 64, 64, 3) and clf(x).shape == (3, 5) and clf.feature_dim == 32
  # Train-mode BatchNorm: batch statistics are used and the running ones updated with
  # torch's momentum 0.1: new = 0.9 * old + 0.1 * batch mean (old: 0).
  x = jax.random.normal(jax.random.key(1), (4, 64, 64, 3))
  train_step = jax.jit(functools.partial(module.apply, train=True, mutable=["batch_stats"]))
  _, upd = train_step(variables, x)
  conv_out = jax.lax.conv_general_dilated(
      x, variables["params"]["conv1"]["kernel"], (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest")
  np.testing.assert_allclose(np.asarray(upd["batch_stats"]["bn1"]["mean"]),
                             0.1 * np.asarray(conv_out.mean(axis=(0, 1, 2))), rtol=1e-4, atol=1e-6)


def test_build_random_architecture():
  clf = classifiers.build("resnet18", num_classes=10, key=jax.random.key(0))
  assert (clf.arch, clf.num_classes, clf.feature_dim) == ("resnet18", 10, 512)
  assert clf(clf.preprocess(jnp.zeros((1, 64, 64, 3)))).shape == (1, 10)
  with pytest.raises(ValueError, match="unknown classifier architecture 'resnet19'"):
    classifiers.build("resnet19", key=jax.random.key(0))


# ----------------------------------------------------------------------------- loading


def _save_resnet18(out, variables, **meta):
  io.save_checkpoint(str(out), variables, dict(kind="torchvision", arch="resnet18",
                                                num_classes=10, **meta))


def test_load_round_trip(tmp_path):
  clf = classifiers.build("resnet18", num_classes=10, key=jax.random.key(0))
  _save_resnet18(tmp_path / "ck", clf.variables)
  again = classifiers.load(str(tmp_path / "ck"))
  x = jax.random.normal(jax.random.key(1), (1, 64, 64, 3))
  np.testing.assert_array_equal(np.asarray(again(x)), np.asarray(clf(x)))


def test_load_reports_structure_mismatch(tmp_path):
  variables = classifiers.build("resnet18", num_classes=10, key=jax.random.key(0)).variables
  _save_resnet18(tmp_path / "ck", variables)
  meta = json.loads((tmp_path / "ck" / "meta.json").read_text())
  meta["arch"] = "resnet34"
  (tmp_path / "ck" / "meta.json").write_text(json.dumps(meta))
  with pytest.raises(io.CheckpointError, match="missing: +batch_stats/layer1_2/bn1/mean"):
    classifiers.load(str(tmp_path / "ck"))


@pytest.mark.parametrize("meta,message", [
    (dict(kind="stylegan_xl"), "kind 'stylegan_xl' is not a classifier"),
    (dict(kind="torchvision", arch="resnet19", num_classes=10), "known 'arch'"),
])
def test_load_rejects_bad_meta(tmp_path, meta, message):
  (tmp_path / "ck").mkdir()
  (tmp_path / "ck" / "meta.json").write_text(json.dumps(meta))
  with pytest.raises(io.CheckpointError, match=message):
    classifiers.load(str(tmp_path / "ck"))


def test_load_unknown_name():
  with pytest.raises(io.CheckpointError, match="neither a checkpoint directory nor a built-in"):
    classifiers.load("no-such-classifier")


def test_import_without_torch():
  code = (
      "import sys\n"
      "sys.modules['torch'] = None  # any 'import torch' now raises ImportError\n"
      "import pkgutil, importlib, jax\n"
      "import lis_jax, lis_jax.classifiers as c\n"
      "for m in pkgutil.iter_modules(c.__path__):\n"
      "  importlib.import_module('lis_jax.classifiers.' + m.name)\n"
      "clf = c.load('tiny-resnet-random')\n"
      "print(clf(clf.preprocess(jax.numpy.zeros((1, 16, 16, 3)))).shape)\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == "(1, 1000)"
