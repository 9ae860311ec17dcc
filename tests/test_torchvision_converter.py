"""converters.torchvision: name tables of every architecture (against the fixtures' keys and
torchvision's documented parameter counts), live torch modules, clean failures on bad input.
Parity of converted models with torchvision's outputs is in test_classifiers.py."""
import datetime
import hashlib
import json
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from converters import torchvision as tvc
from lis_jax import classifiers
from lis_jax.classifiers import layers
from tests.conftest import ROOT
from tests.torchvision_state_dicts import fixture_state_dict, zeros_state_dict

FIXTURE_ARCHS = ("resnet18", "resnet50", "vgg16", "alexnet", "densenet121")
# Issue #2: float32 parity, max |diff| <= 1e-4 * max(1, max |reference|).
PARITY_RTOL = 1e-4
# Parameter counts documented by torchvision (pytorch.org/vision/stable/models, "num_params").
TORCHVISION_NUM_PARAMS = {
    "resnet18": 11689512, "resnet34": 21797672, "resnet50": 25557032, "resnet101": 44549160,
    "resnet152": 60192808, "wide_resnet50_2": 68883240, "alexnet": 61100840,
    "vgg11": 132863336, "vgg11_bn": 132868840, "vgg13": 133047848, "vgg13_bn": 133053736,
    "vgg16": 138357544, "vgg16_bn": 138365992, "vgg19": 143667240, "vgg19_bn": 143678248,
    "densenet121": 7978856, "densenet161": 28681000, "densenet169": 14149480,
    "densenet201": 20013928,
}
# The penultimate width (input of the last Linear) of each torchvision model.
FEATURE_DIMS = {
    **{a: 512 for a in ("resnet18", "resnet34")},
    **{a: 2048 for a in ("resnet50", "resnet101", "resnet152", "wide_resnet50_2")},
    **{a: 4096 for a in ("alexnet", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16",
                         "vgg16_bn", "vgg19", "vgg19_bn")},
    "densenet121": 1024, "densenet161": 2208, "densenet169": 1664, "densenet201": 1920,
}
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


# ----------------------------------------------------------------------------- fixture architectures


@pytest.mark.parametrize("arch", FIXTURE_ARCHS)
def test_table_matches_fixture_keys(fixtures_dir, arch):
  spec = json.loads((fixtures_dir / f"tv_{arch}.json").read_text())
  want = [(k, tuple(s)) for k, s in spec["keys_shapes"]]
  assert list(tvc.source_shapes(arch).items()) == want


def test_meta_records_source(tmp_path):
  torch.save(zeros_state_dict("resnet18", num_classes=7), tmp_path / "w.pth")
  assert tvc.main(["--arch", "resnet18", "--weights", str(tmp_path / "w.pth"),
                   "--out", str(tmp_path / "out")]) == 0
  got = json.loads((tmp_path / "out" / "meta.json").read_text())
  assert got["kind"] == "torchvision" and got["arch"] == "resnet18"
  assert got["num_classes"] == 7 and got["feature_dim"] == 512
  assert got["sha256"] == hashlib.sha256((tmp_path / "w.pth").read_bytes()).hexdigest()
  assert got["source"] == str(tmp_path / "w.pth")
  clf = classifiers.load(str(tmp_path / "out"))
  assert (clf.arch, clf.num_classes, clf.feature_dim) == ("resnet18", 7, 512)


