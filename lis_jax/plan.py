"""The plan of a run, before it starts: per stage, the images it synthesises, classifies and
segments, the FLOPs (XLA's cost analysis), the peak memory of its largest call at the batch
the memory budget allows (lis_jax/memory.py) and the time a short measured probe predicts.

  python -m lis_jax.main --config=configs/linear.py --workdir=DIR --plan

A stage's work is counted from its config section (`WORK[name](sections, dims) -> Work`);
its calls are one of a few kinds (`CALLS`): 'synthesise+classify' (an image and the
classifier's r and logits from a w: paired data, sweeps, counterfactual checks, boundary
bisection), 'segment+measure' (an image, its part segmentation and metrics: quantify,
boundary, invariances), 'synthesise' (rendering) and 'search step' (the gradient of the
logits through classifier and generator: a counterfactual search's step in 'image' mode). Each kind is compiled at the batch
its stage's setting allows (the largest that fits `memory.SAFETY` x the budget), its FLOPs
per image read from XLA's cost analysis and its seconds per image timed once at a small
probe batch; a kind whose plan function is the stages' own call (`OWN_CALLS`) is compiled
and timed at the stage's batch instead, a compilation the stage then reuses. A stage whose
call does not fit even at batch 1 is refused, with the setting to change. Counts are what the settings ask for; where the work depends on the
data (samples kept, steps until a counterfactual succeeds) the plan counts the most the
settings allow and marks it with "<=".
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lis_jax import memory
from lis_jax import spec
from lis_jax.errors import PipelineError
from lis_jax.generators.base import GroundTruthWorld, broadcast_ws


# ----------------------------------------------------------------------------- work


@dataclasses.dataclass(frozen=True)
class Work:
  """What a stage asks for: images per call kind, the batch setting of each, and whether
  the counts are upper bounds."""
  images: Mapping[str, int]  # call kind -> images
  settings: Mapping[str, tuple[str, int]]  # call kind -> (config field, its value: the max batch)
  upper_bound: bool = False
  note: str = ""
  fixed: bool = False  # the batch partitions output files: it runs as configured, or not at all


@dataclasses.dataclass(frozen=True)
class Dims:
  """What the counts need from the models and the config's top level."""
  n_classes: int  # len(config.classes)
  feature_dim: int  # the classifier's r
  n_steps_sweep: int = 0


def _n_units(c, d: Dims) -> int:
  return int(spec.parse_units(c.units, d.feature_dim).size)


def _pairs(c, d: Dims) -> int:
  return d.n_classes * (d.n_classes - 1) if c.pairs == "all" else len(str(c.pairs).split(","))


def work_paired_data(s, d: Dims) -> Work:
  c = s["paired_data"]
  n = d.n_classes * c.n_per_class
  return Work({"synthesise+classify": n}, {"synthesise+classify": ("paired_data.batch_size", c.batch_size)},
              note="if every sample is kept (each rejected one costs one more image)")


def work_link(s, d: Dims) -> Work:
  c = s["link"]
  return Work({"synthesise+classify": int(c.cycle_samples)},
              {"synthesise+classify": ("link.batch_size", 256)})


def work_sweep(s, d: Dims) -> Work:
  c = s["sweep"]
  n = _n_units(c, d) * d.n_classes * c.samples_per_class * c.n_steps
  kind = "synthesise+classify" if c.reclassify else "synthesise"
  return Work({kind: n}, {kind: ("sweep.batch_size", c.batch_size)})


