"""The run context every stage receives, and what it rests on: named random streams,
fingerprints, the models' loader.

The layers (docs/architecture.md): `lis_jax.main` -> `lis_jax.pipeline` (the runner) ->
`lis_jax.stages` (thin stage modules) -> this module and the libraries. A stage reaches
the run only through the `RunContext` it is given: its config section, the models,
`key(stream, ...)` for every random draw, and `result(name)` for another stage's typed
outputs (which it names in its `requires`).

Fingerprints: each stage records `RunContext.fingerprint(name)` in
`workdir/<name>/config.json` (`check_stage_config`); a workdir filled by a different
config is refused.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import importlib
import json
import os
import threading
from typing import Any, Callable, Mapping

import ml_collections
import numpy as np

from lis_jax import distribute
from lis_jax import io
from lis_jax import validate
from lis_jax.errors import PipelineError
from lis_jax.spec import parse_classes

# Each stage records its fingerprint here (inside its own output directory).
STAGE_CONFIG_FILE = "config.json"
# Version of the workdir layout, recorded in every fingerprint. Layout 1 (before the
# stage objects) had a `fit_link` stage and integer-tagged random streams.
LAYOUT = 2


def resolve(spec: str) -> Callable[..., Any]:
  """Imports "module:function" (a custom model named in the config) and returns it."""
  module, fn = spec.split(":")
  return getattr(importlib.import_module(module), fn)

# ----------------------------------------------------------------------------- random streams


def stream_key(seed: int, stream: str, *indices: int) -> Any:
  """The PRNG key of `indices` in the named stream `stream` of root seed `seed`.

  The stream's name is hashed (sha256, stable across runs and machines) into two 31-bit
  words folded into the root key, then each index is folded in order; distinct names
  give independent streams (no integer tags to collide). Pure: `stream_key(s, n, i, j)`
  == `fold_in(fold_in(stream_key(s, n), i), j)`, so jitted code may fold indices itself.
  """
  import jax
  digest = hashlib.sha256(stream.encode()).digest()
  key = jax.random.PRNGKey(seed)
  for k in range(2):
    key = jax.random.fold_in(key, int.from_bytes(digest[4 * k:4 * k + 4], "little") & 0x7FFFFFFF)
  for i in indices:
    key = jax.random.fold_in(key, i)
  return key

def stream_seed(seed: int, stream: str, *indices: int) -> int:
  """`stream_key(seed, stream, *indices)` as an integer in [0, 2^31): the seed of the
  NumPy generators drawn from the named stream (`RunContext.seed`, `RunContext.rng`)."""
  import jax
  return int(jax.random.randint(stream_key(seed, stream, *indices), (), 0, 2**31 - 1))


# ----------------------------------------------------------------------------- run context


class RunContext:
  """What every stage of one run shares.

  config: the full config, each stage's section merged over its `default_config()`;
    cfg(name) is that section.
  workdir: the run's directory; out_dir(name) a stage's output directory.
  G, clf: the generator and classifier, loaded once on first use.
  classes: [K] int32 class ids of `config.classes`, parsed once.
  mesh: the 1-D data mesh over this process's devices (all devices with one process).
  process_index, process_count, is_main, my_items(n), barrier(name), log, progress:
    multi-process runs (lis_jax/distribute.py; `stages.base.Stage.merge`).
  key(stream, *indices): a named random stream (`stream_key`); seed(stream, ...) and
    rng(stream, ...): an integer seed / NumPy generator from it. Every random draw of a
    stage comes from these (docs/architecture.md lists the streams).
  result(name): that stage's `load(workdir)`, cached.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               registry: Mapping[str, Any]):
    """registry: stage name -> Stage (`lis_jax.stages.REGISTRY`; `stages.context` builds
    the context of the registered stages)."""
    self.registry = dict(registry)
    self.config = ml_collections.ConfigDict(config.to_dict())   # an unlocked copy
    for name, st in self.registry.items():   # every section complete and checked, once
      self.config[name] = _merge_section(config, st)
    self.workdir = workdir
    self._models = None
    self._classes = None
    self._mesh = None
    self._results: dict[str, Any] = {}
    self.items_done = 0   # work items this process was given (stages with a merge)
    self._hashes: dict[str, str] = {}
    self.stopping = threading.Event()   # set when the run ends: early work stops (Stage.early)
    self._early: dict[str, concurrent.futures.Future] = {}
    self._early_pool: concurrent.futures.ThreadPoolExecutor | None = None

  def cfg(self, name: str) -> ml_collections.ConfigDict:
    """Stage `name`'s config section: `config.<name>` over its `default_config()`."""
    return self.config[name]

  def out_dir(self, name: str) -> str:
    """workdir/<name>/ (not created)."""
    return os.path.join(self.workdir, name)

  def _load_models(self):
    if self._models is None:
      self._models = load_models(self.config, self.workdir)
    return self._models

  @property
  def G(self):
    return self._load_models()[0]

  @property
  def clf(self):
    return self._load_models()[1]

  @property
  def classes(self) -> np.ndarray:
    if self._classes is None:
      self._classes = parse_classes(self.config.classes, self.clf.num_classes)
    return self._classes

  @property
  def budget(self):
    """The memory budget of this process's device now (lis_jax/memory.py; config.memory_gb
    overrides it): what batch sizes are chosen against."""
    from lis_jax import memory   # Local: the context stays light to import.
    return memory.config_budget(self.config)

  @property
  def mesh(self):
    """The 1-D data mesh over this process's devices (all devices with one process)."""
    if self._mesh is None:
      self._mesh = distribute.data_mesh()
    return self._mesh

  # Multi-process runs (lis_jax/distribute.py): a stage with a `merge` runs in every process.
  @property
  def process_index(self) -> int:
    return distribute.process_index()

  @property
  def process_count(self) -> int:
    return distribute.process_count()

  @property
  def is_main(self) -> bool:
    """True in process 0: it logs, shows progress bars, runs merges and unsplit stages."""
    return distribute.is_main()

  def my_items(self, n: int) -> np.ndarray:
    """This process's share of work items 0..n-1 (all of them with one process).

    Items must be numbered independently of the number of processes and devices, and
    each written to its own file, so that a run resumed with another number of
    processes finds every finished item.
    """
    return distribute.my_items(n)

  def barrier(self, name: str) -> None:
    """Waits for every process (every process must pass the same barriers in order)."""
    distribute.barrier(name)

  def log(self, message: str) -> None:
    """Prints from process 0 only."""
    distribute.log(message)

  def progress(self, *args, **kwargs):
    """A tqdm progress bar shown by process 0 only."""
    return distribute.progress(*args, **kwargs)

  def validate(self, names) -> None:
    """Checks the config's values (`validate.check`; PipelineError, one line)."""
    try:
      validate.check(self.config, names, self.registry)
    except ValueError as e:
      raise PipelineError(str(e)) from None

  def check_stages(self, names) -> None:
    """Each listed stage's own `check(ctx)` (values that need the models, say)."""
    for name in names:
      check = getattr(self.registry.get(name), "check", None)
      if check is not None:
        check(self)

  def start_early(self, names) -> list[str]:
    """Starts the `early` work of the listed stages on one background thread, in order
    (the runner calls it; the models are loaded here, on the caller's thread). Returns
    the stages started."""
    started = [n for n in names if getattr(self.registry.get(n), "early", None) is not None]
    if not started:
      return []
    self.G, self.clf, self.classes   # noqa: B018  (loaded once, here, not on two threads)
    self._early_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lis_jax-early")
    for n in started:
      self._early[n] = self._early_pool.submit(self.registry[n].early, self)
    return started

  def early_result(self, name: str) -> Any:
    """Stage `name`'s early work (`Stage.early`), waited for; None if it was not started,
    failed (the stage then meets the error itself) or had nothing to do."""
    fut = self._early.pop(name, None)
    if fut is None:
      return None
    try:
      return fut.result()
    except Exception:   # noqa: BLE001  (the stage does the work again and reports its error)
      return None

  def stop_early(self) -> None:
    """Stops early work still running (the run is over) and waits for it to stop."""
    self.stopping.set()
    if self._early_pool is not None:
      self._early_pool.shutdown(wait=True, cancel_futures=True)
      self._early_pool = None
    self._early.clear()

  def key(self, stream: str, *indices: int):
    """The PRNG key of `indices` in the named stream (see `stream_key`)."""
    return stream_key(int(self.config.seed), stream, *indices)

  def seed(self, stream: str, *indices: int) -> int:
    """An integer seed in [0, 2^31) drawn from the named stream, for a library that takes
    `seed=` (its NumPy generator is then seeded from the stream, not the raw config.seed)."""
    return stream_seed(int(self.config.seed), stream, *indices)

  def rng(self, stream: str, *indices: int) -> np.random.Generator:
    """A NumPy generator seeded from the named stream (`seed`)."""
    return np.random.default_rng(self.seed(stream, *indices))

  def result(self, name: str) -> Any:
    """Stage `name`'s typed result, loaded once per run (PipelineError if it has not run)."""
    if name not in self._results:
      self._results[name] = self.registry[name].load(self.workdir)
    return self._results[name]

  def forget(self, name: str) -> None:
    """Drops the cached result of `name` (the runner calls it after `name` runs)."""
    self._results.pop(name, None)

  def fingerprint(self, name: str) -> dict:
    """What stage `name`'s outputs depend on: its section (less `ignores`), the top-level
    fields it `uses` and, recursively, the fingerprints of the stages it `requires`."""
    st = self.registry[name]
    own = {k: v for k, v in self.cfg(name).to_dict().items() if k not in st.ignores}
    fp = {"layout": LAYOUT, name: own, **{u: self.uses_value(u) for u in st.uses}}
    requires = self.requires(name)
    if requires:
      fp["requires"] = {r: self.fingerprint(r) for r in requires}
    return config_to_dict(fp)

  def requires(self, name: str) -> tuple[str, ...]:
    """The stages stage `name` requires under this config (`Stage.requirements`)."""
    st = self.registry[name]
    get = getattr(st, "requirements", None)
    return tuple(get(self.cfg(name))) if get is not None else tuple(st.requires)

  def uses_value(self, field: str) -> Any:
    """A top-level field as fingerprints record it: the models by content, not by path."""
    if field in ("generator", "classifier"):
      return {"params_sha256": self.model_sha256(field)}
    return self.config.get(field)

  def model_sha256(self, what: str) -> str:
    """sha256 of the generator's or classifier's weights (`io.tree_sha256`), once per run.

    A converted checkpoint's hash comes from its meta.json cache (`io.params_sha256`,
    no loading); a built-in or "module:function" model is hashed once loaded.
    """
    if what not in self._hashes:
      spec = self.config[what]
      path = resolve_path(self.workdir, spec)
      if os.path.isfile(os.path.join(path, io.META_FILE)):
        self._hashes[what] = io.params_sha256(path)
      else:
        self._hashes[what] = io.tree_sha256(self.G if what == "generator" else self.clf)
    return self._hashes[what]