def test_live_module_matches_torch(fixtures_dir):
  """A live torch.nn.Module (AlexNet written out here; torchvision's wheels do not load)."""
  nn = torch.nn
  model = nn.Module()
  model.features = nn.Sequential(
      nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Conv2d(64, 192, 5, padding=2),
      nn.ReLU(), nn.MaxPool2d(3, 2), nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
      nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(), nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
      nn.MaxPool2d(3, 2))
  model.classifier = nn.Sequential(nn.Dropout(), nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(),
                                   nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 1000))
  model.load_state_dict(fixture_state_dict(fixtures_dir, "alexnet")[1], strict=True)
  model.eval()
  ref = np.load(fixtures_dir / "tv_alexnet.npz")
  variables, meta = tvc.convert("alexnet", model)
  clf = classifiers.Classifier.create(classifiers.module_for("alexnet"), variables, "alexnet")
  x = ref["x_160"]
  with torch.no_grad():
    h = nn.functional.adaptive_avg_pool2d(model.features(torch.from_numpy(x)), 6).flatten(1)
    want = model.classifier(h).numpy()
  np.testing.assert_allclose(want, ref["logits_160"], rtol=0, atol=1e-5)   # the torch side is AlexNet
  got = np.asarray(clf(np.transpose(x, (0, 2, 3, 1))))
  assert np.abs(got - want).max() <= PARITY_RTOL * max(1.0, np.abs(want).max())
  assert meta["sha256"] is None and "Module" in meta["source"]


@pytest.mark.parametrize("n_in,n_out", [(4, 6), (5, 7), (13, 6), (9, 7), (7, 7), (1, 6), (10, 3)])
def test_adaptive_avg_pool_matches_torch(n_in, n_out):
  x = np.random.default_rng(0).normal(size=(2, 3, n_in, n_in + 1)).astype(np.float32)
  want = torch.nn.AdaptiveAvgPool2d(n_out)(torch.from_numpy(x)).numpy()
  got = layers.adaptive_avg_pool(np.transpose(x, (0, 2, 3, 1)), n_out)
  np.testing.assert_allclose(np.transpose(np.asarray(got), (0, 3, 1, 2)), want, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- every architecture


@pytest.mark.parametrize("arch", sorted(classifiers.ARCHS))
def test_every_architecture_converts(arch):
  """Name table round trip: each source tensor lands, transposed, on its own Flax leaf.

  Each tensor is a zero-memory broadcast of a distinct constant, so a swapped mapping
  shows up as a wrong value and every shape is checked without allocating the model.
  """
  shapes = tvc.source_shapes(arch, num_classes=10)
  n_params = sum(int(np.prod(s)) for k, s in shapes.items() if not k.endswith(_BUFFERS))
  n_params_1000 = n_params + (1000 - 10) * (FEATURE_DIMS[arch] + 1)
  assert n_params_1000 == TORCHVISION_NUM_PARAMS[arch]
  sd = {k: np.broadcast_to(np.float32(i), s) for i, (k, s) in enumerate(shapes.items())}
  variables, meta = tvc.convert_state_dict(arch, sd)
  assert meta["num_classes"] == 10 and meta["feature_dim"] == FEATURE_DIMS[arch]
  module = classifiers.module_for(arch, 10)
  for e in tvc.name_table(module):
    for r in tvc.KINDS[e.kind]:
      key = f"{e.torch}.{r.suffix}"
      leaf = tvc.get_leaf(variables, r.collection, e.flax, r.leaf)
      want_shape = shapes[key] if r.perm is None else tuple(shapes[key][p] for p in r.perm)
      assert leaf.shape == want_shape, key
      assert leaf[(0,) * leaf.ndim] == sd[key][(0,) * leaf.ndim], key


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_convert_to_float32(dtype):
  # Running variances are >= 0 (the converter refuses negative ones): |normal|.
  sd = {k: (v.normal_().abs_() if k.endswith("running_var") else v.normal_())
        if v.is_floating_point() else v
        for k, v in zeros_state_dict("resnet18", num_classes=4).items()}
  variables, _ = tvc.convert("resnet18", {k: v.to(dtype) if v.is_floating_point() else v
                                          for k, v in sd.items()})
  kernel = variables["params"]["fc"]["kernel"]
  assert kernel.dtype == np.float32
  np.testing.assert_array_equal(kernel, sd["fc.weight"].to(dtype).float().numpy().T)


def test_legacy_densenet_keys_and_dataparallel_prefix():
  shapes = tvc.source_shapes("densenet121", num_classes=10)
  sd = {k: np.broadcast_to(np.float32(i), s) for i, (k, s) in enumerate(shapes.items())}
  # Hosted DenseNet files say 'denselayer1.norm.1.weight'; DataParallel adds 'module.'.
  legacy = {"module." + k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2.")
            if "denselayer" in k else "module." + k: v for k, v in sd.items()}
  assert legacy.keys() != {"module." + k for k in sd}
  want, _ = tvc.convert_state_dict("densenet121", sd)
  got, _ = tvc.convert_state_dict("densenet121", legacy)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(a[(0,) * a.ndim], b[(0,) * b.ndim]),
                         got, want)


