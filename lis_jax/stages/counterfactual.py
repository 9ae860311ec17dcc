"""Stage `counterfactual`: shift r until the generated image is classified as a target.

The reference's search, for a representation r of an origin-class image: find a shift s
(starting uniform in [0, 1)) by SGD on
  loss(s) = -logit_target(r - s) + w_origin * logit_origin(r - s) - w_cos * cos(link(r), link(r - s))
(logits from the classifier's head on the shifted representation) and stop as soon as
the classifier applied to the generated image G.synthesis(link(relu(r - s))) predicts
the target, or after max_steps. Here many searches run in one jitted `lax.while_loop`,
each stopping on its own; the image-domain check runs every `check_every` steps (1: the
reference). Mode 'image' is the fully differentiable variant: the logits in the loss
are the classifier's on the regenerated image itself (gradient through G and clf).

Outputs: WORKSPACE.md, section `counterfactual/`.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import os
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from lis_jax import blocks
from lis_jax import distribute
from lis_jax import images
from lis_jax import memory
from lis_jax import io
from lis_jax import page
from lis_jax import errors
from lis_jax.generators.base import GroundTruthWorld
from lis_jax.analysis.counterfactual import (  # noqa: F401  (search, outcome: the library's)
    _outcome, _search, _search_outcome, image_logits, initial_shift, outcome, search, search_loss)
from lis_jax import validate as V
from lis_jax.stages.base import Stage

NAME = "counterfactual"

MODES = ("reference", "image")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.pairs = "all"  # 'all' ordered pairs of config.classes, or '232>254,151>197'
  c.samples_per_pair = 4  # searches per (origin, target)
  c.mode = "reference"  # reference: loss on r; image: loss on the regenerated image
  c.lr = 0.5  # SGD learning rate
  c.max_steps = 2000  # give up after this many steps
  c.check_every = 1  # image-domain stopping check every k steps (1: reference)
  c.w_origin = 0.6  # weight of +logit_origin in the loss
  c.w_cos = 10.0  # weight of -cos(link(r), link(r - s))
  c.batch_size = 64  # searches per jitted while_loop
  c.compact_rows = 0  # when <= this many searches still run, check only those (0: off; on CPU try batch_size / 4)
  c.top_units = 10  # units with the largest |shift| to record
  c.save_png = True  # before | after PNG per search
  return c


# Values a run accepts (lis_jax/validate.py's rule kinds), checked before anything runs;
# top_units is also checked against the classifier's width (`check`).
RULES = {
    "samples_per_pair": V.pos_int(), "lr": V.pos_float(), "max_steps": V.pos_int(),
    "check_every": V.pos_int(), "w_origin": V.any_float(), "w_cos": V.any_float(),
    "batch_size": V.pos_int(), "compact_rows": V.nonneg_int(), "top_units": V.pos_int(),
}


@dataclasses.dataclass(frozen=True)
class CounterfactualResult:
  """All searches (results.npz) and their summary (summary.json).

  arrays: search, sample, origin, target [B]; r, shift [B, D]; w_before, w_after
  [B, w_dim]; steps [B]; success [B] bool; probs_before, probs_after [B, C];
  top_units, top_shift [B, top_units]. summary: n, success_rate, steps_*.
  """
  arrays: dict
  summary: dict


def parse_pairs(spec: str, classes: np.ndarray) -> list[tuple[int, int]]:
  """(origin, target) pairs: 'all' ordered pairs of `classes`, or '232>254,151>197'."""
  if spec == "all":
    return [(int(o), int(t)) for o in classes for t in classes if o != t]
  pairs = []
  for part in spec.split(","):
    try:
      o, t = (int(x) for x in part.split(">"))
    except ValueError:
      raise errors.PipelineError(f"counterfactual.pairs: {part!r} is not 'origin>target'") from None
    for x in (o, t):
      if x not in classes:
        raise errors.PipelineError(f"counterfactual.pairs: class {x} is not in config.classes "
                                     f"{classes.tolist()} (no paired data for it)")
    if o == t:
      raise errors.PipelineError(f"counterfactual.pairs: origin and target are both {o}")
    pairs.append((o, t))
  return pairs


def plan(cls: np.ndarray, pairs: list[tuple[int, int]], per_pair: int) -> dict[str, np.ndarray]:
  """The searches: for each pair, the first `per_pair` paired-data rows of the origin class."""
  sample, origin, target = [], [], []
  for o, t in pairs:
    rows = np.flatnonzero(cls == o)[:per_pair]
    if rows.size < per_pair:
      raise errors.PipelineError(f"counterfactual.samples_per_pair={per_pair} but class {o} "
                                   f"has only {rows.size} paired samples")
    sample += rows.tolist()
    origin += [o] * per_pair
    target += [t] * per_pair
  return {"sample": np.asarray(sample, np.int32), "origin": np.asarray(origin, np.int32),
          "target": np.asarray(target, np.int32)}


def run(ctx) -> None:
  """Runs the planned searches batch by batch into `workdir/counterfactual/`."""
  c = ctx.cfg(NAME)
  out_dir = ctx.out_dir(NAME)
  if c.mode not in MODES:
    raise errors.PipelineError(f"counterfactual.mode={c.mode!r}; known: {', '.join(MODES)}")
  if c.max_steps < 1 or c.check_every < 1 or c.batch_size < 1 or c.samples_per_pair < 1:
    raise errors.PipelineError("counterfactual max_steps, check_every, batch_size and "
                                 "samples_per_pair must be >= 1")
  data = ctx.result("paired_data")
  link = ctx.result("link").link
  G, clf = ctx.G, ctx.clf
  todo_plan = plan(data.cls, parse_pairs(c.pairs, ctx.classes), c.samples_per_pair)

  mesh = ctx.mesh
  # A batch file holds searches [b * batch_size, (b + 1) * batch_size): the same items for
  # any number of processes and devices; the jitted batch is padded to the device count.
  batch = distribute.round_up(c.batch_size, mesh)
  G_r, clf_r, link_r = distribute.replicate((G, clf, link), mesh)
  key = ctx.key(NAME)
  n = todo_plan["sample"].size
  n_batches = -(-n // c.batch_size)
  store = blocks.BlockStore(out_dir, "batch")
  statics = dict(lr=c.lr, max_steps=c.max_steps, check_every=c.check_every,
                 w_origin=c.w_origin, w_cos=c.w_cos, mode=c.mode, compact_rows=c.compact_rows)
  mine = store.todo(n_batches, items=ctx.my_items(n_batches))   # this process's batches (corrupt ones again)
  for b in ctx.progress(mine, unit="batch", desc="counterfactual"):
    ids = np.arange(b * c.batch_size, min(n, (b + 1) * c.batch_size), dtype=np.int32)
    rows = todo_plan["sample"][ids]
    arrays = {"search": ids, "sample": rows, "origin": todo_plan["origin"][ids],
              "target": todo_plan["target"][ids], "r": data.r[rows], "w_before": data.w[rows]}
    shift0 = np.asarray(initial_shift(key, jnp.asarray(ids), clf.feature_dim))
    rows_in = (arrays["r"], arrays["origin"], arrays["target"], shift0, np.ones(ids.size, bool),
               arrays["w_before"])
    # The file's searches run in chunks the memory budget allows (searches are independent).
    host = memory.map_chunks(functools.partial(_search_outcome, top_units=c.top_units, **statics),
                             rows_in, batch, G_r, clf_r, link_r, budget=ctx.budget, call="search",
                             setting="counterfactual.batch_size", stage=NAME,
                             multiple=distribute.round_up(1, mesh),
                             place=lambda x: distribute.shard_batch(x, mesh))
    errors.check_finite(f"counterfactual batch {b} shift", host["shift"])
    arrays.update(host)
    if c.save_png:
      for i, s in enumerate(ids):
        images.save_png(_image_path(out_dir, int(s)),
                        images.row([host["img_before"][i], host["img_after"][i]]))
    errors.maybe_interrupt(NAME, b + 1)
    store.write(b, **{k: v for k, v in arrays.items() if not k.startswith("img_")})


def merge(ctx) -> None:
  """Process 0, after every process wrote its batches: results.npz, summary.json, index.csv."""
  c = ctx.cfg(NAME)
  n = len(parse_pairs(c.pairs, ctx.classes)) * c.samples_per_pair
  _finish(blocks.BlockStore(ctx.out_dir(NAME), "batch"), -(-n // c.batch_size), c.save_png)
  if c.save_png:
    repair_images(ctx.G, ctx.out_dir(NAME))


def _image_path(out_dir: str, search: int) -> str:
  return os.path.join(out_dir, "images", f"cf_{search:05d}.png")


def repair_images(G: Any, out_dir: str) -> int:
  """Regenerates missing before | after PNGs from results.npz's w; returns how many.

  Synthesized again from `w_before` / `w_after` (up to 1 level of uint8 rounding from
  the originals, which came from a different batch shape).
  """
  res = io.load_npz(os.path.join(out_dir, "results.npz"))
  todo = [i for i, s in enumerate(res["search"]) if not os.path.exists(_image_path(out_dir, int(s)))]
  for i in todo:
    img = images.render(G, np.stack([res["w_before"][i], res["w_after"][i]]))   # [2, H, W, 3]
    images.save_png(_image_path(out_dir, int(res["search"][i])), images.row(list(img)))
  if todo:
    print(f"[{NAME}] {len(todo)} missing PNG(s) regenerated", flush=True)
  return len(todo)


def _finish(store: blocks.BlockStore, n_batches: int, save_png: bool) -> None:
  """Concatenates the batches into results.npz, writes summary.json and index.csv."""
  out_dir = store.directory
  res = store.concat(n_batches)
  io.save_npz(os.path.join(out_dir, "results.npz"), **res)
  ok = res["success"]
  summary = {"n": int(ok.size), "success_rate": float(ok.mean()),
             "steps_median_success": float(np.median(res["steps"][ok])) if ok.any() else None,
             "steps_mean_success": float(res["steps"][ok].mean()) if ok.any() else None}
  io.write_json(os.path.join(out_dir, "summary.json"), summary)
  with io.atomic_file(os.path.join(out_dir, "index.csv"), "w") as f:
    wr = csv.writer(f)
    wr.writerow(["search", "sample", "origin", "target", "success", "steps", "p_origin",
                 "p_target", "png"])
    for i in range(ok.size):
      o, t = res["origin"][i], res["target"][i]
      wr.writerow([int(res["search"][i]), int(res["sample"][i]), int(o), int(t), int(ok[i]),
                   int(res["steps"][i]), repr(float(res["probs_after"][i, o])),
                   repr(float(res["probs_after"][i, t])),
                   f"images/cf_{int(res['search'][i]):05d}.png" if save_png else ""])
  distribute.log(f"[counterfactual] {summary['n']} searches, success rate {summary['success_rate']:.2f}")


def load(workdir: str) -> CounterfactualResult:
  out_dir = os.path.join(workdir, NAME)
  path = errors.require(os.path.join(out_dir, "results.npz"), NAME)
  arrays = io.load_npz(path)
  return CounterfactualResult(arrays=arrays, summary=io.read_json(os.path.join(out_dir, "summary.json")))


# ----------------------------------------------------------------------------- report


def section(ctx) -> str | None:
  """Success rate of the counterfactual searches and before/after pairs."""
  if not os.path.exists(os.path.join(ctx.out_dir(NAME), "results.npz")):
    return None
  c = ctx.cfg("report")
  G = ctx.G
  names = G.class_names if isinstance(G, GroundTruthWorld) else None
  name = (lambda k: f"{names[k]} ({k})") if names else str
  res = ctx.result(NAME).arrays
  ok = res["success"].astype(bool)
  n_fail = min(int((~ok).sum()), max(c.n_counterfactuals // 4, 1)) if ok.any() else c.n_counterfactuals
  # One search per origin class in turn, each origin's nearest-numbered target first, so
  # the pairs shown cover many origins and targets.
  offset = (res["target"] - res["origin"]) % (int(res["target"].max()) + 1)
  by_offset = np.lexsort((res["origin"], offset))
  pick = lambda mask: _round_robin(by_offset[mask[by_offset]], res["origin"])
  show = np.concatenate([pick(ok)[:c.n_counterfactuals - n_fail], pick(~ok)[:n_fail]])
  before = images.render(G, res["w_before"][show], c.batch_size)
  after = images.render(G, res["w_after"][show], c.batch_size)
  rows, fig = [], []
  for j, i in enumerate(show):
    o, t = int(res["origin"][i]), int(res["target"][i])
    pair = images.row([before[j], after[j]])
    fig.append((f"{names[o] if names else o} > {names[t] if names else t}"
                + ("" if ok[i] else "\n(failed)"), pair))
    rows.append((page.img(pair, c.image_scale), page.escape(name(o)),
                 page.escape(name(t)), f"{res['probs_before'][i, o]:.3f}",
                 f"{res['probs_after'][i, t]:.3f}", int(res["steps"][i]),
                 "yes" if ok[i] else "no"))
  images.save_png(os.path.join(ctx.out_dir("report"), "counterfactuals.png"), images.labelled_grid(fig))
  steps = res["steps"][ok]
  stats = (f"median {np.median(steps):.0f} steps to success" if ok.any() else "no success")
  return ("<h2>Counterfactuals</h2>"
          f"<p><b>Success rate: {ok.mean():.3f}</b> ({int(ok.sum())} of {ok.size} searches; {stats}). "
          "A search shifts the representation r until the classifier, applied to the image "
          "generated from link(relu(r - shift)), predicts the target class.</p>"
          + page.table(["before | after", "origin", "target", "p(origin) before", "p(target) after",
                        "steps", "success"], rows, escape_cells=False))


def _round_robin(idx: np.ndarray, key: np.ndarray) -> np.ndarray:
  """idx reordered so that consecutive entries cycle through the values of key[idx] (order kept within a value)."""
  groups = [list(idx[key[idx] == k]) for k in np.unique(key[idx])]
  out = []
  while any(groups):
    out += [g.pop(0) for g in groups if g]
  return np.asarray(out, np.int64)


def summary(ctx) -> dict | None:
  if not os.path.exists(os.path.join(ctx.out_dir(NAME), "results.npz")):
    return None
  return ctx.result(NAME).summary


def check(ctx) -> None:
  """top_units must be at most the classifier's number of units, and r must be a ReLU
  output: the search regenerates from link(relu(r - s)), the reference's rule for its
  non-negative r (checked before any stage runs)."""
  try:
    V.check_top_units(ctx.cfg(NAME).top_units, ctx.clf.feature_dim)
  except ValueError as e:
    raise errors.PipelineError(str(e)) from None
  if not getattr(ctx.clf, "features_nonnegative", True):
    raise errors.PipelineError(
        f"counterfactual: {ctx.clf.arch}'s feature_layer='{ctx.clf.feature_layer}' r can be "
        f"negative, and the search's link(relu(r - s)) would clip it; use "
        f"--config.feature_layer=penultimate for this classifier")


STAGE = Stage(name=NAME, requires=("link",), default_config=default_config, run=run, load=load,
              uses=("classes", "seed"), section=section, summary=summary,
              ignores=("save_png", "compact_rows"),   # batch_size: which searches share a file
              merge=merge, check=check,
              rules=RULES)
