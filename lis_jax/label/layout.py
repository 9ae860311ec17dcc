"""Where labelling files live: the directory `config.quantify.labels` (WORKSPACE.md).

  <labels>/
    config.json          the config values the exported images depend on (generator,
                         classes, psi, seed, resolution); a different config is refused
    export.json          image names (in labelling order), image size, quantify resolution
    part_names.json      ["background", "<part 1>", ...]: edit before labelling
    images/<name>.png    full-size generated image            (export)
    images_small/<name>.png  the same at quantify.resolution  (export)
    w/<name>.npy         its ws [num_ws, w_dim]                (export; existence = done)
    label.html           the labeller page, images embedded    (export, suggest)
    masks/<name>.png     masks saved by the labeller (the default `import --masks`)
    suggestions/<name>.png  predicted starting masks, indexed PNG (suggest)
    labels/<name>.npy    [R, R] int32 part labels at quantify.resolution (import): what
                         the quantify stage trains on

Names are `s<i:04d>_c<class:04d>` (the i-th image of a class), so sorting them by name
interleaves the classes: the first masks labelled (and the quantify stage's first
`n_labelled`) cover every class.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from lis_jax import errors, io


@dataclasses.dataclass(frozen=True)
class LabelDir:
  """Paths inside one labelling directory (layout in the module docstring)."""
  root: str

  def sub(self, *parts: str) -> str:
    return os.path.join(self.root, *parts)

  @property
  def part_names_file(self) -> str:
    return self.sub("part_names.json")

  @property
  def export_file(self) -> str:
    return self.sub("export.json")

  @property
  def page(self) -> str:
    return self.sub("label.html")

  def image(self, name: str) -> str:
    return self.sub("images", f"{name}.png")

  def image_small(self, name: str) -> str:
    return self.sub("images_small", f"{name}.png")

  def w(self, name: str) -> str:
    return self.sub("w", f"{name}.npy")

  def labels(self, name: str) -> str:
    return self.sub("labels", f"{name}.npy")

  def suggestion(self, name: str) -> str:
    return self.sub("suggestions", f"{name}.png")

  @property
  def masks(self) -> str:
    return self.sub("masks")

  def content_sha256(self) -> str:
    """sha256 of what a segmenter trained on this directory learns from: part_names.json
    and every labels/<name>.npy with its w/<name>.npy (names and bytes, in name order).
    A re-imported mask, a new label or an edited part list changes it."""
    import hashlib
    h = hashlib.sha256()
    files = [self.part_names_file] + [p for n in self.labelled_names()
                                      for p in (self.labels(n), self.w(n))]
    for path in files:
      h.update(os.path.relpath(path, self.root).encode() + b"\0")
      try:
        with open(path, "rb") as f:
          for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
      except FileNotFoundError:
        h.update(b"<missing>")
      h.update(b"\0")
    return h.hexdigest()

  def labelled_names(self) -> list[str]:
    """Names with an imported label map, sorted."""
    d = self.sub("labels")
    return sorted(f[:-4] for f in os.listdir(d) if f.endswith(".npy")) if os.path.isdir(d) else []


def image_name(index: int, cls: int) -> str:
  return f"s{index:04d}_c{cls:04d}"


def label_dir(labels: str, workdir: str) -> LabelDir:
  """The labelling directory `labels` (config.quantify.labels): an absolute path, else the
  one inside the workdir (or, if only that exists, relative to the current directory)."""
  if labels == "ground_truth":
    raise errors.PipelineError(
        "config.quantify.labels is 'ground_truth' (the built-in world's own masks); name a "
        "directory to label into, e.g. --config.quantify.labels=seg_labels/mine")
  if os.path.isabs(labels):
    return LabelDir(labels)
  inside = os.path.join(workdir, labels)
  return LabelDir(labels if os.path.isdir(labels) and not os.path.exists(inside) else inside)


def _config_arg() -> str:
  """The --config file of this process if absl parsed one, else a placeholder (only for
  callers that do not pass it; nothing else in label/ reads flags)."""
  from absl import flags
  from ml_collections import config_flags
  try:
    return config_flags.get_config_filename(flags.FLAGS["config"]) or "CONFIG"
  except (KeyError, AttributeError, flags.Error):  # no --config flag in this process
    return "CONFIG"


def missing_labels_message(d: LabelDir, labels: str, workdir: str, cfg: str | None = None) -> str:
  """One line: where the labels should be and the commands that make them (`cfg`: the
  --config file to name in them; None: this process's --config flag, read by `_config_arg`
  until the quantify stage passes it)."""
  cfg = cfg or _config_arg()
  return (f"quantify.labels={labels!r}: no labelled masks in {d.sub('labels')}; make them with "
          f"`python -m lis_jax.label export --config={cfg} --workdir={workdir} --n=30`, paint "
          f"{d.page} and save the masks into {d.masks}, then `python -m lis_jax.label import "
          f"--config={cfg} --workdir={workdir}` (README: Labelling parts); on the built-in world "
          f"use quantify.labels='ground_truth'")


def read_part_names(d: LabelDir) -> tuple[str, ...]:
  """part_names.json as a tuple; PipelineError naming the file if absent or malformed."""
  path = d.part_names_file
  try:
    with open(path, encoding="utf-8") as f:
      names = json.load(f)
  except RecursionError:
    raise errors.PipelineError(f"{path}: not a list of part names (nested too deeply)") from None
  except FileNotFoundError:
    raise errors.PipelineError(f"{path} not found: run `python -m lis_jax.label export` first") from None
  except ValueError as e:
    raise errors.PipelineError(f"{path}: not valid JSON ({e})") from None
  if (not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) and n for n in names)
      or len(set(names)) != len(names)):
    raise errors.PipelineError(f"{path}: expected a list of at least 2 distinct part names, "
                                 f"background first, e.g. [\"background\", \"head\"]")
  return tuple(names)


def read_export(d: LabelDir) -> dict:
  """export.json; PipelineError naming the export command if absent, or the file if its
  names, image_size or resolution are not what export writes."""
  if not os.path.exists(d.export_file):
    raise errors.PipelineError(f"{d.export_file} not found: run `python -m lis_jax.label export "
                                 f"--config=CONFIG --workdir=DIR` first")
  try:
    meta = io.read_json_checked(d.export_file)
  except io.CorruptFileError as e:
    raise errors.PipelineError(str(e)) from None
  side = lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SIDE
  if (not isinstance(meta, dict) or not isinstance(meta.get("names"), list)
      or not all(isinstance(n, str) and n and os.sep not in n for n in meta["names"])
      or not side(meta.get("image_size")) or not side(meta.get("resolution"))):
    raise errors.PipelineError(f"{d.export_file}: expected {{names: [image names], image_size: "
                               f"1..{MAX_SIDE}, resolution: 1..{MAX_SIDE}}} as export writes it")
  return meta


# The largest image side a label directory holds (StyleGAN-XL's largest is 1024).
MAX_SIDE = 8192


def load_array(path: str, kinds: str = "fiu") -> np.ndarray:
  """A .npy file written by export / import (w, labels): never a pickle (allow_pickle=False),
  of a numeric dtype kind in `kinds`, finite. PipelineError naming the file otherwise."""
  try:
    a = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise errors.PipelineError(f"{path}: not a numeric .npy array ({io._one_line(e)})") from None
  if not isinstance(a, np.ndarray) or a.dtype.kind not in kinds:
    raise errors.PipelineError(f"{path}: holds {getattr(a, 'dtype', type(a).__name__)}, expected "
                               f"numbers")
  if a.dtype.kind == "f" and not np.isfinite(a).all():
    raise errors.PipelineError(f"{path}: holds NaN or inf")
  return a
