"""LPIPS (VGG16) weights -> a lis_jax LPIPS checkpoint (`lis_jax.lpips.load`).

    python -m converters.lpips --vgg vgg16.pth --out DIR [--lin PATH] [--force]

Two sources, both read safely (`torch.load(weights_only=True)`: no code in a file runs):
- `--vgg`: a torchvision VGG16 state_dict (`vgg16-397923af.pth`), converted by
  `converters.torchvision` (its name table and checks); only the `features.*` convs are
  kept (the classifier layers are not part of LPIPS).
- `--lin`: the lpips package's calibration weights `lpips/weights/v0.1/vgg.pth` (keys
  `lin<l>.model.1.weight`, [1, C_l, 1, 1]). By default the file of the installed `lpips`
  package (pip install lpips==0.1.4) is used; it is found without importing the package
  (which imports torchvision).
DIR gets `params/` ({'trunk': VGG16 features params, 'lin': {'lin0'..'lin4': [C_l]}}) and
`meta.json` (kind "lpips", the sources and their sha256), written atomically.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import Any, Sequence

import numpy as np

from converters import outdir
from converters import torchvision as tvc
from lis_jax import io
from lis_jax import lpips

KIND = lpips.KIND
LIN_FILE = os.path.join("weights", "v0.1", "vgg.pth")  # inside the lpips package


def default_lin_path() -> str:
  """The installed lpips package's v0.1 VGG lin weights (ConversionError if absent)."""
  spec = importlib.util.find_spec("lpips")
  if spec is None or not spec.submodule_search_locations:
    raise tvc.ConversionError("the lpips package is not installed (pip install lpips==0.1.4); "
                              "or pass --lin PATH/TO/lpips/weights/v0.1/vgg.pth")
  return os.path.join(list(spec.submodule_search_locations)[0], LIN_FILE)


def read_lin(path: str) -> list[np.ndarray]:
  """lpips vgg.pth -> 5 float32 [C_l] vectors (ConversionError on anything unexpected)."""
  sd = tvc.read_state_dict(path)
  widths = lpips._tap_widths(lpips.VGG16_CFG)
  want = {f"lin{l}.model.1.weight": (1, c, 1, 1) for l, c in enumerate(widths)}
  got = {k: tuple(np.shape(tvc._to_numpy(v))) for k, v in sd.items()}
  if got != want:
    raise tvc.ConversionError(f"{path} is not the lpips VGG lin weights: got {got}, "
                              f"expected {want}")
  return [tvc._to_numpy(sd[k]).astype(np.float32).reshape(-1) for k in want]


def convert(vgg_source: Any, lin_path: str | None = None) -> tuple[dict, dict]:
  """(tree, meta) for `save`: vgg_source is a .pth path, a torch module or a state_dict."""
  lin_path = lin_path or default_lin_path()
  variables, vmeta = tvc.convert("vgg16", vgg_source)
  trunk = {k: v for k, v in variables["params"].items() if k.startswith("features_")}
  lins = read_lin(lin_path)
  lpips.from_vgg_params(trunk, lins)  # checks shapes
  tree = {"trunk": trunk, "lin": {f"lin{l}": w for l, w in enumerate(lins)}}
  meta = dict(kind=KIND, arch="vgg16", version="0.1", vgg_source=vmeta.get("source"),
              vgg_sha256=vmeta.get("sha256"), lin_source=os.path.abspath(lin_path),
              lin_sha256=io.sha256_file(lin_path))
  return tree, meta


def save(out_dir: str, tree: dict, meta: dict, force: bool = False) -> None:
  """Writes the checkpoint atomically (rules of `converters.outdir`)."""
  tvc.write_tree(out_dir, tree, meta, KIND, force)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m converters.lpips",
      description="Convert LPIPS (VGG16) weights to a lis_jax checkpoint.")
  parser.add_argument("--vgg", required=True, help="torchvision VGG16 state_dict (.pth)")
  parser.add_argument("--lin", default=None,
                      help="lpips/weights/v0.1/vgg.pth (default: the installed lpips package's)")
  parser.add_argument("--out", required=True, help="output checkpoint directory")
  parser.add_argument("--force", action="store_true",
                      help="replace --out if it is an earlier output of this converter")
  args = parser.parse_args(argv)
  try:
    outdir.check_out(args.out, KIND, args.force)
    tree, meta = convert(args.vgg, args.lin)
    save(args.out, tree, meta, args.force)
  except (tvc.ConversionError, io.CheckpointError, outdir.OutDirError, outdir.WriteError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except OSError as e:
    print(f"error: {outdir.os_error_line(e)}", file=sys.stderr)
    return 1
  print(f"wrote {args.out}: LPIPS vgg16 v0.1")
  return 0


if __name__ == "__main__":
  outdir.exit_quietly(main())
