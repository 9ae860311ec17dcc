"""StyleGAN-XL port: parity with the reference PyTorch outputs, converter CLI, pytree.

Each fixture snapshot is converted through the command-line entry point into a temp
dir, loaded with `generators.load`, and compared with the reference's mapping, image,
every layer's feature map and the gradient of sum(image * grad_R) w.r.t. ws.
"""
import functools
import hashlib
import os
import pickle
import pickletools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from converters import stylegan_xl as convert_sgxl
from lis_jax import generators, io
from lis_jax.generators import stylegan_xl as sx

# float32 through ~20 layers of convolutions and FIR filters, accumulated in a different
# order than PyTorch's: a few ulps of the largest magnitude per value.
VALUE_RTOL = 1e-4
# Gradients add one more backward chain of the same ops: relative to the largest entry.
GRAD_RTOL = 1e-3

FIXTURES = ("sgxl_stem16", "sgxl_sr64")
# Snapshot pickle -> the reference outputs of its G_ema (FIXTURES.md): the realistic
# stand-ins of a released snapshot (protocol 4 with D, protocol 3) hold the same G_ema.
PARITY_CASES = {"sgxl_stem16": "sgxl_stem16", "sgxl_sr64": "sgxl_sr64",
                "sgxl_realistic": "sgxl_realistic", "sgxl_realistic_proto3": "sgxl_realistic"}
# The hyperparameters the fixture snapshots were trained with (a 16 px stem of 6 layers,
# then for sr64 two x2 stages of 4 head layers), as read from their pickles.
FIXTURE_HPARAMS = {
    "sgxl_stem16": dict(z_dim=64, w_dim=64, channel_base=1024, channel_max=48,
                        stem_layers=6, head_layers=()),
    "sgxl_sr64": dict(z_dim=64, w_dim=64, channel_base=1024, channel_max=48,
                      stem_layers=6, head_layers=(4, 4)),
}


def assert_close(got, ref, rtol, what):
  got, ref = np.asarray(got), np.asarray(ref)
  assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
  err = float(np.max(np.abs(got - ref)))
  bound = rtol * max(1.0, float(np.max(np.abs(ref))))
  assert err <= bound, f"{what}: max |diff| {err:.3g} > {bound:.3g}"


def nchw(x):
  return np.transpose(np.asarray(x), (0, 3, 1, 2))


@pytest.fixture(scope="module", params=PARITY_CASES)
def case(request, fixtures_dir, tmp_path_factory):
  """(name, generator converted through the CLI with no flags, reference npz)."""
  name = request.param
  out = tmp_path_factory.mktemp(name) / "ckpt"
  rc = convert_sgxl.main(["--pkl", str(fixtures_dir / f"{name}.pkl"), "--out", str(out)])
  assert rc == 0
  ref = dict(np.load(fixtures_dir / f"{PARITY_CASES[name]}.npz"))
  return name, generators.load(str(out)), ref


def test_meta_and_attributes(case, fixtures_dir):
  name, G, ref = case
  assert isinstance(G, sx.Generator)
  assert (G.z_dim, G.c_dim, G.num_classes) == (ref["z"].shape[1], 1000, 1000)
  assert (G.num_ws, G.w_dim) == ref["ws"].shape[1:]
  assert G.resolution == ref["img"].shape[-1]
  assert list(G.layer_names) == list(ref["layer_names"][1:])


@jax.jit
def _synthesis_outputs(G, ws, grad_r):
  """Image, every feature map and d/d ws sum(image * grad_r), in one program. Module-level
  so that fixtures of one architecture (the spec is static) share its compilation."""
  img, vjp = jax.vjp(G.synthesis, ws)
  return img, G.synthesis_features(ws), vjp(grad_r)[0]


@pytest.fixture(scope="module")
def outputs(case):
  """Everything the reference recorded."""
  _, G, ref = case
  z, classes = jnp.asarray(ref["z"], jnp.float32), jnp.asarray(ref["classes"])
  grad_r = jnp.asarray(np.transpose(ref["grad_R"], (0, 2, 3, 1)))  # NHWC
  img, feats, grad = _synthesis_outputs(G, jnp.asarray(ref["ws"]), grad_r)
  return dict(ws_psi1=G.mapping(z, classes, psi=1.0),
              ws=G.mapping(z, classes, psi=float(ref["psi"])), img=img, feats=feats,
              grad_ws=grad)


@pytest.mark.parametrize("key", ["ws_psi1", "ws"])
def test_mapping_matches_reference(case, outputs, key):
  assert_close(outputs[key], case[2][key], VALUE_RTOL, key)


def test_image_matches_reference(case, outputs):
  assert outputs["img"].dtype == jnp.float32
  assert_close(nchw(outputs["img"]), case[2]["img"], VALUE_RTOL, "img")


