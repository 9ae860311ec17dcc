"""torchvision state_dicts for tests, made without torchvision: the fixtures' recipe, zeros."""
import json

import numpy as np
import torch

from converters import torchvision as tvc


def fixture_state_dict(fixtures_dir, arch):
  """(spec, state_dict) of the fixture `tv_<arch>.json`, rebuilt with FIXTURES.md's recipe."""
  spec = json.loads((fixtures_dir / f"tv_{arch}.json").read_text())
  return spec, recipe_state_dict(spec["keys_shapes"], spec["seed"])


def recipe_state_dict(keys_shapes, seed):
  """key -> torch tensor by FIXTURES.md's recipe, for (key, shape) pairs in order."""
  rng = np.random.default_rng(seed)
  sd = {}
  for key, shape in keys_shapes:
    shape = tuple(shape)
    if key.endswith("num_batches_tracked"):
      sd[key] = torch.from_numpy(np.array(0, np.int64))
      continue
    if key.endswith("running_var"):
      a = rng.uniform(0.5, 1.5, shape)
    elif key.endswith("running_mean"):
      a = rng.normal(0.0, 0.1, shape)
    elif len(shape) == 1 and key.endswith("weight"):
      a = rng.uniform(0.5, 1.5, shape)
    elif len(shape) == 1:
      a = rng.normal(0.0, 0.1, shape)
    else:
      a = _scaled_normal_float32(rng, shape, np.sqrt(1.0 / np.prod(shape[1:])))
    sd[key] = torch.from_numpy(a.astype(np.float32, copy=False))
  return sd


def _scaled_normal_float32(rng, shape, scale, chunk=1 << 22):
  """(rng.normal(0, 1, shape) * scale).astype(float32), in chunks: the same numbers, less memory.

  VGG16's first Linear has 103M weights: one float64 draw would hold 0.8 GB at once.
  """
  out = np.empty(int(np.prod(shape)), np.float32)
  for start in range(0, out.size, chunk):
    n = min(chunk, out.size - start)
    out[start:start + n] = rng.normal(0.0, 1.0, n) * scale           # float64, then cast
  return out.reshape(shape)


def zeros_state_dict(arch, num_classes=1000):
  """A state_dict with `arch`'s keys and shapes (zeros), from the converter's name table."""
  return {k: torch.zeros(s, dtype=torch.int64 if k.endswith("num_batches_tracked") else torch.float32)
          for k, s in tvc.source_shapes(arch, num_classes).items()}