def work_counterfactual(s, d: Dims) -> Work:
  c = s["counterfactual"]
  searches = _pairs(c, d) * c.samples_per_pair
  checks = searches * (-(-c.max_steps // c.check_every))
  images = {"synthesise+classify": checks}
  if c.mode == "image":   # the gradient through the image ('reference': through the head only)
    images["search step"] = searches * c.max_steps
  return Work(images, {k: ("counterfactual.batch_size", c.batch_size) for k in images},
              upper_bound=True, note=f"{searches} searches, each checked until it succeeds (a batch "
                                     "file's searches run in chunks that fit)")


def work_quantify(s, d: Dims) -> Work:
  c, sw = s["quantify"], s["sweep"]
  starts = min(c.samples_per_unit, d.n_classes * sw.samples_per_class)
  n = _n_units(sw, d) * starts * 2 + starts * (1 + c.null_draws) + c.n_labelled + c.n_heldout
  return Work({"segment+measure": n}, {"segment+measure": ("quantify.batch_size", c.batch_size)})


def work_boundary(s, d: Dims) -> Work:
  c, cf = s["boundary"], s["counterfactual"]
  searches = _pairs(cf, d) * cf.samples_per_pair
  paths = searches * (c.p_points + c.p_past)          # p(target) along and past each path
  transfer = _pairs(cf, d) * c.transfer_samples * 2    # the mean shift and its null on new samples
  return Work({"synthesise+classify": searches * (c.n_grid + 2 * c.n_iter) + paths + transfer,
               "segment+measure": searches * (c.n_points + 2) * (1 + c.null_draws)},
              {"synthesise+classify": ("boundary.batch_size", c.batch_size),
               "segment+measure": ("boundary.measure_batch", c.measure_batch)}, upper_bound=True)
# (boundary.batch_size partitions its files; its searches run in chunks that fit.)


def work_invariances(s, d: Dims) -> Work:
  c = s["invariances"]
  n = c.n_conditions * c.samples_per_condition + c.n_mix * c.n_mix
  return Work({"synthesise+classify": n, "segment+measure": c.part_metric_train + c.part_metric_test},
              {"synthesise+classify": ("invariances.render_batch_size", c.render_batch_size),
               "segment+measure": ("invariances.render_batch_size", c.render_batch_size)})


def work_population(s, d: Dims) -> Work:
  return Work({}, {}, note="no images (statistics of r and w)")


def work_report(s, d: Dims) -> Work:
  c, sw = s["report"], s["sweep"]
  n = (c.n_top + c.n_bottom) * c.strip_samples * sw.n_steps + 2 * c.n_counterfactuals
  return Work({"synthesise": n}, {"synthesise": ("report.batch_size", c.batch_size)})


# Per stage: its work from the merged config sections. A stage added later gives its own
# here (or, after the layering step, as a Stage hook; see README "Memory and the plan").
def work_motion(s, d: Dims) -> Work:
  """Each unit's sweeps from `samples_per_unit` of its starts, rendered again (segmented too
  with the segmenter's masks; 'ground_truth': the world's)."""
  c, sw = s["motion"], s["sweep"]
  n = _n_units(sw, d) * min(c.samples_per_unit, d.n_classes * sw.samples_per_class) * sw.n_steps
  kind = "segment+measure" if c.masks == "segmenter" else "synthesise"
  return Work({kind: n}, {kind: ("motion.batch_size", c.batch_size * sw.n_steps)},
              note="motion.batch_size counts sweeps (of sweep.n_steps images)")


def work_photos(s, d: Dims) -> Work:
  """The demo's own renders (photos.renders): a folder's photos are not known beforehand.
  An Adam step counts as 3 syntheses (forward and backward); the refinement's w_dim
  products per step are not counted."""
  c = s["photos"]
  n = int(c.renders) if c.images else 0
  steps = n * 3 * c.restarts * c.num_steps
  checks = 2 * n * (-(-c.max_steps // c.check_every))
  note = (f"{n} rendered photos; a folder's own photos are not counted" if c.images
          else "photos.images is empty: nothing to do")
  return Work({"synthesise": steps, "synthesise+classify": checks},
              {"synthesise": ("photos.batch_size", c.batch_size),
               "synthesise+classify": ("photos.search_batch", c.search_batch)},
              upper_bound=True, note=note)


WORK: dict[str, Callable[[Mapping[str, Any], Dims], Work]] = {
    "paired_data": work_paired_data, "link": work_link, "sweep": work_sweep,
    "counterfactual": work_counterfactual, "quantify": work_quantify, "boundary": work_boundary,
    "invariances": work_invariances, "population": work_population, "report": work_report,
    "motion": work_motion, "photos": work_photos,
}


# ----------------------------------------------------------------------------- calls


def _synthesise(G, clf, w):
  return G.synthesis(broadcast_ws(w, G.num_ws))


def _synthesise_classify(G, clf, w):
  r = clf.features(clf.preprocess(_synthesise(G, clf, w)))
  return r, clf.head(r)


def _search_step(G, clf, w):
  """A counterfactual search's step in 'image' mode: the gradient of the logits through
  classifier and generator (the search differentiates its loss in r through the link, w,
  the image; 'reference' mode differentiates the classifier's head only)."""
  return jax.grad(lambda v: clf.head(clf.features(clf.preprocess(_synthesise(G, clf, v)))).sum())(w)


def _segment_measure_fn(qc, G) -> tuple[Callable, Any]:
  """The quantify stage's segment-and-measure call, `measuring._measure` with the static
  settings boundary and invariances measure with (truth=False), and stand-in segmenter
  parameters (zeros of the head's shapes: the cost does not depend on the values).

  It is the stages' own jitted function, so a stage that calls it at the batch the plan
  compiled it at finds that compilation in jax's cache (`OWN_CALLS`). The parts are the
  world's own when the segmenter will learn them from its true masks; otherwise a few
  (the head's last layer only: negligible for memory and time)."""
  from lis_jax.quantify import measuring, segment   # Local: only when a stage segments.
  shapes = segment.feature_shapes(G, qc.layers)
  layers = tuple(shapes)
  channels = sum(s[-1] for s in shapes.values())
  world_parts = qc.labels == "ground_truth" and isinstance(G, GroundTruthWorld)
  num_parts = len(G.part_names) if world_parts else 4   # background + the parts
  head = jax.eval_shape(lambda: segment.FewShotHead(num_parts, qc.head).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, channels)))["params"])
  params = {"head": jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), head),
            "feat_mean": jnp.zeros((channels,)), "feat_std": jnp.ones((channels,))}
  fn = functools.partial(measuring._measure, layers=layers, resolution=qc.resolution or G.resolution,
                         num_parts=num_parts, head_size=qc.head, max_components=qc.max_components,
                         entropy=measuring.uses_entropy(qc), truth=False)
  return fn, params