def test_every_feature_matches_reference(case, outputs):
  ref, feats = case[2], outputs["feats"]
  assert sorted(feats) == sorted(ref["layer_names"])
  for layer in ref["layer_names"]:
    assert_close(nchw(feats[layer]), ref[f"feat_{layer}"], VALUE_RTOL, f"feat_{layer}")


def test_gradient_matches_reference(case, outputs):
  assert_close(outputs["grad_ws"], case[2]["grad_ws"], GRAD_RTOL, "grad_ws")


@pytest.mark.parametrize("name", FIXTURES)
def test_spec_from_hyperparameters_reproduces_snapshot(name, fixtures_dir):
  """build_spec (used for random presets) grows the network exactly as the trainer did."""
  from converters import sgxl_pickle
  snap = sgxl_pickle.load_snapshot(str(fixtures_dir / f"{name}.pkl"))
  _, spec = convert_sgxl.convert_generator(snap["G_ema"])
  assert sx.build_spec(**FIXTURE_HPARAMS[name]) == spec


def test_synthesis_does_not_retrace_for_new_params():
  G1 = generators.load("sgxl-tiny")
  G2 = sx.tiny(seed=2)
  ws = jnp.zeros((1, G1.num_ws, G1.w_dim))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def synth(G, ws):
    return G.synthesis(ws)

  a, b = synth(G1, ws), synth(G2, ws)
  assert not np.allclose(a, b)  # the params really were arguments


# Loose bound for bfloat16 compute (8 mantissa bits through ~8 layers), relative to the
# float32 image's largest magnitude.
BF16_RTOL = 0.1


def test_builtin_tiny_float32_and_bfloat16():
  G = generators.load("sgxl-tiny")
  assert (G.z_dim, G.c_dim, G.resolution) == (64, 1000, 32)
  # The numpy initialiser builds exactly the Flax modules' variable tree.
  io.check_tree(G.variables, sx.expected_variables(G.spec))
  ws = G.mapping(jax.random.normal(jax.random.PRNGKey(0), (2, G.z_dim)), jnp.array([0, 999]))
  img = G.synthesis(ws)
  assert img.shape == (2, G.resolution, G.resolution, 3) and img.dtype == jnp.float32
  assert np.isfinite(np.asarray(img)).all()
  img_bf16 = G.astype("bfloat16").synthesis(ws)
  assert img_bf16.dtype == jnp.float32
  assert_close(img_bf16, img, BF16_RTOL, "bfloat16 image")


# ----------------------------------------------------------------------------- bad input


def _run_cli(pkl, out, capsys):
  rc = convert_sgxl.main(["--pkl", str(pkl), "--out", str(out)])
  err = capsys.readouterr().err
  return rc, err


def _patched_fixture(fixtures_dir, tmp_path, old: bytes, new: bytes):
  """The stem fixture with a same-length byte substitution (the pickle stays valid)."""
  assert len(old) == len(new)
  data = (fixtures_dir / "sgxl_stem16.pkl").read_bytes()
  assert old in data
  path = tmp_path / "patched.pkl"
  path.write_bytes(data.replace(old, new))
  return path


class _SystemCall:
  def __init__(self, cmd):
    self.cmd = cmd

  def __reduce__(self):
    return os.system, (self.cmd,)


def test_cli_missing_file(tmp_path, capsys):
  rc, err = _run_cli(tmp_path / "nope.pkl", tmp_path / "out", capsys)
  assert rc == 1 and err.startswith("error: ") and "not found" in err
  assert not (tmp_path / "out").exists()


def test_cli_truncated_file(tmp_path, fixtures_dir, capsys):
  pkl = tmp_path / "trunc.pkl"
  pkl.write_bytes((fixtures_dir / "sgxl_stem16.pkl").read_bytes()[:100_000])
  rc, err = _run_cli(pkl, tmp_path / "out", capsys)
  assert rc == 1 and "truncated" in err and len(err.strip().splitlines()) == 1
  assert not (tmp_path / "out").exists()


def test_cli_not_a_snapshot(tmp_path, capsys):
  pkl = tmp_path / "dict.pkl"
  pkl.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
  rc, err = _run_cli(pkl, tmp_path / "out", capsys)
  assert rc == 1 and "not a StyleGAN-XL snapshot" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("old,new,message", [
    (b"layer_names", b"layer_nemes", "has no layer_names"),
    (b"SynthesisLayer", b"SynthesisLayex", "not a SynthesisLayer"),
])
def test_cli_unsupported_architecture(tmp_path, fixtures_dir, capsys, old, new, message):
  out = tmp_path / "out"
  rc, err = _run_cli(_patched_fixture(fixtures_dir, tmp_path, old, new), out, capsys)
  assert rc == 1 and "unsupported architecture" in err and message in err
  assert len(err.strip().splitlines()) == 1
  assert not out.exists()
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_cli_refuses_a_generator_that_is_os_system_and_runs_nothing(tmp_path, capsys):
  marker = tmp_path / "pwned"
  pkl = tmp_path / "evil.pkl"
  pkl.write_bytes(pickle.dumps({"G_ema": _SystemCall(f"touch {marker}")}))
  rc, err = _run_cli(pkl, tmp_path / "out", capsys)
  assert rc == 1 and len(err.strip().splitlines()) == 1
  assert re.search(r"refused: G_ema is a call of (posix|nt|os)\.system \(recorded, never run\)", err)
  assert not marker.exists()
  assert not (tmp_path / "out").exists()


