"""torchvision-compatible classifiers in Flax (NHWC), plus built-in demo classifiers.

Every classifier `clf` returned by `load` exposes (see ../shared/DESIGN.md):
  clf.arch, clf.num_classes, clf.feature_dim
  clf.features(x) -> r        # [N, H, W, 3] preprocessed -> [N, D] penultimate
  clf.head(r) -> logits       # [N, D] -> [N, num_classes] (the last Linear layer)
  clf.preprocess(img)         # [-1, 1] generator image -> this classifier's input
`clf` is a pytree (params are leaves), so it can be passed to `jax.jit`.
"""
from __future__ import annotations

import importlib
import os
from typing import Any

from lis_jax import io

# Built-in classifiers: name -> "module:function" returning a classifier (no file needed).
BUILTINS: dict[str, str] = {}


def _resolve(spec: str):
  module, fn = spec.split(":")
  return getattr(importlib.import_module(module), fn)


def load(path_or_name: str, **kwargs: Any):
  """Loads a classifier from a converted checkpoint dir or by built-in name."""
  if path_or_name in BUILTINS:
    return _resolve(BUILTINS[path_or_name])(**kwargs)
  if not os.path.exists(path_or_name):
    raise io.CheckpointError(
        f"classifier {path_or_name!r} is neither a checkpoint directory nor a built-in "
        f"({', '.join(sorted(BUILTINS)) or 'none registered'})")
  raise NotImplementedError("classifier checkpoint loading: see issue 2")
