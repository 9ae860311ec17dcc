"""torchvision ImageNet classifier state_dicts -> lis_jax classifier checkpoints.

    python -m converters.torchvision --arch resnet50 --weights resnet50.pth --out DIR

reads the state_dict safely (`torch.load(weights_only=True)`: no code in the file is run),
maps every tensor through an explicit per-architecture name table, and writes an Orbax
params checkpoint plus meta.json (kind "torchvision", arch, num_classes, source file and
its sha256) to DIR, atomically: DIR is written only if the conversion succeeded. Load it
with `lis_jax.classifiers.load(DIR)`.

Conventions converted (not only names): conv weights OIHW -> HWIO, Linear weights
[out, in] -> [in, out], BatchNorm weight/bias -> params scale/bias and running_mean/var
-> batch_stats mean/var (epsilon 1e-5 is torchvision's and the Flax modules'); the
`num_batches_tracked` counters are dropped. Every table target must be filled and every
source tensor consumed, else ConversionError lists missing / unexpected keys and shape
mismatches. The number of classes is read from the last Linear layer.

From Python: `convert(arch, source)` with a .pth path, a live torch.nn.Module or a
state_dict (torch tensors or numpy arrays) returns `(variables, meta)`;
`save(out_dir, variables, meta)` writes them, and
`lis_jax.classifiers.Classifier.create(module_for(arch, meta['num_classes']), variables, arch)`
uses them directly.
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
import sys
import zipfile
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import jax
import numpy as np

from converters import outdir
from lis_jax import io
from lis_jax.classifiers import archs, densenet, resnet, variable_shapes, vgg


KIND = "torchvision"  # meta.json kind of this converter's outputs


class ConversionError(ValueError):
  """The source is unreadable, not a state_dict, or does not match the architecture."""


# ----------------------------------------------------------------------------- tensor kinds


class Rule(NamedTuple):
  """How one torch tensor of a layer maps to one Flax leaf."""
  suffix: str                    # torch key suffix, e.g. 'weight'
  collection: str                # 'params' or 'batch_stats'
  leaf: str                      # Flax leaf name, e.g. 'kernel'
  perm: tuple[int, ...] | None   # axes permutation torch -> Flax; None: as is


_CONV = (Rule("weight", "params", "kernel", (2, 3, 1, 0)),)          # OIHW -> HWIO
_CONV_BIAS = _CONV + (Rule("bias", "params", "bias", None),)
_LINEAR = (Rule("weight", "params", "kernel", (1, 0)),               # [out, in] -> [in, out]
           Rule("bias", "params", "bias", None))
_BN = (Rule("weight", "params", "scale", None),
       Rule("bias", "params", "bias", None),
       Rule("running_mean", "batch_stats", "mean", None),
       Rule("running_var", "batch_stats", "var", None))
# Consumed and dropped: eval-mode BatchNorm does not need the step counter.
_BN_COUNTER = "num_batches_tracked"

KINDS = {"conv": _CONV, "conv+bias": _CONV_BIAS, "linear": _LINEAR, "bn": _BN}


class Entry(NamedTuple):
  """One layer: torch prefix (e.g. 'layer1.0.conv1') -> Flax module path, tensor kind."""
  torch: str
  flax: tuple[str, ...]
  kind: str


# ----------------------------------------------------------------------------- name tables


def _resnet_table(m: resnet.ResNet) -> Iterator[Entry]:
  yield Entry("conv1", ("conv1",), "conv")
  yield Entry("bn1", ("bn1",), "bn")
  n_convs = 2 if m.block == "basic" else 3
  for name, _, _, downsample in m.block_plan():
    t = name.replace("_", ".")                                 # layer1_0 -> layer1.0
    for k in range(1, n_convs + 1):
      yield Entry(f"{t}.conv{k}", (name, f"conv{k}"), "conv")
      yield Entry(f"{t}.bn{k}", (name, f"bn{k}"), "bn")
    if downsample:
      yield Entry(f"{t}.downsample.0", (name, "downsample_0"), "conv")
      yield Entry(f"{t}.downsample.1", (name, "downsample_1"), "bn")
  yield Entry("fc", ("fc",), "linear")


def _vgg_table(m: vgg.VGG) -> Iterator[Entry]:
  i = 0
  for v in m.cfg:
    if v == "M":
      i += 1
      continue
    yield Entry(f"features.{i}", (f"features_{i}",), "conv+bias")
    i += 1
    if m.batch_norm:
      yield Entry(f"features.{i}", (f"features_{i}",), "bn")
      i += 1
    i += 1                                                      # ReLU
  for i in (0, 3, 6):
    yield Entry(f"classifier.{i}", (f"classifier_{i}",), "linear")


def _alexnet_table(m: vgg.AlexNet) -> Iterator[Entry]:
  del m
  for i in (0, 3, 6, 8, 10):
    yield Entry(f"features.{i}", (f"features_{i}",), "conv+bias")
  for i in (1, 4, 6):
    yield Entry(f"classifier.{i}", (f"classifier_{i}",), "linear")


def _densenet_table(m: densenet.DenseNet) -> Iterator[Entry]:
  yield Entry("features.conv0", ("conv0",), "conv")
  yield Entry("features.norm0", ("norm0",), "bn")
  for i, n_layers in enumerate(m.block_config, start=1):
    for j in range(1, n_layers + 1):
      t, f = f"features.denseblock{i}.denselayer{j}", f"denseblock{i}_denselayer{j}"
      yield Entry(f"{t}.norm1", (f, "norm1"), "bn")
      yield Entry(f"{t}.conv1", (f, "conv1"), "conv")
      yield Entry(f"{t}.norm2", (f, "norm2"), "bn")
      yield Entry(f"{t}.conv2", (f, "conv2"), "conv")
    if i != len(m.block_config):
      yield Entry(f"features.transition{i}.norm", (f"transition{i}", "norm"), "bn")
      yield Entry(f"features.transition{i}.conv", (f"transition{i}", "conv"), "conv")
  yield Entry("features.norm5", ("norm5",), "bn")
  yield Entry("classifier", ("classifier",), "linear")


_TABLES: dict[type, Callable[[Any], Iterator[Entry]]] = {
    resnet.ResNet: _resnet_table,
    vgg.VGG: _vgg_table,
    vgg.AlexNet: _alexnet_table,
    densenet.DenseNet: _densenet_table,
}


def name_table(module) -> list[Entry]:
  """The name table of a classifier module; the last entry is the head (last Linear)."""
  return list(_TABLES[type(module)](module))


def source_shapes(arch: str, num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
  """The torchvision state_dict keys and shapes of `arch`, in table order.

  Derived from the Flax module's variables through the name table (so it is what the
  converter expects); includes BatchNorm's `num_batches_tracked` (shape ()).
  """
  module = archs.module_for(arch, num_classes)
  expected = variable_shapes(module)
  shapes = {}
  for e in name_table(module):
    for r in KINDS[e.kind]:
      shape = get_leaf(expected, r.collection, e.flax, r.leaf).shape
      shapes[f"{e.torch}.{r.suffix}"] = _torch_shape(shape, r.perm)
    if e.kind == "bn":
      shapes[f"{e.torch}.{_BN_COUNTER}"] = ()
  return shapes


def _torch_shape(flax_shape: Sequence[int], perm: tuple[int, ...] | None) -> tuple[int, ...]:
  if perm is None:
    return tuple(flax_shape)
  inverse = np.argsort(perm)
  return tuple(int(flax_shape[i]) for i in inverse)


def get_leaf(tree: Mapping, collection: str, path: tuple[str, ...], leaf: str):
  """tree[collection][path...][leaf]: the Flax leaf a table rule fills."""
  node = tree[collection]
  for p in path:
    node = node[p]
  return node[leaf]


def _set_leaf(tree: dict, collection: str, path: tuple[str, ...], leaf: str, value) -> None:
  node = tree.setdefault(collection, {})
  for p in path:
    node = node.setdefault(p, {})
  node[leaf] = value


# ----------------------------------------------------------------------------- conversion

# Old torchvision DenseNet files (the hosted ImageNet weights among them) name the dense
# layers' children 'norm.1', 'conv.2', ...; torchvision renames them when loading.
_LEGACY_DENSENET = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def _normalise_keys(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Strips a DataParallel 'module.' prefix and renames legacy DenseNet keys."""
  if sd and all(k.startswith("module.") for k in sd):
    sd = {k[len("module."):]: v for k, v in sd.items()}
  out = {}
  for k, v in sd.items():
    m = _LEGACY_DENSENET.match(k)
    out[m.group(1) + m.group(2) if m else k] = v
  return out


