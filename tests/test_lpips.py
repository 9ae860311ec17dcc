"""LPIPS (VGG16) in JAX against the `lpips` package (0.1.4, torch), on the same weights.

The lpips package builds its trunk with `torchvision.models.vgg16`, and torchvision cannot
load here; the test gives it a stand-in `torchvision` module (sys.modules) whose
`models.vgg16` is a plain-torch VGG16 with torchvision's layer indices, holding the
weights of the fixture `tv_vgg16.json` (FIXTURES.md's recipe) and checked against the
fixture's torchvision logits, so it is the real architecture. The lin weights are the
calibrated ones shipped in the lpips wheel; the JAX side reads the same files through
`converters.lpips` (VGG16 state_dict saved with torch.save, then converted).
"""
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from converters import lpips as lpips_converter
from lis_jax import lpips
from tests.torchvision_state_dicts import fixture_state_dict

LPIPS_PARITY_ATOL = 1e-4   # the bar; measured max |diff| 1.5e-8 at 64 px (float32 both)
FIXTURE_LOGITS_RTOL = 1e-4  # the torch stand-in vs torchvision's logits; measured ~1e-6


def torch_vgg16(state_dict):
  """A plain-torch VGG16 with torchvision's module indices (features.<i>, classifier.<i>).

  Built on the meta device and given `state_dict`'s tensors (assign=True): every weight is
  the state_dict's, as with a strict load, without first drawing 138 M random ones (~1 s).
  """
  nn = torch.nn
  with torch.device("meta"):
    model = _vgg16_modules(nn)
  model.load_state_dict(state_dict, assign=True)
  return model.eval()


def _vgg16_modules(nn):
  feats, c_in = [], 3
  for v in lpips.VGG16_CFG:
    if v == "M":
      feats.append(nn.MaxPool2d(2, 2))
    else:
      feats += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU(inplace=True)]
      c_in = v
  model = nn.Module()
  model.features = nn.Sequential(*feats)
  model.avgpool = nn.AdaptiveAvgPool2d(7)
  model.classifier = nn.Sequential(nn.Linear(512 * 49, 4096), nn.ReLU(True), nn.Dropout(),
                                   nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(),
                                   nn.Linear(4096, 1000))
  model.forward = lambda x: model.classifier(torch.flatten(model.avgpool(model.features(x)), 1))
  return model


@pytest.fixture(scope="module")
def vgg_state_dict(fixtures_dir):
  _, sd = fixture_state_dict(fixtures_dir, "vgg16")
  return sd


@pytest.fixture(scope="module")
def torch_lpips(vgg_state_dict):
  """lpips.LPIPS(net='vgg') with the stand-in torchvision returning the fixture's VGG16."""
  models = types.ModuleType("torchvision.models")
  models.vgg16 = lambda pretrained=False, **kw: torch_vgg16(vgg_state_dict)
  tv = types.ModuleType("torchvision")
  tv.models = models
  saved = {k: sys.modules.get(k) for k in ("torchvision", "torchvision.models")}
  sys.modules.update({"torchvision": tv, "torchvision.models": models})
  try:
    import lpips as lpips_package  # pylint: disable=import-outside-toplevel
    model = lpips_package.LPIPS(net="vgg", version="0.1", verbose=False).eval()
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v
  return model


def test_stand_in_is_torchvision_vgg16(fixtures_dir, vgg_state_dict):
  """The stand-in reproduces torchvision's logits of the fixture: the real architecture."""
  ref = np.load(fixtures_dir / "tv_vgg16.npz")
  with torch.no_grad():
    got = torch_vgg16(vgg_state_dict)(torch.from_numpy(ref["x_224"])).numpy()
  np.testing.assert_allclose(got, ref["logits_224"], rtol=FIXTURE_LOGITS_RTOL,
                             atol=FIXTURE_LOGITS_RTOL * np.abs(ref["logits_224"]).max())


def test_parity_with_lpips_package(tmp_path, vgg_state_dict, torch_lpips):
  pth = tmp_path / "vgg16.pth"
  torch.save(vgg_state_dict, pth)
  ckpt = tmp_path / "lpips_ckpt"
  assert lpips_converter.main(["--vgg", str(pth), "--out", str(ckpt)]) == 0
  P = lpips.load(str(ckpt))
  rng = np.random.default_rng(0)
  x0 = rng.uniform(-1, 1, (3, 64, 64, 3)).astype(np.float32)
  x1 = np.clip(x0 + rng.normal(0, 0.3, x0.shape), -1, 1).astype(np.float32)
  x1[2] = rng.uniform(-1, 1, x1.shape[1:])       # an unrelated image: a large distance
  with torch.no_grad():
    want = torch_lpips(torch.from_numpy(x0.transpose(0, 3, 1, 2)),
                       torch.from_numpy(x1.transpose(0, 3, 1, 2))).numpy().reshape(-1)
  distance = jax.jit(lambda P, a, b: P(a, b))
  got = np.asarray(distance(P, x0, x1))
  assert want.min() > 0.01                        # non-trivial distances (0.024-0.11)
  np.testing.assert_allclose(got, want, rtol=0, atol=LPIPS_PARITY_ATOL)
  # The same compiled program (same shapes): op-by-op it compiled ~100 small programs (~2 s).
  np.testing.assert_allclose(np.asarray(distance(P, x0, x0)), 0.0, atol=1e-7)


def test_lin_weights_are_the_packages(tmp_path):
  """The converter reads the calibrated weights: non-negative, as the package trains them."""
  lins = lpips_converter.read_lin(lpips_converter.default_lin_path())
  assert [w.shape[0] for w in lins] == [64, 128, 256, 512, 512]
  assert all((w >= 0).all() and w.max() > 0 for w in lins)


def test_converter_refuses_wrong_files(tmp_path, capsys):
  """A lin file of other shapes, and a VGG file that is not VGG16: one line each, nothing written."""
  bad = tmp_path / "bad.pth"
  torch.save({"lin0.model.1.weight": torch.zeros(1, 3, 1, 1)}, bad)
  with pytest.raises(lpips_converter.tvc.ConversionError, match="not the lpips VGG lin weights"):
    lpips_converter.read_lin(str(bad))
  assert lpips_converter.main(["--vgg", str(bad), "--out", str(tmp_path / "o")]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert err[0].startswith("error:") and not (tmp_path / "o").exists()


def test_random_lpips_is_a_metric_like_distance():
  """Zero on equal images, grows with the perturbation, gradients are finite."""
  P = lpips.random_lpips(jax.random.key(0), width_divisor=8)
  x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), minval=-1, maxval=1)
  noise = jax.random.normal(jax.random.key(2), x.shape)
  dist = jax.jit(lambda P, a, b: P(a, b).mean())
  d = [float(dist(P, x, x + s * noise)) for s in (0.0, 0.05, 0.2)]
  assert d[0] < 1e-6 < d[1] < d[2]
  g = jax.jit(jax.grad(lambda P, y: P(x, y).sum(), argnums=1))(P, x + 0.1 * noise)
  assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0