def _fixture_with_d(fixtures_dir, tmp_path, D):
  """The stem fixture with its 'D' replaced by `D` (appended as a protocol-3 SETITEM)."""
  data = (fixtures_dir / "sgxl_stem16.pkl").read_bytes()
  frames = [pos for op, _, pos in pickletools.genops(data) if op.name == "FRAME"]
  for pos in reversed(frames):  # frames only pre-announce lengths; drop them to append
    data = data[:pos] + data[pos + 9:]
  assert data.endswith(b"u.")  # ... SETITEMS on the snapshot dict, STOP
  fragment = pickle.dumps(D, protocol=3)[2:-1]  # no PROTO, STOP or frames; BINPUT memo
  path = tmp_path / "with_d.pkl"
  path.write_bytes(data[:-1] + b"\x8c\x01D" + fragment + b"s.")
  return path


def test_cli_converts_despite_a_call_in_d_that_never_runs(tmp_path, fixtures_dir, capsys):
  marker = tmp_path / "pwned"
  import torch  # converter tests may use torch
  D = {"weight": torch.ones(3), "hook": functools.partial(os.system, f"touch {marker}")}
  pkl = _fixture_with_d(fixtures_dir, tmp_path, D)
  out, plain = tmp_path / "out", tmp_path / "plain"
  assert convert_sgxl.main(["--pkl", str(pkl), "--out", str(out)]) == 0
  line = capsys.readouterr().out.strip()
  assert len(line.splitlines()) == 1
  assert "D (3 tensor values not decoded, 1 inert objects that never ran)" in line
  assert not marker.exists()
  # The generator is exactly what the unmodified fixture converts to.
  assert convert_sgxl.main(["--pkl", str(fixtures_dir / "sgxl_stem16.pkl"), "--out", str(plain)]) == 0
  got, want = io.load_checkpoint(str(out))[0], io.load_checkpoint(str(plain))[0]
  chex.assert_trees_all_equal(got, want)


def test_cli_strict_refuses_the_call_in_d(tmp_path, fixtures_dir, capsys):
  import torch
  D = {"weight": torch.ones(3), "hook": functools.partial(os.system, "true")}
  rc = convert_sgxl.main(["--pkl", str(_fixture_with_d(fixtures_dir, tmp_path, D)),
                          "--out", str(tmp_path / "out"), "--strict"])
  err = capsys.readouterr().err
  assert rc == 1 and len(err.strip().splitlines()) == 1
  assert "unknown global functools.partial (--strict" in err
  assert not (tmp_path / "out").exists()


