"""Convert a StyleGAN-XL snapshot pickle to a lis_jax checkpoint, safely.

  python -m converters.stylegan_xl --pkl imagenet256.pkl --out DIR [--which G_ema|G]
      [--force] [--strict]

The pickle is read as data by `converters.sgxl_pickle` (nothing in it is imported,
called or compiled). Everything that is not recognised plain data (the discriminator's
timm classes, hook closures, bound methods, any other call) becomes an inert record;
the conversion fails, with one line naming the path and the global, only if such a
record lies inside the generator being converted (`G_ema`, or `G` with `--which G`).
Only that generator's tensors are decoded. `--strict` refuses any unknown global
anywhere in the file instead (for auditing a file; the released snapshots' `D` fails it).

The generator's node tree is mapped onto the Flax variables of
`lis_jax.generators.stylegan_xl` by an explicit name table: every target must be filled
and every source array consumed (or ignored with a stated reason), otherwise the
conversion fails with a readable list of the differences. Layouts are converted:
fully connected weights [out, in] -> [in, out], convolutions OIHW -> HWIO. The
per-layer architecture (sizes, factors, paddings, FIR filters, gains) becomes the
`GeneratorSpec` stored in meta.json, checked against the arrays' shapes.

`--out` must be absent, an empty directory or an earlier output of this converter
(replaced only with `--force`); nothing else is ever deleted (`converters.outdir`).
Output (atomic: written to a temp dir, then renamed): DIR/params (Orbax) + DIR/meta.json
with kind 'stylegan_xl', the spec, the source's sha256, num_ws, w_dim, z_dim, c_dim,
resolution. Load it with `lis_jax.generators.load(DIR)`. On success one line sums up
what was converted and what was skipped; every error is one line `error: ...`, exit 1.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any

import jax
import numpy as np

from converters import outdir, sgxl_pickle
from converters.sgxl_pickle import Node, SnapshotError
from lis_jax import io
from lis_jax.generators import stylegan_xl as sx

GENERATOR_CLASSES = ("Generator", "SuperresGenerator")
# Source arrays the port does not need (none are known in released snapshots; a snapshot
# trained with filter interpolation would carry `up_filter4` etc. and must fail loudly).
IGNORED_SOURCES: dict[str, str] = {}
# Relative tolerance when checking a layer's stored gains against the ones its
# hyperparameters imply (they are float64 computations of the same formula).
GAIN_RTOL = 1e-9


class ConversionError(ValueError):
  """The snapshot is readable but not a StyleGAN-XL generator this port supports."""


def _unsupported(what: str) -> ConversionError:
  return ConversionError(f"unsupported architecture: {what}")


def _attr(node: Node, name: str, path: str) -> Any:
  if name not in node.attrs:
    raise _unsupported(f"{path} ({node.class_name}) has no attribute {name!r}")
  return node.attrs[name]


def _child(node: Node, name: str, path: str) -> Node:
  if name not in node.children:
    raise _unsupported(f"{path} ({node.class_name}) has no child {name!r}")
  return node.children[name]


def _pair(v: Any) -> tuple[int, int]:
  a = np.broadcast_to(np.asarray(v), [2])
  return int(a[0]), int(a[1])


def _filter(v: np.ndarray | None, path: str) -> Any:
  if v is None:
    return None
  if v.ndim not in (1, 2):
    raise _unsupported(f"{path} has a {v.ndim}-D filter")
  return sx._tuple(np.asarray(v, np.float32))


class _Table:
  """Collects (target path -> array) and remembers which sources were consumed."""

  def __init__(self, root: Node):
    self.sources = root.state_dict()
    self.consumed: set[str] = set()
    self.variables: dict = {}

  def take(self, src: str) -> np.ndarray:
    if src not in self.sources:
      raise _unsupported(f"missing array {src}")
    self.consumed.add(src)
    return np.asarray(self.sources[src], np.float32)

  def consume(self, src: str) -> None:
    """Marks a source as used for the spec rather than copied into the variables."""
    self.consumed.add(src)

  def put(self, target: str, value: np.ndarray) -> None:
    node = self.variables
    *parents, leaf = target.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value

  def fc(self, src: str, dst: str, fc: Node, in_features: int, out_features: int,
         lr_multiplier: float, activation: str) -> None:
    """A FullyConnectedLayer: checks its kind and gains, copies weight^T and bias."""
    got = (fc.attrs.get("in_features"), fc.attrs.get("out_features"), fc.attrs.get("activation"))
    if got != (in_features, out_features, activation):
      raise _unsupported(f"{src} is {got}, expected {(in_features, out_features, activation)}")
    wg, bg = float(fc.attrs.get("weight_gain", np.nan)), float(fc.attrs.get("bias_gain", np.nan))
    if not (math.isclose(wg, lr_multiplier / math.sqrt(in_features), rel_tol=GAIN_RTOL)
            and math.isclose(bg, lr_multiplier, rel_tol=GAIN_RTOL)):
      raise _unsupported(f"{src} gains ({wg}, {bg}) do not match lr_multiplier {lr_multiplier}")
    self.put(f"params/{dst}/weight", self.take(f"{src}.weight").T)
    self.put(f"params/{dst}/bias", self.take(f"{src}.bias"))

  def leftovers(self) -> list[str]:
    return sorted(set(self.sources) - self.consumed - set(IGNORED_SOURCES))


def _mapping_spec(G: Node, M: Node) -> sx.MappingSpec:
  c_dim = int(_attr(M, "c_dim", "mapping"))
  if c_dim <= 0:
    raise _unsupported("unconditional mapping (c_dim 0); StyleGAN-XL is class-conditional")
  embed = _child(M, "embed", "mapping")
  if "weight" not in embed.params or embed.params["weight"].ndim != 2:
    raise _unsupported("mapping.embed has no 2-D weight")
  if embed.params["weight"].shape[0] != c_dim:
    raise _unsupported(f"mapping.embed has {embed.params['weight'].shape[0]} rows for c_dim {c_dim}")
  num_layers = int(_attr(M, "num_layers", "mapping"))
  lr = float(_attr(_child(M, "fc0", "mapping"), "bias_gain", "mapping.fc0"))
  return sx.MappingSpec(
      z_dim=int(_attr(M, "z_dim", "mapping")), c_dim=c_dim, w_dim=int(_attr(M, "w_dim", "mapping")),
      num_ws=int(_attr(G, "num_ws", "G")), num_layers=num_layers,
      embed_dim=int(embed.params["weight"].shape[1]), lr_multiplier=lr)


def _layer_spec(name: str, L: Node, path: str) -> sx.LayerSpec:
  if L.class_name != "SynthesisLayer":
    raise _unsupported(f"{path} is a {L.class_name}, not a SynthesisLayer")
  a = lambda k: _attr(L, k, path)  # noqa: E731
  padding = tuple(int(p) for p in a("padding"))
  if len(padding) != 4:
    raise _unsupported(f"{path}.padding {padding} is not 4 ints")
  clamp = a("conv_clamp")
  for b in ("up_filter", "down_filter", "magnitude_ema"):
    if b not in L.buffers:
      raise _unsupported(f"{path} has no buffer {b!r}")
  return sx.LayerSpec(
      name=name, is_torgb=bool(a("is_torgb")), is_critically_sampled=bool(a("is_critically_sampled")),
      in_channels=int(a("in_channels")), out_channels=int(a("out_channels")),
      in_size=_pair(a("in_size")), out_size=_pair(a("out_size")),
      conv_kernel=int(a("conv_kernel")), up_factor=int(a("up_factor")),
      down_factor=int(a("down_factor")), padding=padding,
      up_filter=_filter(L.buffers["up_filter"], f"{path}.up_filter"),
      down_filter=_filter(L.buffers["down_filter"], f"{path}.down_filter"),
      conv_clamp=None if clamp is None else float(clamp),
      in_sampling_rate=float(a("in_sampling_rate")), out_sampling_rate=float(a("out_sampling_rate")),
      in_cutoff=float(a("in_cutoff")), out_cutoff=float(a("out_cutoff")),
      in_half_width=float(a("in_half_width")), out_half_width=float(a("out_half_width")))


def _synthesis_spec(S: Node) -> sx.SynthesisSpec:
  if "layer_names" not in S.attrs:
    raise _unsupported(f"synthesis ({S.class_name}) has no layer_names "
                       f"(not a StyleGAN3-based StyleGAN-XL synthesis network)")
  names = list(S.attrs["layer_names"])
  inp = _child(S, "input", "synthesis")
  if inp.class_name != "SynthesisInput":
    raise _unsupported(f"synthesis.input is a {inp.class_name}, not a SynthesisInput")
  input_spec = sx.InputSpec(
      channels=int(_attr(inp, "channels", "synthesis.input")),
      size=_pair(_attr(inp, "size", "synthesis.input")),
      sampling_rate=float(_attr(inp, "sampling_rate", "synthesis.input")),
      bandwidth=float(_attr(inp, "bandwidth", "synthesis.input")))
  layers = tuple(_layer_spec(n, _child(S, n, "synthesis"), f"synthesis.{n}") for n in names)
  if not layers or not layers[-1].is_torgb or any(l.is_torgb for l in layers[:-1]):
    raise _unsupported("synthesis must end with exactly one ToRGB layer")
  return sx.SynthesisSpec(
      w_dim=int(_attr(S, "w_dim", "synthesis")),
      img_resolution=int(_attr(S, "img_resolution", "synthesis")),
      img_channels=int(_attr(S, "img_channels", "synthesis")),
      output_scale=float(_attr(S, "output_scale", "synthesis")), input=input_spec, layers=layers)


def check_plain(G: Node, which: str) -> None:
  """Refuses a generator that holds anything but plain data (`sgxl_pickle.find_records`).

  Raises:
    ConversionError: one line naming the first record's path and global, and how many
      records `which` holds.
  """
  records = sgxl_pickle.find_records(G, which)
  if records:
    where, record = records[0]
    raise ConversionError(f"refused: {where} is {sgxl_pickle.describe(record)}; a generator "
                          f"must be plain data ({len(records)} such value(s) in {which})")


def convert_generator(G: Node) -> tuple[dict, sx.GeneratorSpec]:
  """Maps a generator node (G_ema or G of a snapshot, plain data) to (variables, spec).

  Raises:
    ConversionError: unsupported architecture, or sources and targets that do not match.
  """
  if G.class_name not in GENERATOR_CLASSES:
    raise _unsupported(f"generator class {G.class_name!r} (supported: {', '.join(GENERATOR_CLASSES)})")
  M, S = _child(G, "mapping", "G"), _child(G, "synthesis", "G")
  synthesis = _synthesis_spec(S)
  mapping = _mapping_spec(G, M)
  if not mapping.num_ws == synthesis.num_ws == int(_attr(S, "num_ws", "synthesis")):
    raise _unsupported(f"num_ws: G {mapping.num_ws}, synthesis {S.attrs['num_ws']}, "
                       f"layer_names + input {synthesis.num_ws}")
  if mapping.w_dim != synthesis.w_dim:
    raise _unsupported(f"mapping w_dim {mapping.w_dim} != synthesis w_dim {synthesis.w_dim}")
  spec = sx.GeneratorSpec(mapping=mapping, synthesis=synthesis)

  t = _Table(G)
  # Mapping network.
  t.put("params/mapping/embed/weight", t.take("mapping.embed.weight"))
  t.fc("mapping.embed_proj", "mapping/embed_proj", M["embed_proj"], mapping.embed_dim,
       mapping.z_dim, 1.0, "lrelu")
  dims = [2 * mapping.z_dim] + [mapping.w_dim] * mapping.num_layers
  for i in range(mapping.num_layers):
    t.fc(f"mapping.fc{i}", f"mapping/fc{i}", _child(M, f"fc{i}", "mapping"), dims[i],
         dims[i + 1], mapping.lr_multiplier, "lrelu")
  t.put("buffers/mapping/w_avg", t.take("mapping.w_avg"))
  # Synthesis input.
  inp = S["input"]
  t.put("params/synthesis/input/weight", t.take("synthesis.input.weight").T)  # x @ W^T
  t.fc("synthesis.input.affine", "synthesis/input/affine", inp["affine"], synthesis.w_dim, 4,
       1.0, "linear")
  for b in ("freqs", "phases", "transform"):
    t.put(f"buffers/synthesis/input/{b}", t.take(f"synthesis.input.{b}"))
  # Synthesis layers.
  for layer in synthesis.layers:
    src, dst = f"synthesis.{layer.name}", f"synthesis/{layer.name}"
    t.put(f"params/{dst}/weight", t.take(f"{src}.weight").transpose(2, 3, 1, 0))  # OIHW->HWIO
    t.put(f"params/{dst}/bias", t.take(f"{src}.bias"))
    t.fc(f"{src}.affine", f"{dst}/affine", S[layer.name]["affine"], synthesis.w_dim,
         layer.in_channels, 1.0, "linear")
    t.put(f"buffers/{dst}/magnitude_ema", t.take(f"{src}.magnitude_ema"))
    for b in ("up_filter", "down_filter"):  # Part of the spec (constants), not variables.
      if S[layer.name].buffers[b] is not None:
        t.consume(f"{src}.{b}")

  left = t.leftovers()
  if left:
    shapes = ", ".join(f"{k} {tuple(np.shape(t.sources[k]))}" for k in left[:20])
    raise _unsupported(f"{len(left)} source arrays have no target: {shapes}")
  try:
    io.check_tree(t.variables, sx.expected_variables(spec), what="converted variables")
  except io.CheckpointError as e:
    raise ConversionError(f"unsupported architecture: {e}") from None
  return t.variables, spec


def convert(pkl: str, out: str, which: str = "G_ema", strict: bool = False,
            force: bool = False) -> tuple[dict, str]:
  """Reads snapshot `pkl` and writes the checkpoint directory `out` (atomically).

  Args:
    which: the generator to convert ('G_ema' or 'G'); only its tensors are decoded.
    strict: refuse any unknown global anywhere in the file (`sgxl_pickle.read_pickle`).
    force: replace `out` if it is an earlier output of this converter.
  Returns:
    (the metadata written to meta.json, the one-line summary).
  Raises:
    SnapshotError: missing / truncated / corrupt / non-snapshot pickle, (strict) unknown
      global.
    ConversionError: a generator holding records, unsupported architecture.
    outdir.OutDirError: `out` may not be written.
    outdir.WriteError: writing failed (no space, permission, ...).
  """
  replace = outdir.check_out(out, sx.KIND, force)
  snap, stats = sgxl_pickle.read_snapshot(pkl, decode=(which,), strict=strict)
  if which not in snap:
    raise ConversionError(f"{pkl}: snapshot has no network {which!r} "
                          f"(has: {', '.join(k for k, v in snap.items() if isinstance(v, Node))})")
  if not isinstance(snap[which], Node):
    records = sgxl_pickle.find_records(snap[which], which)
    what = sgxl_pickle.describe(records[0][1]) if records else f"a {type(snap[which]).__name__}"
    raise ConversionError(f"{pkl}: refused: {which} is {what}, not a generator")
  check_plain(snap[which], which)
  variables, spec = convert_generator(snap[which])
  s = spec.synthesis
  sha = io.sha256_file(pkl)
  meta = {
      "kind": sx.KIND, "spec": spec.to_json(), "source": os.path.basename(pkl),
      "source_sha256": sha, "which": which,
      "class_name": snap[which].class_name, "num_ws": s.num_ws, "w_dim": s.w_dim,
      "z_dim": spec.mapping.z_dim, "c_dim": spec.mapping.c_dim,
      "resolution": s.img_resolution, "layer_names": list(s.layer_names),
  }
  outdir.write_checkpoint(out, variables, meta, overwrite=replace)
  return meta, summary(meta, variables, stats, snap, which, out)


def summary(meta: dict, variables: dict, stats: sgxl_pickle.LoadStats, snap: dict,
            which: str, out: str) -> str:
  """The one success line: source, architecture, parameters, what was skipped."""
  n_params = sum(int(np.size(v)) for v in jax.tree_util.tree_leaves(variables["params"]))
  skipped = []
  for key, value in snap.items():
    if key == which:
      continue
    parts = []
    if stats.lazy_values.get(key):
      parts.append(f"{_count_str(stats.lazy_values[key])} tensor values not decoded")
    if stats.inert_calls.get(key):
      parts.append(f"{stats.inert_calls[key]} inert objects that never ran")
    skipped.append(f"{key}" + (f" ({', '.join(parts)})" if parts else ""))
  return (f"converted {which} of {meta['source']} (sha256 {meta['source_sha256'][:12]}) to {out}: "
          f"{meta['class_name']} {meta['resolution']}px, num_ws {meta['num_ws']}, w_dim "
          f"{meta['w_dim']}, c_dim {meta['c_dim']}, {_count_str(n_params)} parameters; "
          f"decoded {stats.decoded_bytes / 2**20:.1f} of {stats.storage_bytes / 2**20:.1f} MiB of "
          f"tensor storage; skipped {', '.join(skipped) or 'nothing'}")


def _count_str(n: int) -> str:
  return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m converters.stylegan_xl",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--pkl", required=True, help="StyleGAN-XL snapshot pickle")
  parser.add_argument("--out", required=True,
                      help="output checkpoint directory: absent, empty, or an earlier output "
                           "of this converter (with --force)")
  parser.add_argument("--which", default="G_ema", choices=["G_ema", "G"],
                      help="which generator of the snapshot (default: G_ema)")
  parser.add_argument("--force", action="store_true",
                      help="replace --out if it is an earlier output of this converter")
  parser.add_argument("--strict", action="store_true",
                      help="audit: refuse any global that is not recognised data or a "
                           "torch.nn module class, anywhere in the file (D included)")
  args = parser.parse_args(argv)
  try:
    _, line = convert(args.pkl, args.out, args.which, args.strict, args.force)
  except (SnapshotError, ConversionError, io.CheckpointError, outdir.OutDirError,
          outdir.WriteError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except OSError as e:
    print(f"error: {outdir.os_error_line(e)}", file=sys.stderr)
    return 1
  print(line)
  return 0


if __name__ == "__main__":
  outdir.exit_quietly(main())