def _merge_section(config: ml_collections.ConfigDict, stage: Any) -> ml_collections.ConfigDict:
  """`stage.default_config()` updated with `config.<name>`; unknown keys are an error."""
  section = stage.default_config()
  if stage.name in config and config[stage.name] is not None:
    given = config[stage.name]
    unknown = sorted(set(given.keys()) - set(section.keys()))
    if unknown:
      raise PipelineError(f"config.{stage.name} has unknown field(s) {unknown}; known: "
                          f"{', '.join(sorted(section.keys()))}")
    try:
      section.update(given)
    except (TypeError, ValueError) as e:   # ConfigDict refuses a value of another type
      raise PipelineError(f"config.{stage.name}: {e}") from None
  return section

# ----------------------------------------------------------------------------- fingerprints


def config_to_dict(config: Any) -> Any:
  """A JSON-friendly plain copy of a ConfigDict (tuples become lists)."""
  if isinstance(config, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    config = config.to_dict()
  return json.loads(json.dumps(config, default=io._json_default))


def check_stage_config(out_dir: str, fingerprint: Mapping[str, Any], write: bool = True) -> None:
  """Records `fingerprint` in `out_dir`, or checks it against the one recorded there.

  The runner calls this before a stage runs, with its fingerprint (`RunContext.fingerprint`).
  A workdir filled by a different config is refused instead of being silently mixed
  with new outputs.

  With `write=False` (processes other than 0) it only checks.

  Raises:
    PipelineError: `out_dir` holds outputs of a different config; names the fields.
  """
  fingerprint = config_to_dict(dict(fingerprint))
  path = os.path.join(out_dir, STAGE_CONFIG_FILE)
  outputs = _outputs(out_dir)
  if not os.path.exists(path):
    if outputs:
      raise PipelineError(
          f"{out_dir} holds outputs ({outputs[0]}, ...) but no {STAGE_CONFIG_FILE}, so they "
          f"cannot be matched to a config; delete {out_dir} (or use a fresh --workdir)")
    os.makedirs(out_dir, exist_ok=True)
    if not write:   # processes other than 0 only check; process 0 records it
      return
    _remove_stale_temps(out_dir)
    if io.create_json(path, fingerprint):   # atomic: written whole, before any output
      return
  old = read_stage_config(path)
  diffs = config_diff(old, fingerprint)
  if diffs and not outputs:   # nothing made with the old config: record the new one
    if write:
      io.write_json(path, fingerprint)
    return
  if diffs:
    weights = " (the model weights changed)" if any("params_sha256" in d for d in diffs) else ""
    raise PipelineError(
        f"{out_dir} was written by a different config{weights} ({shown_diffs(diffs)}); use a fresh "
        f"--workdir or delete {out_dir}")


def _remove_stale_temps(out_dir: str) -> None:
  """Temp files of a config.json creation that a killed run left (the run holds the
  workdir lock, so no other writer's temp file can be among them)."""
  for n in os.listdir(out_dir):
    if n.startswith(f".{STAGE_CONFIG_FILE}.new-"):
      try:
        os.remove(os.path.join(out_dir, n))
      except FileNotFoundError:
        pass


def read_stage_config(path: str) -> dict:
  """A stage's config.json; PipelineError (one line) if it is empty or not JSON."""
  try:
    old = io.read_json_checked(path)
  except io.CorruptFileError as e:
    raise PipelineError(f"{e}: the config its outputs were made with is unknown; delete "
                        f"{os.path.dirname(path)} (or use a fresh --workdir)") from None
  if not isinstance(old, dict):
    raise PipelineError(f"{path} is not a stage config (a JSON object); delete "
                        f"{os.path.dirname(path)} (or use a fresh --workdir)")
  return old


def _outputs(out_dir: str) -> list[str]:
  """The entries of a stage directory other than its config.json and temp files."""
  if not os.path.isdir(out_dir):
    return []
  return sorted(n for n in os.listdir(out_dir)
                if n != STAGE_CONFIG_FILE and not n.startswith(f".{STAGE_CONFIG_FILE}."))


def shown_diffs(diffs: list[str]) -> str:
  return "; ".join(diffs[:4]) + (f"; ... {len(diffs)} differences" if len(diffs) > 4 else "")


def config_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for k in sorted(set(old) | set(new)):
      out += config_diff(old.get(k, "<absent>"), new.get(k, "<absent>"), f"{prefix}{k}.")
    return out
  return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def resolve_path(workdir: str, path: str) -> str:
  """`path` if absolute or a built-in name, else relative to `workdir` when it exists there."""
  if os.path.isabs(path):
    return path
  inside = os.path.join(workdir, path)
  return inside if os.path.exists(inside) or os.sep in path else path

# ----------------------------------------------------------------------------- models


def load_models(config: ml_collections.ConfigDict, workdir: str):
  """Loads `(G, clf)` named by `config.generator` / `config.classifier`.

  Each is a built-in name, a converted checkpoint directory (relative paths are taken
  inside `workdir`), or "module:function" returning the object (custom models, tests).

  Raises:
    PipelineError: a checkpoint directory is missing (names the converter command from
      `config.checkpoint_hints`), or G and clf disagree on the number of classes.
  """
  from lis_jax import classifiers, generators  # Local: keeps `import lis_jax.context` light.

  hints = config.get("checkpoint_hints", {}) or {}
  out = []
  for what, registry in (("generator", generators), ("classifier", classifiers)):
    spec = config[what]
    if ":" in spec and not os.path.exists(spec):
      out.append(resolve(spec)())
      continue
    path = resolve_path(workdir, spec)
    if path not in registry.BUILTINS and not os.path.exists(path):
      hint = hints.get(what)
      how = f"; convert it first: {hint.format(path=path)}" if hint else ""
      raise PipelineError(f"{what} checkpoint not found: {path}{how}")
    out.append(registry.load(path))
  G, clf = out
  if hasattr(clf, "with_settings"):   # config.feature_layer / config.quantize (README)
    clf = clf.with_settings(feature_layer=config.get("feature_layer"),
                            quantize=config.get("quantize"))
  if G.num_classes != clf.num_classes:
    raise PipelineError(f"generator has {G.num_classes} classes but classifier has "
                        f"{clf.num_classes}: they must share the label space")
  return G, clf