# Call kinds whose plan function is the stages' own jitted call: compiled (and timed) at the
# batch the stage runs at, not at the probes, so the stage reuses the plan's compilation (the
# demo's segment-and-measure call compiles in ~4 s on 2 CPU cores; with the probes the plan
# compiled it twice and boundary once more).
OWN_CALLS = ("segment+measure",)


@dataclasses.dataclass(frozen=True)
class CallPlan:
  """One call kind of one stage at its chosen batch."""
  kind: str
  images: int
  setting: str
  choice: memory.BatchChoice
  flops_per_image: float
  seconds_per_image: float

  @property
  def flops(self) -> float:
    return self.images * self.flops_per_image

  @property
  def seconds(self) -> float:
    return self.images * self.seconds_per_image


@dataclasses.dataclass(frozen=True)
class StagePlan:
  stage: str
  work: Work
  calls: tuple[CallPlan, ...]
  refused: str = ""  # the one-line reason when its smallest call does not fit

  @property
  def flops(self) -> float:
    return sum(c.flops for c in self.calls)

  @property
  def seconds(self) -> float:
    return sum(c.seconds for c in self.calls)

  @property
  def peak(self) -> int:
    return max((c.choice.peak for c in self.calls), default=0)


class Planner:
  """Compiles, analyses and times each (call kind, setting) once; plans stages with it.

  Args:
    G, clf: the run's models; sections: every stage's merged config section; budget:
    memory.device_budget(...); time_probe: time one call per kind (False: FLOPs only).
  """

  def __init__(self, G: Any, clf: Any, sections: Mapping[str, Any], budget: memory.Budget,
               time_probe: bool = True):
    self.G, self.clf, self.sections, self.budget = G, clf, sections, budget
    self.time_probe = time_probe
    self._calls: dict = {}
    self._fns: dict = {}

  def _fn(self, kind: str) -> tuple[Callable, tuple]:
    """The call of a kind and its leading args: one function per kind, so that every stage's
    setting of that kind is sized from the same compiled probes."""
    if kind not in self._fns:
      if kind == "segment+measure":
        fn, params = _segment_measure_fn(self.sections["quantify"], self.G)
        self._fns[kind] = fn, (self.G, params)
      else:
        self._fns[kind] = ({"synthesise": _synthesise, "synthesise+classify": _synthesise_classify,
                            "search step": _search_step}[kind], (self.G, self.clf))
    return self._fns[kind]

  def call(self, stage: str, kind: str, setting: str, max_batch: int, images: int,
           fixed: bool = False) -> CallPlan:
    key = (kind, setting, max_batch)
    if key not in self._calls:
      fn, args = self._fn(kind)
      rows = jax.ShapeDtypeStruct((max(1, max_batch), self.G.w_dim), jnp.float32)
      choice = memory.choose_batch(fn, rows, max(1, max_batch), *args, budget=self.budget,
                                   call=kind, setting=setting, stage=stage,
                                   first_at_max=kind in OWN_CALLS)
      if fixed and choice.batch < max_batch:   # it would run at max_batch, which does not fit
        raise memory._fail(stage, kind, max_batch, int(choice.model.at(max_batch)), self.budget,
                           setting)
      per_image = choice.memory.flops / choice.batch
      seconds = self._time(fn, args, choice, kind in OWN_CALLS) if self.time_probe else float("nan")
      self._calls[key] = (choice, per_image, seconds)
    choice, per_image, seconds = self._calls[key]
    return CallPlan(kind, images, setting, choice, per_image, seconds)

  def _time(self, fn, args, choice: memory.BatchChoice, at_choice: bool = False) -> float:
    """Seconds per image: one call at the larger probe batch (or the chosen one if smaller;
    `at_choice`: the chosen one, compiled already), timed after a first run."""
    b = choice.batch if at_choice else min(memory.PROBES[-1], choice.batch)
    w = jnp.zeros((b, self.G.w_dim), jnp.float32)
    f = memory.compiled(fn, args, w, b)
    jax.block_until_ready(f(*args, w))   # first run: allocation, thread pools
    t = time.perf_counter()
    jax.block_until_ready(f(*args, w))
    return (time.perf_counter() - t) / b

  def stage(self, name: str, dims: Dims) -> StagePlan:
    work = WORK[name](self.sections, dims)
    calls = []
    try:
      for kind, n in work.images.items():
        if n > 0:
          setting, max_batch = work.settings[kind]
          calls.append(self.call(name, kind, setting, max_batch, n, fixed=work.fixed))
    except PipelineError as e:
      return StagePlan(name, work, tuple(calls), refused=str(e))
    return StagePlan(name, work, tuple(calls))