def check_storage(key: str, v: Any, what: str = "state_dict") -> None:
  """Refuses a torch tensor whose memory is not its own: a dimension of stride 0 (an `expand`ed
  1-element storage posing as [1e8, 512]) or a storage smaller than its elements (or than
  the extent its strides reach). Checked before anything is materialised, so a small file
  cannot make the converter allocate what it does not hold.
  Raises:
    ConversionError: one line naming `key`.
  """
  if not hasattr(v, "untyped_storage"):
    return  # a numpy array is the caller's own memory (tests pass zero-memory broadcasts)
  shape = tuple(int(n) for n in v.shape)
  strides, item = tuple(int(t) for t in v.stride()), v.element_size()
  have, offset = v.untyped_storage().nbytes(), int(v.storage_offset())
  numel = int(np.prod(shape, dtype=object)) if shape else 1
  if numel == 0:
    return
  if any(n > 1 and t == 0 for n, t in zip(shape, strides)):
    raise ConversionError(f"{what}: {key} {list(shape)} repeats its memory (a stride-0 "
                          f"dimension, strides {list(strides)}); save real tensors "
                          "(e.g. .clone()) instead of expanded views")
  extent = offset + 1 + sum((n - 1) * abs(t) for n, t in zip(shape, strides))
  if have < numel * item or have < extent * item:
    raise ConversionError(f"{what}: {key} {list(shape)} needs {max(numel, extent) * item} bytes "
                          f"but its storage holds {have}; the file is corrupt or crafted")