def test_summary_line_of_the_realistic_snapshot(tmp_path, fixtures_dir, capsys):
  pkl = fixtures_dir / "sgxl_realistic.pkl"
  assert convert_sgxl.main(["--pkl", str(pkl), "--out", str(tmp_path / "out")]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 1
  sha = hashlib.sha256(pkl.read_bytes()).hexdigest()[:12]
  # FIXTURES.md: D holds 8.1 M parameters and buffers (plus the ViT's activations).
  assert re.fullmatch(
      rf"converted G_ema of sgxl_realistic\.pkl \(sha256 {sha}\) to .*: SuperresGenerator "
      r"64px, num_ws 12, w_dim 64, c_dim 1000, [0-9.]+k parameters; decoded [0-9.]+ of "
      r"[0-9.]+ MiB of tensor storage; skipped G \([0-9.]+k tensor values not decoded\), "
      r"D \(8\.[0-9]+M tensor values not decoded, [0-9]+ inert objects that never ran\), "
      r"augment_pipe, training_set_kwargs, progress \(4 tensor values not decoded\)", lines[0])


def test_which_g_converts_and_differs_from_g_ema(tmp_path, fixtures_dir):
  # FIXTURES.md: G and G_ema are distinct objects with distinct weights; the npz holds G_ema's.
  out = tmp_path / "G"
  assert convert_sgxl.main(["--pkl", str(fixtures_dir / "sgxl_realistic_proto3.pkl"),
                            "--out", str(out), "--which", "G"]) == 0
  assert io.load_meta(str(out))["which"] == "G"
  G, ref = generators.load(str(out)), dict(np.load(fixtures_dir / "sgxl_realistic.npz"))
  ws = G.mapping(jnp.asarray(ref["z"], jnp.float32), jnp.asarray(ref["classes"]), psi=1.0)
  assert ws.shape == ref["ws_psi1"].shape
  err = float(np.max(np.abs(np.asarray(ws) - ref["ws_psi1"])))
  # Far outside the parity tolerance that G_ema meets: these are other weights.
  assert err > 100 * VALUE_RTOL * max(1.0, float(np.max(np.abs(ref["ws_psi1"])))), err


@pytest.mark.parametrize("where, path", [
    ("attr", r"G_ema\.synthesis\.L0_36_48\.conv_clamp"),
    ("nested attr", r"G_ema\._init_kwargs\.synthesis_kwargs\.1\.f"),
    ("child slot", r"G_ema\.synthesis\.L0_36_48\._modules\.extra"),
    ("hook", r"G_ema\.mapping\._forward_hooks\.0"),
])
def test_record_inside_the_generator_refused(fixtures_dir, where, path):
  from converters import sgxl_pickle
  G = sgxl_pickle.load_snapshot(str(fixtures_dir / "sgxl_stem16.pkl"))["G_ema"]
  layer = G["synthesis"]["L0_36_48"]
  call = sgxl_pickle.InertCall(sgxl_pickle.GlobalRef("posix", "system"), ("touch x",))
  if where == "attr":
    layer.attrs["conv_clamp"] = call
  elif where == "nested attr":
    G.attrs["_init_kwargs"] = {"synthesis_kwargs": [1, {"f": call}]}
  elif where == "child slot":
    layer.stray["_modules.extra"] = call
  else:
    G["mapping"].internals["_forward_hooks"] = {0: call}
  with pytest.raises(convert_sgxl.ConversionError,
                     match=rf"^refused: {path} is a call of posix\.system \(recorded, never run\); "
                           r"a generator must be plain data \(1 such value\(s\) in G_ema\)$"):
    convert_sgxl.check_plain(G, "G_ema")


def test_foreign_object_inside_the_generator_refused(fixtures_dir):
  from converters import sgxl_pickle
  G = sgxl_pickle.load_snapshot(str(fixtures_dir / "sgxl_stem16.pkl"))["G_ema"]
  G["mapping"].children["embed"] = sgxl_pickle.Node("Evil", "evil.module",
                                                    params=G["mapping"]["embed"].params)
  with pytest.raises(convert_sgxl.ConversionError,
                     match=r"refused: G_ema\.mapping\.embed is an object of class evil\.module\.Evil"):
    convert_sgxl.check_plain(G, "G_ema")


@pytest.mark.parametrize("edit,message", [
    ("extra", r"1 source arrays have no target: synthesis\.L0_36_48\.up_filter4 \(12,\)"),
    ("missing", r"missing array synthesis\.L2_36_48\.bias"),
    ("shape", r"shape: +params/synthesis/L1_36_48/weight got \(3, 3, 48, 47\)"),
])
def test_name_table_reports_unmatched_arrays(fixtures_dir, edit, message):
  from converters import sgxl_pickle
  G = sgxl_pickle.load_snapshot(str(fixtures_dir / "sgxl_stem16.pkl"))["G_ema"]
  S = G["synthesis"]
  if edit == "extra":
    S["L0_36_48"].buffers["up_filter4"] = np.zeros(12, np.float32)
  elif edit == "missing":
    del S["L2_36_48"].params["bias"]
  else:
    S["L1_36_48"].params["weight"] = S["L1_36_48"].params["weight"][:47]
  with pytest.raises(convert_sgxl.ConversionError, match=message):
    convert_sgxl.convert_generator(G)


def test_strict_accepts_a_snapshot_of_plain_data(tmp_path, fixtures_dir):
  # FIXTURES.md: the protocol-3 file has D None; its generators use dill 0.3.4's numpy
  # pattern and _load_type('set'), both recognised data.
  assert convert_sgxl.main(["--pkl", str(fixtures_dir / "sgxl_realistic_proto3.pkl"),
                            "--out", str(tmp_path / "out"), "--strict"]) == 0


def test_strict_refuses_the_realistic_discriminator(tmp_path, fixtures_dir, capsys):
  rc = convert_sgxl.main(["--pkl", str(fixtures_dir / "sgxl_realistic.pkl"),
                          "--out", str(tmp_path / "out"), "--strict"])
  err = capsys.readouterr().err
  assert rc == 1 and len(err.strip().splitlines()) == 1
  # FIXTURES.md: D is the first key with a global outside recognised data.
  assert re.search(r"unknown global (pg_modules|timm|feature_networks)\.", err)