def dims(config: Any, G: Any, clf: Any) -> Dims:
  classes = spec.parse_classes(config.classes, G.num_classes)
  d = jax.eval_shape(lambda w: _synthesise_classify(G, clf, w)[0], jnp.zeros((1, G.w_dim))).shape[-1]
  return Dims(n_classes=int(classes.size), feature_dim=int(d))


def merged_sections(config: Any) -> dict:
  """Every registered stage's default_config() updated with the config's section."""
  from lis_jax import stages   # Local: the registry imports every stage module.
  out = {}
  for name, stage in stages.REGISTRY.items():
    c = stage.default_config()
    if name in config:
      c.update(config[name])
    out[name] = c
  return out


def make(config: Any, G: Any, clf: Any, budget: memory.Budget | None = None,
         time_probe: bool = True, names: Sequence[str] | None = None) -> list[StagePlan]:
  """The plan of `config.stages` (or `names`) for these models and this budget."""
  budget = budget or memory.config_budget(config)
  planner = Planner(G, clf, merged_sections(config), budget, time_probe)
  d = dims(config, G, clf)
  return [planner.stage(n, d) for n in (names or spec.parse_stages(config.stages)) if n in WORK]


# ----------------------------------------------------------------------------- printing


def _si(x: float, unit: str = "") -> str:
  for p, s in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(x) >= p:
      return f"{x / p:.3g} {s}{unit}"
  return f"{x:.3g} {unit}".strip()