def check_values(key: str, v: np.ndarray, what: str = "state_dict") -> None:
  """Refuses NaN / inf in a float tensor and a negative BatchNorm running_var (one line
  naming `key`): eval-mode BatchNorm divides by sqrt(var + eps), so either makes every
  prediction NaN or silently wrong."""
  if not np.issubdtype(v.dtype, np.floating) or v.size == 0:
    return
  bad = ~np.isfinite(v)
  if bad.any():
    raise ConversionError(f"{what}: {key} {list(v.shape)} has {int(bad.sum())} non-finite "
                          f"value(s) (NaN or inf) of {v.size}; refusing to convert it")
  if key.endswith("running_var") and (v < 0).any():
    raise ConversionError(f"{what}: {key} has {int((v < 0).sum())} negative variance(s) "
                          f"(min {float(v.min()):.3g}); a running variance is >= 0")


def _to_numpy(v: Any) -> np.ndarray:
  if hasattr(v, "detach"):                                       # a torch.Tensor
    v = v.detach().cpu()
    if v.is_floating_point() and v.dtype != _torch().float32:
      v = v.float()                                              # half / bfloat16 files
    return v.numpy()
  return np.asarray(v)


def _torch():
  import torch  # Only converters import torch, and only when they meet a tensor or a file.
  return torch


def _check_state_dict(obj: Any, what: str) -> dict[str, Any]:
  if not isinstance(obj, Mapping):
    raise ConversionError(f"{what} is not a state_dict (it holds a {type(obj).__name__}, "
                          "expected a dict of tensors)")
  bad = [k for k, v in obj.items()
         if not isinstance(k, str) or not (hasattr(v, "shape") and hasattr(v, "dtype"))]
  if bad or not obj:
    detail = f"entry {bad[0]!r} is a {type(obj[bad[0]]).__name__}" if bad else "it is empty"
    raise ConversionError(f"{what} is not a state_dict of tensors ({detail})")
  return dict(obj)