# ----------------------------------------------------------------------------- bad input


def _save(obj):
  def make(tmp_path):
    torch.save(obj() if callable(obj) else obj, tmp_path / "w.pth")
    return tmp_path / "w.pth"
  return make


def _truncated(tmp_path):
  torch.save(zeros_state_dict("resnet18"), tmp_path / "full.pth")
  data = (tmp_path / "full.pth").read_bytes()
  (tmp_path / "w.pth").write_bytes(data[: len(data) // 2])
  return tmp_path / "w.pth"


def _text(tmp_path):
  (tmp_path / "w.pth").write_text("not a torch file\n")
  return tmp_path / "w.pth"


BAD_INPUTS = {
    # name: (make the weights file, --arch, what the one-line error must say)
    "missing-file": (lambda tmp: tmp / "nope.pth", "resnet18", "weights file not found"),
    "pickled-list": (_save([torch.zeros(3)]), "resnet18", "not a state_dict (it holds a list"),
    "pickled-tensor": (_save(torch.zeros(3)), "resnet18", "not a state_dict (it holds a Tensor"),
    "dict-of-ints": (_save({"fc.weight": 1}), "resnet18", "not a state_dict of tensors"),
    "pickled-object": (_save({"fc.weight": datetime.date(2024, 1, 1)}), "resnet18",
                       "refusing"),                    # weights_only: no arbitrary unpickling
    "truncated": (_truncated, "resnet18", "cannot read"),
    "not-torch": (_text, "resnet18", "cannot read"),
    "unknown-arch": (_save(lambda: zeros_state_dict("resnet18")), "resnet19", "unknown --arch 'resnet19'"),
    "missing-keys": (_save(lambda: zeros_state_dict("resnet18")), "resnet34",
                     "missing:    layer1.2.conv1.weight (64, 64, 3, 3)"),
    "unexpected-keys": (_save(lambda: zeros_state_dict("resnet34")), "resnet18",
                        "unexpected: layer1.2.conv1.weight (64, 64, 3, 3)"),
    "shape-mismatch": (_save(lambda: zeros_state_dict("resnet50")), "wide_resnet50_2",
                       "shape:      layer1.0.conv1.weight got (64, 64, 1, 1) expected (128, 64, 1, 1)"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_cleanly(case, tmp_path, capsys):
  make, arch, message = BAD_INPUTS[case]
  weights = make(tmp_path)
  out = tmp_path / "out"
  rc = tvc.main(["--arch", arch, "--weights", str(weights), "--out", str(out)])
  err = capsys.readouterr().err
  assert rc == 1
  assert err.startswith("error: ") and "Traceback" not in err
  assert message in err, err
  assert not out.exists()  # (an existing --out is never touched: test_converter_cli.py)
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp left


def test_command_line_error_is_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "converters.torchvision", "--arch", "resnet18",
       "--weights", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "out")],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines() == [f"error: weights file not found: {tmp_path / 'nope.pth'}"]
  assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- round 2 (issue 22)

# A 2-core test machine's python + torch + jax import and a refused conversion stay below
# 0.5 GiB resident (measured 0.40 GiB, /usr/bin/time -v); an address-space cap of 6 GiB
# leaves room for JAX's reservations while a [1e8, 512] float32 weight (205 GB) cannot fit.
CONVERTER_AS_LIMIT = 6 << 30


def _with(**changes):
  def make():
    sd = zeros_state_dict("resnet18")
    for key, value in changes.items():
      sd[key.replace("__", ".")] = value() if callable(value) else value
    return sd
  return make


def _nan(shape):
  a = torch.zeros(shape)
  a.view(-1)[3] = float("nan")
  return a


def _short_record(tmp_path):
  """A .pth whose pickled fc.weight claims more elements than its storage holds."""
  import io as _io
  import zipfile
  sd = zeros_state_dict("resnet18")
  sd["fc.weight"] = torch.arange(15.).reshape(3, 5)
  buf = _io.BytesIO()
  torch.save(sd, buf)
  zin = zipfile.ZipFile(_io.BytesIO(buf.getvalue()))
  with zipfile.ZipFile(tmp_path / "w.pth", "w") as zout:
    for info in zin.infolist():
      data = zin.read(info.filename)
      if info.filename.endswith("data.pkl"):
        assert data.count(b"K\x03K\x05\x86") == 1  # the pickled size (3, 5) -> (5, 5)
        data = data.replace(b"K\x03K\x05\x86", b"K\x05K\x05\x86")
      zout.writestr(info, data)
  return tmp_path / "w.pth"


ROUND2 = {
    # name: (make the weights file, what the one-line error must say)
    "nan-weight": (_save(_with(layer1__0__conv1__weight=lambda: _nan((64, 64, 3, 3)))),
                   "layer1.0.conv1.weight [64, 64, 3, 3] has 1 non-finite"),
    "all-inf-fc": (_save(_with(fc__weight=lambda: torch.full((1000, 512), float("inf")))),
                   "fc.weight [1000, 512] has 512000 non-finite"),
    "nan-running-mean": (_save(_with(bn1__running_mean=lambda: _nan((64,)))),
                         "bn1.running_mean [64] has 1 non-finite"),
    "negative-running-var": (_save(_with(bn1__running_var=lambda: -torch.ones(64))),
                             "bn1.running_var has 64 negative variance(s)"),
    "stride0-fc": (_save(_with(fc__weight=lambda: torch.zeros(1).expand(1000, 512))),
                   "fc.weight [1000, 512] repeats its memory (a stride-0 dimension"),
    "short-storage": (_short_record, "cannot read"),
}


@pytest.mark.parametrize("case", sorted(ROUND2))
def test_round2_bad_weights_refused_naming_the_key(case, tmp_path, capsys):
  make, message = ROUND2[case]
  weights = make(tmp_path)
  out = tmp_path / "out"
  rc = tvc.main(["--arch", "resnet18", "--weights", str(weights), "--out", str(out)])
  err = capsys.readouterr().err
  assert rc == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
  assert message in err, err
  assert not out.exists()


@pytest.mark.parametrize("n_classes", [1_500_000, 100_000_000])
def test_round2_expanded_head_bounded_memory(tmp_path, n_classes):
  """The issue's 44 MB .pth: fc.weight a 1-element storage expanded to [n, 512] (num_classes
  read as n). Refused in one line under a 6 GiB address-space cap."""
  import resource
  sd = zeros_state_dict("resnet18")
  sd["fc.weight"] = torch.zeros(1).expand(n_classes, 512)
  sd["fc.bias"] = torch.zeros(1).expand(n_classes)
  torch.save(sd, tmp_path / "w.pth")
  cap = lambda: resource.setrlimit(resource.RLIMIT_AS, (CONVERTER_AS_LIMIT, CONVERTER_AS_LIMIT))
  proc = subprocess.run(
      [sys.executable, "-m", "converters.torchvision", "--arch", "resnet18",
       "--weights", str(tmp_path / "w.pth"), "--out", str(tmp_path / "out")],
      cwd=ROOT, capture_output=True, text=True, timeout=180, preexec_fn=cap)
  assert proc.returncode == 1, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "fc.weight" in lines[0] and "stride-0" in lines[0], lines
  assert not (tmp_path / "out").exists()