def _duration(s: float) -> str:
  if not np.isfinite(s):
    return "-"
  for d, u in ((86400, "d"), (3600, "h"), (60, "min")):
    if s >= d:
      return f"{s / d:.1f} {u}"
  return f"{s:.0f} s"


def table(plans: Sequence[StagePlan], budget: memory.Budget) -> str:
  """The plan as a text table, one row per stage and call kind, and the totals."""
  rows = [f"plan (memory budget {budget}; a call plans for {memory.SAFETY:.0%} of it)",
          f"{'stage':<15} {'call':<20} {'images':>10} {'FLOPs':>10} {'batch':>11} {'peak':>10} "
          f"{'time':>9}"]
  for p in plans:
    if p.refused:
      rows.append(f"{p.stage:<15} REFUSED: {p.refused}")
      continue
    if not p.calls:
      rows.append(f"{p.stage:<15} {'-':<20} {0:>10} {'-':>10} {'-':>11} {'-':>10} {'-':>9}  "
                  f"{p.work.note}")
    for c in p.calls:
      bound = "<=" if p.work.upper_bound else ""
      rows.append(f"{p.stage:<15} {c.kind:<20} {bound + str(c.images):>10} {_si(c.flops):>10} "
                  f"{f'{c.choice.batch}/{c.choice.max_batch}':>11} "
                  f"{c.choice.peak / memory.MiB:>7.0f} MiB {_duration(c.seconds):>9}")
  ok = [p for p in plans if not p.refused]
  rows.append(f"{'total':<15} {'':<20} {'':>10} {_si(sum(p.flops for p in ok)):>10} {'':>11} "
              f"{max((p.peak for p in ok), default=0) / memory.MiB:>7.0f} MiB "
              f"{_duration(sum(p.seconds for p in ok)):>9}")
  rows.append("batch: chosen / configured maximum; peak: the largest call's new memory at that batch "
              "(XLA's analysis, x the measured ratio on a host budget); time: images x a measured probe's "
              "seconds per image")
  return "\n".join(rows)


def refusal(plans: Sequence[StagePlan]) -> str | None:
  """The first refused stage's line, or None."""
  return next((p.refused for p in plans if p.refused), None)


# Peak figures of devices the plan extrapolates to (vendor data sheets), FLOP/s. JAX runs
# float32 convolutions and matmuls on H100 as TF32 and on TPU as bf16 passes by default.
DEVICE_PEAKS = {
    "H100 SXM (TF32 dense)": 494e12,
    "TPU v4 chip (bf16)": 275e12,
}
# Fraction of peak a convolutional generator reaches: an assumption, stated with the estimate.
ASSUMED_UTILISATION = 0.3


def device_estimates(flops: float) -> dict[str, float]:
  """Seconds for `flops` on each of DEVICE_PEAKS at ASSUMED_UTILISATION (estimates)."""
  return {k: flops / (v * ASSUMED_UTILISATION) for k, v in DEVICE_PEAKS.items()}