def convert_state_dict(arch: str, state_dict: Mapping[str, Any],
                       what: str = "state_dict") -> tuple[dict, dict]:
  """Maps a torchvision state_dict onto the variables of the Flax `arch` module.

  Args:
    arch: a torchvision architecture name (see lis_jax.classifiers.ARCHS).
    state_dict: key -> torch.Tensor or numpy array, as `model.state_dict()` returns.
    what: how to name the source in error messages (e.g. its file name).
  Returns:
    variables: {'params': ..., 'batch_stats': ...} of numpy arrays (no copies where a
      transpose view suffices), matching `variable_shapes(module_for(arch, num_classes))`.
    meta: {'kind': 'torchvision', 'arch', 'num_classes', 'feature_dim'}.
  Raises:
    ConversionError: unknown arch, not a state_dict, or keys/shapes that do not match
      (the message lists missing and unexpected keys and shape mismatches).
  """
  if arch not in archs.ARCHS:
    raise ConversionError(f"unknown --arch {arch!r}; known: {', '.join(sorted(archs.ARCHS))}")
  state_dict = _check_state_dict(state_dict, what)
  for k, v in state_dict.items():
    check_storage(k, v, what)                  # before anything is copied or converted
  sd = _normalise_keys({k: _to_numpy(v) for k, v in state_dict.items()})
  for k, v in sd.items():
    check_values(k, v, what)

  # The head's output size is the number of classes; the rest of the table is fixed.
  head = name_table(archs.module_for(arch))[-1]
  head_w = sd.get(f"{head.torch}.weight")
  num_classes = int(head_w.shape[0]) if head_w is not None and head_w.ndim == 2 else 1000
  module = archs.module_for(arch, num_classes)
  expected = variable_shapes(module)

  variables: dict = {}
  consumed, missing, mismatched = set(), [], []
  for e in name_table(module):
    rules = KINDS[e.kind]
    if e.kind == "bn":
      consumed.add(f"{e.torch}.{_BN_COUNTER}")
    for r in rules:
      key = f"{e.torch}.{r.suffix}"
      want = _torch_shape(get_leaf(expected, r.collection, e.flax, r.leaf).shape, r.perm)
      if key not in sd:
        missing.append(f"{key} {want}")
        continue
      consumed.add(key)
      src = sd[key]
      if tuple(src.shape) != want:
        mismatched.append(f"{key} got {tuple(src.shape)} expected {want}")
        continue
      value = src if r.perm is None else np.transpose(src, r.perm)
      _set_leaf(variables, r.collection, e.flax, r.leaf, value.astype(np.float32, copy=False))
  unexpected = [f"{k} {tuple(sd[k].shape)}" for k in sd if k not in consumed]
  if missing or unexpected or mismatched:
    raise ConversionError(_diff_message(what, arch, missing, unexpected, mismatched))
  io.check_tree(variables, expected, what=f"{what} as {arch}")   # Guards the table itself.
  meta = dict(kind=KIND, arch=arch, num_classes=num_classes,
              feature_dim=module.feature_dim)
  return variables, meta


def _diff_message(what: str, arch: str, missing: list[str], unexpected: list[str],
                  mismatched: list[str], limit: int = 8) -> str:
  counts = ", ".join(f"{len(v)} {name}" for name, v in
                     (("missing", missing), ("unexpected", unexpected),
                      ("shape mismatches", mismatched)) if v)
  lines = [f"{what} does not match --arch {arch}: {counts}"]
  for name, items in (("missing", missing), ("unexpected", unexpected), ("shape", mismatched)):
    lines += [f"  {name + ':':11s} {s}" for s in items[:limit]]
    if len(items) > limit:
      lines.append(f"  {'':11s} ... and {len(items) - limit} more")
  return "\n".join(lines)


def read_state_dict(path: str) -> dict[str, Any]:
  """Loads a .pth state_dict file safely (weights_only: no pickled code runs)."""
  torch = _torch()
  if not os.path.isfile(path):
    raise ConversionError(f"weights file not found: {path}")
  with open(path, "rb") as f:
    legacy = f.read(1) == b"\x80"                    # torch < 1.6 files: a bare pickle
  if not (zipfile.is_zipfile(path) or legacy):
    raise ConversionError(f"cannot read {path}: not a torch.save file (truncated, or another "
                          "format?)")
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    if "weights only" not in str(e).lower():
      raise ConversionError(f"cannot read {path} as a torch weights file: {e}") from e
    raise ConversionError(f"refusing {path}: it pickles objects other than tensors and dicts "
                          "(torch.load weights_only=True); save model.state_dict() instead") from e
  except Exception as e:  # torch raises many types (zip, pickle, EOF); the user needs one line.
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    raise ConversionError(f"cannot read {path} as a torch weights file "
                          f"(truncated or not a torch.save file?): {type(e).__name__}: "
                          f"{first[:200]}") from e
  return _check_state_dict(obj, path)


def convert_file(arch: str, path: str) -> tuple[dict, dict]:
  """Reads and converts a torchvision .pth file; meta gains its source path and sha256."""
  variables, meta = convert_state_dict(arch, read_state_dict(path), what=path)
  meta.update(source=os.path.abspath(path), sha256=io.sha256_file(path))
  return variables, meta


def convert_module(arch: str, module) -> tuple[dict, dict]:
  """Converts a live torch.nn.Module (e.g. a torchvision model) of architecture `arch`."""
  if not hasattr(module, "state_dict"):
    raise ConversionError(f"expected a torch.nn.Module, got a {type(module).__name__}")
  variables, meta = convert_state_dict(arch, module.state_dict(), what=type(module).__name__)
  meta.update(source=f"torch.nn.Module {type(module).__name__}", sha256=None)
  return variables, meta


def convert(arch: str, source: Any) -> tuple[dict, dict]:
  """Converts `source`: a .pth path, a live torch.nn.Module, or a state_dict mapping.

  Returns (variables, meta) as `convert_state_dict`; raises ConversionError on bad input.
  """
  if isinstance(source, (str, os.PathLike)):
    return convert_file(arch, os.fspath(source))
  if hasattr(source, "state_dict") and callable(source.state_dict):
    return convert_module(arch, source)
  return convert_state_dict(arch, source)


def save(out_dir: str, variables: dict, meta: dict, force: bool = False) -> None:
  """Writes a checkpoint dir that `lis_jax.classifiers.load` reads (atomically).

  `out_dir` must be absent, empty, or (with `force`) an earlier output of this converter;
  anything else raises outdir.OutDirError and nothing is changed; a failed write
  (no space, permission) raises outdir.WriteError.
  """
  write_tree(out_dir, variables, meta, KIND, force)


def write_tree(out_dir: str, tree: dict, meta: dict, kind: str, force: bool = False) -> None:
  """Writes `tree` (numpy leaves) and `meta` as a checkpoint of converter `kind`
  (atomically; the rules of `converters.outdir`). Shared with converters.lpips."""
  replace = outdir.check_out(out_dir, kind, force)
  # Materialise the transposed views: Orbax writes C-contiguous arrays ~2x faster.
  tree = jax.tree_util.tree_map(np.ascontiguousarray, tree)
  outdir.write_checkpoint(out_dir, tree, meta, overwrite=replace)


# ----------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m converters.torchvision",
      description="Convert a torchvision classifier state_dict (.pth) to a lis_jax checkpoint.")
  parser.add_argument("--arch", required=True,
                      help=f"architecture: {', '.join(sorted(archs.ARCHS))}")
  parser.add_argument("--weights", required=True, help="torchvision state_dict file (.pth)")
  parser.add_argument("--out", required=True,
                      help="output checkpoint directory: absent, empty, or an earlier output "
                           "of this converter (with --force)")
  parser.add_argument("--force", action="store_true",
                      help="replace --out if it is an earlier output of this converter")
  args = parser.parse_args(argv)
  try:
    if args.arch not in archs.ARCHS:
      raise ConversionError(f"unknown --arch {args.arch!r}; known: {', '.join(sorted(archs.ARCHS))}")
    outdir.check_out(args.out, KIND, args.force)  # before the conversion: fail fast
    variables, meta = convert_file(args.arch, args.weights)
    save(args.out, variables, meta, args.force)
  except (ConversionError, io.CheckpointError, outdir.OutDirError, outdir.WriteError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except OSError as e:
    print(f"error: {outdir.os_error_line(e)}", file=sys.stderr)
    return 1
  print(f"wrote {args.out}: {meta['arch']}, {meta['num_classes']} classes, "
        f"feature_dim {meta['feature_dim']}")
  return 0


if __name__ == "__main__":
  outdir.exit_quietly(main())
