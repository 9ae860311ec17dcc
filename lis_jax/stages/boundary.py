"""Stage `boundary`: what changes across the classifier's decision boundary.

For every counterfactual search (successful or not) the path
w(t) = link(relu(r - t shift)), t in [0, 1], is followed: the t where the classifier's
prediction on the regenerated image leaves the origin class and where it reaches the
target are found by bisection (lis_jax.analysis.boundary.crossings, jitted, the batch
sharded over ctx.mesh); the images at `n_points` grid points of the path and at both
crossings are regenerated, segmented by quantify's few-shot segmenter and measured;
so are the ends of `null_draws` null paths per search from the same start (`null_space`
'r': link(relu(r - t_c |shift| d)) with d random, the path's own shift norm, relu and
link; 'w': random directions in w of the same length). The change of every concept
(part x metric) from the path's start to the crossing, per (origin -> target) pair, gets
a bootstrap interval over the pair's searches, a null p-value (analysis.boundary.
pair_statistics) and a Benjamini-Hochberg q-value over the pair x concept table
('selective': q <= `q_level`); the same test on the null paths gives its calibration
(summary.json 'calls'); it is
related to the counterfactual's most shifted units and their selectivity (quantify).
On a world that knows its factors (decode_factors), the true factor changes along the
same paths validate the measured ones.

Outputs (workdir/boundary/, atomic; layout: WORKSPACE.md):
  config.json             the fingerprint (written by the runner)
  batch_<b:05d>.npz       one batch of searches (existence = done): search, origin,
                          target [B]; t_leave, t_reach, width [B]; leave_found,
                          reach_found [B] bool; pred_grid [B, n_grid]; t_points
                          [B, n_points + 2] (grid, t_leave, t_reach); 'pt.<metric>'
                          [B, n_points + 2, P(, K)] part metrics at those points;
                          'null.<metric>' [B, R, P(, K)]; with ground truth
                          truth_change [B, F] (factor change start -> crossing, fraction
                          of range), truth_factors [F] and null_truth_change [B, R, F]
                          (along the null paths: the validation's scale)
  pairs.csv               one row per pair x part x metric: origin, target, part, metric,
                          mean, ci_low, ci_high, n, null_rms, effect, p_null, selective, rank
  summary.json            crossings found, per pair top concepts, the relation to the
                          most shifted units, validation (built-in world); 'paths': the
                          paths' analyses below
  frames.npz, transfer.npz  the paths' PCA frames and the transferred mean shifts

The paths' analyses (the reference's src/counterfactual_analysis/, math in
lis_jax.analysis.paths): p(target), p(origin) along each path and past t = 1
('path.*' batch keys), the paths in the first two PCs of their pair's classes, the units
each search shifts most counted across searches, and each pair's mean shift transferred to
new origin-class samples against a random shift of the same norm.
"""
from __future__ import annotations

import dataclasses
import functools
import html
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from lis_jax import blocks, distribute, errors, generators, images, io, memory, page
from lis_jax.analysis import boundary as lib
from lis_jax.generators.base import GroundTruthWorld
from lis_jax.quantify import selectivity
from lis_jax.analysis.counterfactual import image_logits
from lis_jax.analysis.readout import decode_factors
from lis_jax.analysis import nulls, truth as truth_lib
from lis_jax.analysis import paths as paths_lib
from lis_jax.quantify import measuring
from lis_jax import validate as V
from lis_jax.stages.base import Stage

NAME = "boundary"
TABLE_COLUMNS = ("origin", "target") + selectivity.TABLE_COLUMNS[1:]


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.n_grid = 5  # points on [0, 1] classified to find the first bracket of each crossing
  c.n_iter = 8  # bisection steps inside it: crossings known to 1 / (n_grid - 1) / 2^n_iter
  c.n_points = 3  # grid points of the path measured (0 and 1 included), besides both crossings
  c.null_draws = 16  # null paths per search: each search's change is ranked among its own (p resolution 1/17)
  c.null_space = "r"  # 'r': random r-space shifts of the path's shift norm, through relu and the link; 'w': isotropic in w
  c.q_level = 0.1  # 'selective': Benjamini-Hochberg q <= q_level over the pair x concept table
  c.batch_size = 64  # searches per batch (one file; rounded up to the device count)
  c.measure_batch = 64  # images per segment-and-measure call
  c.n_boot = 1000  # bootstrap resamples over a pair's searches
  c.level = 0.95  # interval coverage
  c.alpha = 0.05  # null p-value threshold
  c.top_k = 3  # concepts listed per pair
  c.strips = 4  # searches shown as image strips in the report
  c.pairs_shown = 8  # pairs shown in the report's bar charts
  # The reference's analyses of the paths (lis_jax.analysis.paths; README "Along the paths").
  c.p_points = 11  # t values on [0, 1] (0 and 1 included) where p(target), p(origin) are read
  c.p_past = 5  # further steps of the same size past t = 1 (the reference's add_steps): here t up to 1.5
  c.relevant_k = 10  # units per search counted as its relevant units (transition_relevant_units.py: 10)
  c.transfer_samples = 64  # new origin-class samples (paired rows no search started from) per pair
  c.paths_shown = 4  # pairs whose PCA trajectories the report draws
  return c


# Values a run accepts (lis_jax/validate.py's rule kinds), checked before anything runs.
# t is float32: 24 bits of mantissa, so past ~24 halvings of [0, 1] a bisection step no
# longer moves t (the bracket stops shrinking and the loop only costs time).
MAX_HALVINGS = 24
RULES = {
    "n_grid": V.int_at_least(2), "n_iter": V.why(("int", 0, MAX_HALVINGS),
                                                "float32 t resolves about 24 halvings of [0, 1]"),
    "n_points": V.why(("int", 2, 1024), "images measured per search"),
    "null_draws": ("int", 1, 1024), "q_level": V.unit_open(), "null_space": V.choice("r", "w"),
    "batch_size": V.why(("int", 1, 65536), "searches held in memory at once"),
    "measure_batch": ("int", 1, 65536),
    "n_boot": ("int", 1, 1_000_000), "level": V.unit_open(), "alpha": V.unit_open(),
    "top_k": ("int", 1, 1000), "strips": V.nonneg_int(), "pairs_shown": V.nonneg_int(),
    "p_points": V.int_at_least(2), "p_past": V.nonneg_int(), "relevant_k": V.pos_int(),
    "transfer_samples": V.pos_int(), "paths_shown": V.nonneg_int(),
}


@dataclasses.dataclass(frozen=True)
class BoundaryResult:
  """summary.json and the per-pair table (pairs.csv rows, typed) of a finished stage."""
  summary: dict
  rows: list
  workdir: str

  def batches(self) -> list[dict]:
    return load_batches(self.workdir)


def _store(workdir: str) -> blocks.BlockStore:
  """Boundary batches: crossing times are NaN where a path never crosses and part metrics
  where a part is absent, so only the checksums are verified on read."""
  return blocks.BlockStore(os.path.join(workdir, NAME), "batch", finite=False)


# Arrays of a batch that are never NaN (the others are NaN only where documented).
_FINITE = ("search", "origin", "target", "width", "pred_grid", "pt.area", "null.area") + (
    "path.p_target", "path.p_origin", "path.pc_r", "path.pc_w")


def check_batch(path: str, b: dict) -> None:
  """What `_batch` writes, checked on read (a checksum cannot tell a NaN the writer never
  writes): io.CorruptFileError naming the file otherwise. t_leave / t_reach are NaN
  exactly where leave_found / reach_found are false."""
  for k in _FINITE:
    if k in b and not np.isfinite(b[k]).all():
      raise io.CorruptFileError(path, f"{k} holds NaN or inf (the stage never writes them)")
  for t, found in (("t_leave", "leave_found"), ("t_reach", "reach_found")):
    if t in b and found in b and not np.array_equal(np.isfinite(b[t]), b[found].astype(bool)):
      raise io.CorruptFileError(path, f"{found} disagrees with {t} (NaN exactly where not found)")


def drop_bad_batches(workdir: str, n_batches: int) -> None:
  """Removes batch files that pass their checksum but not `check_batch` (say so): they are
  computed again."""
  store = _store(workdir)
  for b in range(n_batches):
    if not os.path.exists(store.path(b)):
      continue
    try:
      check_batch(store.path(b), store.read(b))
    except io.CorruptFileError as e:
      print(f"[{NAME}] {' '.join(str(e).split())[:300]}; recomputing it", flush=True)
      os.remove(store.path(b))


def load_batches(workdir: str) -> list[dict]:
  """The batch files written so far, in order, each checked (`check_batch`)."""
  store = _store(workdir)
  out = []
  for b in store:
    check_batch(store.path(int(b["block"])) if "block" in b else store.directory, b)
    out.append({k: v for k, v in b.items() if k != "block"})
  return out


def load(workdir: str) -> BoundaryResult:
  import csv
  out_dir = os.path.join(workdir, NAME)
  summary = io.read_json(errors.require(os.path.join(out_dir, "summary.json"), NAME))
  with open(os.path.join(out_dir, "pairs.csv")) as f:
    rows = [{k: (v == "True" if k == "selective" else int(v) if k in ("origin", "target", "n", "rank")
                 else v if k in ("part", "metric") else float(v)) for k, v in r.items()}
            for r in csv.DictReader(f)]
  return BoundaryResult(summary=summary, rows=rows, workdir=workdir)


# ----------------------------------------------------------------------------- compute


@functools.partial(jax.jit, static_argnames=("n_grid", "n_iter"))
def _crossings(G, clf, link, r, shift, origin, target, *, n_grid, n_iter):
  def predict(t, rows):
    return image_logits(G, clf, link, r[rows] - t[:, None] * shift[rows]).argmax(-1)
  return lib.crossings(predict, origin, target, n_grid=n_grid, n_iter=n_iter)


@functools.partial(jax.jit, static_argnames=("n_grid", "n_iter"))
def _crossings_rows(G, clf, link, rows, *, n_grid, n_iter):
  """`_crossings` on rows (r, shift, origin, target) (memory.map_chunks' form)."""
  return _crossings(G, clf, link, *rows, n_grid=n_grid, n_iter=n_iter)


@jax.jit
def _path(link, r, shift, t):
  return lib.path_w(link, r, shift, t)


def _batch(ctx, c, seg, link, cf: dict, ids: np.ndarray, batch: int) -> dict:
  """Crossings, measured path points, null ends and true changes of searches `ids`."""
  G, clf, mesh = ctx.G, ctx.clf, ctx.mesh
  arr = {k: cf[k][ids] for k in ("search", "origin", "target", "r", "shift")}
  G_r, clf_r, link_r = distribute.replicate((G, clf, link), mesh)
  # The file's searches in chunks the memory budget allows (memory.map_chunks).
  res = memory.map_chunks(functools.partial(_crossings_rows, n_grid=c.n_grid, n_iter=c.n_iter),
                          tuple(arr[k] for k in ("r", "shift", "origin", "target")), batch,
                          G_r, clf_r, link_r, budget=ctx.budget, call="crossings",
                          setting="boundary.batch_size", stage=NAME,
                          multiple=distribute.round_up(1, mesh),
                          place=lambda x: distribute.shard_batch(x, mesh))
  t_pts = lib.path_points(res["t_leave"], res["t_reach"], c.n_points)  # [B, T']
  b, t_n = t_pts.shape
  w_pts = np.asarray(_path(link, jnp.repeat(jnp.asarray(arr["r"]), t_n, 0),
                           jnp.repeat(jnp.asarray(arr["shift"]), t_n, 0),
                           jnp.asarray(t_pts.reshape(-1), jnp.float32))).reshape(b, t_n, -1)
  w_start, w_cross = w_pts[:, 0], w_pts[:, -1]  # the crossing column: t_reach, else t_leave, else 1
  if c.null_space == "r":  # the same shift norm, relu and link as the path; another direction
    t_c = lib.crossing_t(res["t_leave"], res["t_reach"])
    nul = nulls.boundary_ends(link, arr["r"], arr["shift"], t_c, ctx.key(f"{NAME}.null"), arr["search"],
                              c.null_draws)  # [B, R, w_dim]
  else:
    nul = lib.null_ends(w_start, w_cross, ctx.key(f"{NAME}.null"), arr["search"], c.null_draws)
  d = w_pts.shape[-1]
  first = lib.first_copies(t_pts)  # [B, T']: repeated points are measured once
  unique = (first == np.arange(t_n)).reshape(-1)
  qc = ctx.cfg("quantify")
  m = measuring.measure(G, seg, np.concatenate([w_pts.reshape(-1, d)[unique], nul.reshape(-1, d)]),
                        c.measure_batch, qc.max_components, entropy=measuring.uses_entropy(qc),
                        setting="boundary.measure_batch")
  out = {k: arr[k] for k in ("search", "origin", "target")}
  out.update({k: res[k] for k in ("t_leave", "t_reach", "width", "leave_found", "reach_found", "pred_grid")})
  out["t_points"] = t_pts
  n_u = int(unique.sum())
  slot = np.cumsum(unique).reshape(b, t_n) - 1  # measured row of each unique point
  src = np.take_along_axis(slot, first, axis=1)  # [B, T'] measured row of every point
  for k, v in m.items():
    out[f"pt.{k}"] = v[:n_u][src]
    out[f"null.{k}"] = v[n_u:].reshape(b, c.null_draws, *v.shape[1:])
  if isinstance(G, GroundTruthWorld):
    f0, _ = decode_factors(G, jnp.asarray(w_start))
    f1, _ = decode_factors(G, jnp.asarray(w_cross))
    ch = lib.factor_changes({k: np.asarray(v) for k, v in f0.items()}, {k: np.asarray(v) for k, v in f1.items()},
                            G.factor_ranges, G.circular_factors)
    out["truth_factors"] = np.asarray(list(ch))
    out["truth_change"] = np.stack(list(ch.values()), -1)
    r_n = nul.shape[1]  # the null paths' true changes: the validation's scale (lib.validate)
    fn, _ = decode_factors(G, jnp.asarray(nul.reshape(-1, d)))
    chn = lib.factor_changes({k: np.repeat(np.asarray(v), r_n) for k, v in f0.items()},
                             {k: np.asarray(v) for k, v in fn.items()}, G.factor_ranges, G.circular_factors)
    out["null_truth_change"] = np.stack([chn[k].reshape(b, r_n) for k in ch], -1)  # [B, R, F]
  return out


def run(ctx) -> None:
  """Stage entry: all searches batch by batch (resumable), then the pair statistics."""
  from lis_jax.quantify import segment
  c = ctx.cfg(NAME)
  cf = ctx.result("counterfactual").arrays
  link = ctx.result("link").link
  try:
    seg = ctx.result("quantify").segmenter()   # trained by the quantify stage (required)
  except segment.SegmentationError as e:
    raise errors.PipelineError(str(e)) from None
  store = _store(ctx.workdir)
  batch = distribute.round_up(c.batch_size, ctx.mesh)
  n = cf["search"].size
  n_batches = -(-n // batch)
  drop_bad_batches(ctx.workdir, n_batches)
  frames = _paths_frames(ctx, cf)
  for b in tqdm(store.todo(n_batches), unit="batch", desc=NAME):
    ids = np.arange(b * batch, min(n, (b + 1) * batch))
    out = _batch(ctx, c, seg, link, cf, ids, batch)
    # (padded to the file's searches, not to a batch of 64 (_transfer: the same))
    out.update(_paths_batch(ctx, c, link, cf, ids, min(batch, distribute.round_up(ids.size, ctx.mesh)), frames))
    errors.check_finite(f"boundary batch {b} areas", out["pt.area"])
    errors.maybe_interrupt(NAME, b + 1)
    store.write(b, **out)
  _transfer(ctx, c, link, cf)
  summarise(ctx, measuring.measured_parts(seg))


# ----------------------------------------------------------------------------- the paths' analyses
# (lis_jax.analysis.paths: p along the path and past it, PCA trajectories, relevant units,
# the transferred mean shift)


def _pairs_of(cf: dict) -> list[tuple[int, int]]:
  return lib.group_by_pair(np.asarray(cf["origin"]), np.asarray(cf["target"]))[0]


def _paths_frames(ctx, cf: dict) -> dict:
  """Per pair of the searches, its PCA frames in r and w (paired data of both classes);
  written to frames.npz for the report. {'pairs': [(o, t)], 'r': {...}, 'w': {...}}."""
  data = ctx.result("paired_data")
  pairs = _pairs_of(cf)
  frames = {"pairs": pairs, "r": paths_lib.pair_frames(data.r, data.cls, pairs),
            "w": paths_lib.pair_frames(data.w, data.cls, pairs)}
  io.save_npz(os.path.join(ctx.out_dir(NAME), "frames.npz"), pairs=np.asarray(pairs, np.int32),
              **{f"{sp}.{k}": v for sp in ("r", "w") for k, v in frames[sp].items()})
  return frames


def load_frames(workdir: str) -> dict:
  """frames.npz as `_paths_frames` returns it."""
  f = io.load_npz(os.path.join(workdir, NAME, "frames.npz"))
  return {"pairs": [tuple(int(v) for v in p) for p in f["pairs"]],
          **{sp: {k.split(".", 1)[1]: v for k, v in f.items() if k.startswith(sp + ".")} for sp in ("r", "w")}}


@jax.jit
def _readout_at(G, clf, link, r, shift, origin, target, t, frame_r, frame_w):
  """paths_lib.readout_at with the models bound; one compilation serves every t of every
  batch and the transfer's predictions (`_transfer`), as its shapes are the batch's."""
  def image_fn(rs):
    w = link(jax.nn.relu(rs))
    feats = clf.features(clf.preprocess(G.synthesis(generators.broadcast_ws(w, G.num_ws))))
    return w, feats, clf.head(feats)
  return paths_lib.readout_at(image_fn, clf.head, r, shift, origin, target, t, frame_r, frame_w)


def _sharded_readout(ctx, models: tuple, batch: int, arrays: list, frames: list) -> Callable:
  """t -> _readout_at's outputs (numpy) for `arrays` (r, shift, origin, target) and `frames`
  (r, w; [B', ...] per row), padded to `batch` rows and sharded over ctx.mesh; models: (G, clf,
  link) replicated over it."""
  pad = jax.tree_util.tree_map(lambda x: distribute.pad_batch(x, batch), (arrays, frames))
  G_r, clf_r, link_r = models
  (r, shift, origin, target), (f_r, f_w) = distribute.shard_batch(pad, ctx.mesh)
  return lambda t: {k: np.asarray(v) for k, v in _readout_at(G_r, clf_r, link_r, r, shift, origin, target,
                                                              jnp.float32(t), f_r, f_w).items()}


def _paths_batch(ctx, c, link, cf: dict, ids: np.ndarray, batch: int, frames: dict) -> dict:
  """(a)-(c) for searches `ids`: 'path.<key>' arrays of paths_lib.readout [B, T(, N_PC)]."""
  pair_idx = {p: i for i, p in enumerate(frames["pairs"])}
  which = np.array([pair_idx[(int(o), int(t))] for o, t in zip(cf["origin"][ids], cf["target"][ids])])
  arrays = [cf[k][ids] for k in ("r", "shift", "origin", "target")]
  fr = [{k: v[which] for k, v in frames[sp].items() if k != "explained"} for sp in ("r", "w")]
  at = _sharded_readout(ctx, distribute.replicate((ctx.G, ctx.clf, link), ctx.mesh), batch, arrays, fr)
  out = paths_lib.stack_points([at(t) for t in paths_lib.t_grid(c.p_points, c.p_past)])
  return {f"path.{k}": v[:ids.size] for k, v in out.items()}


def _transfer_path(workdir: str) -> str:
  return os.path.join(workdir, NAME, "transfer.npz")


def _transfer(ctx, c, link, cf: dict) -> None:
  """(e): each pair's mean effective shift (over its successful searches) applied to
  `transfer_samples` new origin-class samples (paired rows no search started from, in
  paired-data order), and a null shift of the same norm in a random direction per sample
  (stream boundary.transfer, indices origin, target). Writes transfer.npz (existence =
  done): origin, target [P]; n_searches [P]; shift_norm [P]; rows, valid [P, S];
  pred, pred_r [2, P, S] (0: the shift, 1: its null; image / head on relu(r) predictions)."""
  path = _transfer_path(ctx.workdir)
  if os.path.exists(path):
    try:
      io.load_npz(path)
      return
    except io.CorruptFileError as e:
      print(f"[{NAME}] {' '.join(str(e).split())[:300]}; recomputing it", flush=True)
  data = ctx.result("paired_data")
  pairs = _pairs_of(cf)
  eff = paths_lib.effective_shifts(cf["r"], cf["shift"])
  shifts, n_used = paths_lib.mean_shifts(eff, cf["origin"], cf["target"], cf["success"].astype(bool), pairs)
  searched = np.zeros(data.cls.size, bool)
  searched[cf["sample"]] = True
  s_n, d = c.transfer_samples, data.r.shape[1]
  rows = np.full((len(pairs), s_n), -1)
  dirs = np.zeros((len(pairs), s_n, d))
  for i, (o, t) in enumerate(pairs):
    fresh = np.flatnonzero((data.cls == o) & ~searched)[:s_n]
    rows[i, :fresh.size] = fresh
    dirs[i] = nulls.unit_directions(ctx.key(f"{NAME}.transfer", o, t), s_n, d)
  valid = (rows >= 0) & np.isfinite(shifts).all(1)[:, None]
  x = paths_lib.transfer_inputs(data.r[np.maximum(rows, 0)], np.nan_to_num(shifts), dirs)  # [2, P, S, D]
  batch = distribute.round_up(min(c.batch_size, x[..., 0].size), ctx.mesh)
  frames = load_frames(ctx.workdir)
  fr = [{k: np.zeros((batch,) + v.shape[1:], v.dtype) for k, v in frames[sp].items() if k != "explained"}
        for sp in ("r", "w")]   # the projections are not used here
  zero, cls0 = np.zeros((batch, d), np.float32), np.zeros(batch, np.int32)
  models = distribute.replicate((ctx.G, ctx.clf, link), ctx.mesh)

  def predict(rs):  # [batch, D] -> (image, head) predictions on relu(rs), through _readout_at at t = 0
    o = _sharded_readout(ctx, models, batch, [np.asarray(rs), zero, cls0, cls0], fr)(0.0)
    return np.stack([o["pred"], o["pred_r"]], -1)
  both = paths_lib.classify_rows(predict, x, batch, extra=(2,))
  pred, pred_r = both[..., 0], both[..., 1]
  io.save_npz(path, origin=np.array([p[0] for p in pairs], np.int32), target=np.array([p[1] for p in pairs], np.int32),
              n_searches=n_used, shift_norm=np.linalg.norm(np.nan_to_num(shifts), axis=1), rows=rows, valid=valid,
              pred=pred.astype(np.int32), pred_r=pred_r.astype(np.int32))


def load_transfer(workdir: str) -> dict:
  return io.load_npz(_transfer_path(workdir))


def _paths_summary(ctx, c, a: dict) -> dict:
  """summary.json['paths']: (a)-(e) in numbers (README "Along the paths")."""
  ts = paths_lib.t_grid(c.p_points, c.p_past)
  out = {"image": paths_lib.probability_summary(a["path.p_target"], a["path.p_origin"], a["path.pred"],
                                                a["target"], ts),
         "r": paths_lib.probability_summary(a["path.p_target_r"], a["path.p_origin_r"],
                                            a["path.pred_r"],
                                            a["target"], ts)}
  one = int(np.argmin(np.abs(ts - 1.0)))
  fr = load_frames(ctx.workdir)
  q = lambda x: [float(v) for v in np.quantile(x, [0.25, 0.5, 0.75])]  # heavy-tailed: searches that ran long
  out["trajectories"] = {                                                # overshoot far (median and quartiles)
      "progress_at_1": {k: q(a[f"path.prog_{k}"][:, one]) for k in ("r", "img", "w")},
      "progress_at_0": {k: q(a[f"path.prog_{k}"][:, 0]) for k in ("r", "img", "w")},
      "explained_2pc": {sp: float(np.mean(fr[sp]["explained"].sum(1))) for sp in ("r", "w")}}
  cf = ctx.result("counterfactual").arrays
  eff = paths_lib.effective_shifts(cf["r"][a["search"]], cf["shift"][a["search"]])
  d = eff.shape[1]
  k = min(c.relevant_k, d)   # a classifier narrower than relevant_k: every unit
  top = paths_lib.relevant_units(eff, k)
  counts = paths_lib.unit_counts(top, d)[0]
  rec = paths_lib.recurrence(counts, top.shape[0], k, d)
  order = np.argsort(-counts, kind="stable")[:20]
  by_target = paths_lib.unit_counts(top, d, a["target"], int(a["target"].max()) + 1)
  out["relevant_units"] = {
      "k": k, "n_searches": int(top.shape[0]), "expected": float(rec["expected"]),
      "units": order.tolist(), "counts": counts[order].tolist(), "p_adj": rec["p_adj"][order].tolist(),
      "n_recurring": int(np.sum(rec["p_adj"] <= c.alpha)), "alpha": c.alpha,
      "top10_share": float(counts[order[:10]].sum() / max(counts.sum(), 1)),
      "per_target": {int(t): np.argsort(-by_target[t], kind="stable")[:5].tolist()
                     for t in np.unique(a["target"])}}
  tr = load_transfer(ctx.workdir)
  tgt = tr["target"][:, None]
  st = paths_lib.transfer_statistics(tr["pred"][0] == tgt, tr["pred"][1] == tgt, tr["valid"], level=c.level,
                                     q_level=c.q_level)
  st_r = paths_lib.transfer_statistics(tr["pred_r"][0] == tgt, tr["pred_r"][1] == tgt, tr["valid"],
                                       level=c.level, q_level=c.q_level)
  ok = st["n"] > 0
  out["transfer"] = {
      "samples": c.transfer_samples, "n_pairs": int(ok.sum()), "level": c.level, "q_level": c.q_level,
      "test": "one-sided exact McNemar (shift vs null on the same samples), BH over pairs",
      "mean_rate": float(np.mean(st["rate"][ok])) if ok.any() else None,
      "mean_rate_null": float(np.mean(st["rate_null"][ok])) if ok.any() else None,
      "mean_rate_r": float(np.mean(st_r["rate"][ok])) if ok.any() else None,
      "mean_rate_null_r": float(np.mean(st_r["rate_null"][ok])) if ok.any() else None,
      "n_transfers": int(np.sum(st["transfers"])),
      "pairs": [{"origin": int(o), "target": int(t), "n_searches": int(ns), "shift_norm": float(sn),
                 **{k: (bool(v[i]) if k == "transfers" else int(v[i]) if k in ("n", "k", "k_null") else float(v[i]))
                    for k, v in st.items()}, "rate_r": float(st_r["rate"][i])}
                for i, (o, t, ns, sn) in enumerate(zip(tr["origin"], tr["target"], tr["n_searches"],
                                                       tr["shift_norm"]))]}
  return out


# ----------------------------------------------------------------------------- summary


def _concat(batches: list[dict]) -> dict:
  return {k: np.concatenate([bt[k] for bt in batches]) for k in batches[0] if k != "truth_factors"}


def changes(arrays: dict, sources: dict[str, str] = selectivity.CONCEPT_SOURCES
            ) -> tuple[np.ndarray, np.ndarray]:
  """(deltas [B, P, M] start -> crossing, null deltas [B, R, P, M]) from the batches'
  metrics, read with the concept set `sources` (quantify's: `measuring.concept_sources`)."""
  pts = selectivity.concept_values({k[3:]: v for k, v in arrays.items() if k.startswith("pt.")},
                                   sources)  # [B, T', P, M']
  null = selectivity.concept_values({k[5:]: v for k, v in arrays.items() if k.startswith("null.")},
                                    sources)
  first = pts[:, 0]
  deltas = selectivity.sweep_changes(first.copy(), pts[:, -1].copy(), sources)
  null_d = selectivity.sweep_changes(np.broadcast_to(first[:, None], null.shape).copy(), null, sources)
  return deltas, null_d


def summarise(ctx, parts) -> None:
  """pairs.csv and summary.json from all batches."""
  c = ctx.cfg(NAME)
  out_dir = ctx.out_dir(NAME)
  batches = load_batches(ctx.workdir)
  a = _concat(batches)
  deltas, null_d = changes(a, measuring.concept_sources(ctx.cfg("quantify")))
  metrics = list(selectivity.CONCEPT_METRICS)
  seed = ctx.seed(f"{NAME}.statistics")
  pairs, stats = lib.pair_statistics(deltas, null_d, a["origin"], a["target"], seed=seed, n_boot=c.n_boot,
                                     level=c.level, alpha=c.alpha, q_level=c.q_level)
  rows = []
  for i, (o, t) in enumerate(pairs):
    for r in selectivity.table_rows({k: v[i:i + 1] for k, v in stats.items()}, [0], list(parts)):
      r.pop("unit")
      rows.append({"origin": o, "target": t, **r})
  selectivity.write_csv(os.path.join(out_dir, "pairs.csv"), rows, TABLE_COLUMNS)
  tops = lib.top_concepts(stats, list(parts), metrics, c.top_k)
  cf = ctx.result("counterfactual").arrays
  q_rows = ctx.result("quantify").rows
  unit_sel: dict[int, set] = {}
  for r in q_rows:
    unit_sel.setdefault(r["unit"], set())
    if r["selective"]:
      unit_sel[r["unit"]].add((r["part"], r["metric"]))
  relation = lib.shifted_unit_relation(cf["top_units"][a["search"]], a["origin"], a["target"], tops, unit_sel)
  summary: dict[str, Any] = {
      "n_searches": int(a["search"].size), "n_pairs": len(pairs),
      "leave_found": float(a["leave_found"].mean()), "reach_found": float(a["reach_found"].mean()),
      "t_leave_median": _nanmedian(a["t_leave"]), "t_reach_median": _nanmedian(a["t_reach"]),
      "bracket_width": float(np.max(a["width"])),
      "pairs": [{"origin": o, "target": t, "top": tops[i]} for i, (o, t) in enumerate(pairs)],
      "shifted_units": relation,
      "calls": {"n_selective": int(np.sum(stats["selective"])), "n_tests": int(np.sum(np.isfinite(stats["p_null"]))),
                "q_level": c.q_level, "alpha": c.alpha, "null_space": c.null_space, "null_draws": c.null_draws,
                "null_paths": (lib.null_path_calls(null_d, a["origin"], a["target"], seed=seed, alpha=c.alpha,
                                                   q_level=c.q_level)
                               if c.null_draws >= 2 else None)}}
  if "truth_change" in a:
    names = [str(x) for x in batches[0]["truth_factors"]]
    truth = {n: a["truth_change"][:, i] for i, n in enumerate(names)}
    null_truth = ({n: a["null_truth_change"][..., i] for i, n in enumerate(names)}
                  if "null_truth_change" in a else None)  # absent in batches from before it
    summary["validation"] = lib.validate(stats, truth, a["origin"], a["target"], list(parts), metrics,
                                         ctx.G.factor_concepts, null_truth=null_truth, null_deltas=null_d)
    _, idx = lib.group_by_pair(a["origin"], a["target"])
    pair_truth = np.stack([np.nanmean(lib.take_rows(a["truth_change"], row), axis=0) for row in idx])
    status = truth_lib.labels(pair_truth, names, ctx.G.factor_concepts, list(parts), metrics)
    summary["calls"]["vs_truth"] = {**truth_lib.rates(stats["selective"], status),
                                    "null_below": truth_lib.NULL_BELOW,
                                    "selective_above": truth_lib.SELECTIVE_ABOVE}
  summary["paths"] = _paths_summary(ctx, c, a)
  io.write_json(os.path.join(out_dir, "summary.json"), summary)
  v = summary.get("validation")
  cl = summary["calls"]
  npc = cl["null_paths"]
  print(f"[boundary] {summary['n_searches']} searches, target reached on {summary['reach_found']:.2f} of "
        f"the paths" + (f"; vs truth: Spearman {v['mean_spearman']:.2f}, right top concept "
                        f"{v['share_right_top']:.2f} (chance {v['chance']:.2f})" if v else "")
        + f"; selective (q <= {c.q_level}): {cl['n_selective']} of {cl['n_tests']} pair x concept"
        + (f"; on null paths p <= {c.alpha}: {npc['fpr']:.3f}, any call: {npc['fwer']:.2f} of draws"
           if npc else ""), flush=True)


def _nanmedian(x: np.ndarray) -> float | None:
  x = x[np.isfinite(x)]
  return float(np.median(x)) if x.size else None


# ----------------------------------------------------------------------------- report section


def _class_name(G, k: int) -> str:
  names = getattr(G, "class_names", None)
  return f"{names[k]}" if names else str(k)


def _fmt(x, digits: int = 3) -> str:
  return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}g}"


def _show_pairs(summary: dict, n: int) -> list[int]:
  """Indices of up to n pairs with the largest top |effect|, one per origin class first."""
  eff = [max((abs(t["effect"]) if np.isfinite(t["effect"]) else 0.0) for t in p["top"]) if p["top"] else 0.0
         for p in summary["pairs"]]
  order = sorted(range(len(eff)), key=lambda i: -eff[i])
  first, seen = [], set()
  for i in order:
    if summary["pairs"][i]["origin"] not in seen:
      first.append(i)
      seen.add(summary["pairs"][i]["origin"])
  rest = [i for i in order if i not in first]
  return (first + rest)[:n]


def _strip_rows(ctx, c, batches) -> list:
  """Image rows w_before | path start | leave | reach | w_after for `c.strips` searches."""
  a = _concat(batches)
  cf = ctx.result("counterfactual").arrays
  G = ctx.G
  ok = np.flatnonzero(a["reach_found"])
  pick = ok[np.unique(a["origin"][ok], return_index=True)[1]][:c.strips] if ok.size else np.arange(min(c.strips, a["search"].size))
  link = ctx.result("link").link
  rows = []
  for i in pick:
    s = int(a["search"][i])
    t = a["t_points"][i]
    w_path = np.asarray(_path(link, jnp.asarray(cf["r"][[s, s, s]]), jnp.asarray(cf["shift"][[s, s, s]]),
                              jnp.asarray([0.0, t[-2], t[-1]], jnp.float32)))
    imgs = images.render(G, np.concatenate([cf["w_before"][[s]], w_path, cf["w_after"][[s]]]), 8) / 255.0
    caps = ["w_before", "path t=0", f"leaves {_class_name(G, int(a['origin'][i]))}\nt={t[-2]:.3f}",
            f"reaches {_class_name(G, int(a['target'][i]))}\nt={t[-1]:.3f}", "w_after (t=1)"]
    rows.append((f"search {s}", list(zip(caps, imgs))))
  return rows


def _trajectory_panels(ctx, c, a: dict, pair_ids: list[int]) -> list[dict]:
  """Per shown pair: its r panel (the path relu(r - t s) and the re-encoded r) and w panel."""
  fr = load_frames(ctx.workdir)
  data = ctx.result("paired_data")
  G = ctx.G
  ts = paths_lib.t_grid(c.p_points, c.p_past)
  one = int(np.argmin(np.abs(ts - 1.0)))
  panels = []
  for i in pair_ids:
    o, t = fr["pairs"][i]
    rows = np.concatenate([np.flatnonzero(data.cls == o)[:200], np.flatnonzero(data.cls == t)[:200]])
    mine = (a["origin"] == o) & (a["target"] == t)
    title = f"{_class_name(G, o)} > {_class_name(G, t)}"
    for sp, x, lines in (("r", data.r, {"r path": a["path.pc_r"][mine], "re-encoded r": a["path.pc_img"][mine]}),
                         ("w", data.w, {"w path": a["path.pc_w"][mine]})):
      f = fr[sp]
      cloud = (x[rows] - f["mean"][i]) @ f["components"][i].T
      ev = f["explained"][i]
      panels.append({"title": f"{title}, {sp}", "cloud": cloud, "cloud_origin": data.cls[rows] == o,
                     "lines": lines, "one": one, "xlabel": f"PC1 ({ev[0]:.0%})", "ylabel": f"PC2 ({ev[1]:.0%})"})
  return panels


def _quart(q: list) -> str:
  return f"{q[1]:.2f} ({q[0]:.2f}-{q[2]:.2f})"


def _paths_section(ctx, c, s: dict, out_dir: str) -> list[str]:
  """HTML of (a)-(e) (README "Along the paths")."""
  from lis_jax import plots
  ps = s.get("paths")
  if not ps:
    return []
  G = ctx.G
  a = _concat(load_batches(ctx.workdir))
  ts = paths_lib.t_grid(c.p_points, c.p_past)
  im, rr = ps["image"], ps["r"]
  out = ["<h3>Along the paths</h3>",
         f"<p><b>Probabilities.</b> The classifier's softmax on the image of each path point, at {ts.size} "
         f"values of t from 0 to {ts[-1]:g} (the reference's image_sampling_rshift.py, its add_steps past the "
         f"counterfactual at t = 1). Mean over the {s['n_searches']} paths: p(target) {im['p_target_at_0']:.2f} "
         f"at t = 0, <b>{im['p_target_at_1']:.2f}</b> at t = 1"
         + (f", {im['p_target_end']:.2f} at t = {im['t_end']:g}" if "p_target_end" in im else "")
         + f"; p(origin) {im['p_origin_at_0']:.2f} -> {im['p_origin_at_1']:.2f}. p(target) reaches 1/2 by t = 1 on "
         f"{im['reach50']:.0%} of the paths (median t {_fmt(im['t50_median'], 2)}). The head on relu(r - t shift) "
         f"itself (what the search optimised): p(target) {rr['p_target_at_1']:.2f} at t = 1."
         + (f" <b>Past the counterfactual</b>, p(target) at t = {im['t_end']:g} holds or rises on "
            f"{im['past_holds']:.0%} of the paths; of those classified as the target at t = 1, "
            + (f"{im['past_still_target']:.0%}" if im["past_still_target"] is not None else "n/a")
            + f" still are at t = {im['t_end']:g}." if "past_holds" in im else "")
         + "</p>"]
  png = plots.save(plots.path_probabilities(ts, {
      "classifier on the generated image": {"p_target": a["path.p_target"], "p_origin": a["path.p_origin"]},
      "head on relu(r - t shift)": {"p_target": a["path.p_target_r"], "p_origin": a["path.p_origin_r"]}}),
      out_dir, "boundary_path_probabilities")
  out.append(plots.img_tag(png, "p(target) and p(origin) along the paths: median and 25-75% band; dashed: t = 1",
                           "boundary_path_probabilities"))
  tj = ps["trajectories"]
  out.append(
      f"<p><b>Trajectories.</b> Per pair, a PCA of the paired data of both classes (r and w; the first two "
      f"components hold {tj['explained_2pc']['r']:.0%} and {tj['explained_2pc']['w']:.0%} of the variance, "
      f"mean over pairs; pc_traj_counterfactual.py). How far along the line from the origin class's mean (0) to "
      f"the target's (1) the path's end at t = 1 lies, median over paths (quartiles): "
      f"<b>{_quart(tj['progress_at_1']['r'])}</b> in r (from {tj['progress_at_0']['r'][1]:.2f} at t = 0), "
      f"{_quart(tj['progress_at_1']['img'])} for the classifier's own r of the generated image (the reference's "
      f"'rcycled'), {_quart(tj['progress_at_1']['w'])} in w.</p>")
  show = _show_pairs(s, c.paths_shown)
  if show:
    png = plots.save(plots.path_trajectories(_trajectory_panels(ctx, c, a, show)), out_dir, "boundary_trajectories")
    out.append(plots.img_tag(png, "Paths in the first two PCs of their pair's classes (o: t = 0, x: t = 1)",
                             "boundary_trajectories"))
  ru = ps["relevant_units"]
  out.append(
      f"<p><b>Relevant units.</b> Each search's {ru['k']} units with the largest |r - relu(r - shift)| "
      f"(transition_relevant_units.py), counted over the {ru['n_searches']} searches: the 10 most frequent take "
      f"{ru['top10_share']:.0%} of the slots; unit {ru['units'][0]} is among a search's top {ru['k']} "
      f"{ru['counts'][0]} times (chance {ru['expected']:.2g}). <b>{ru['n_recurring']}</b> units recur more often "
      f"than if each search picked its units at random (binomial tail, Bonferroni over all units, "
      f"p &lt;= {ru['alpha']}).</p>")
  png = plots.save(plots.relevant_units(ru["units"], ru["counts"], ru["expected"],
                                        [p <= ru["alpha"] for p in ru["p_adj"]],
                                        f"the {len(ru['units'])} units most often among a search's top {ru['k']}"),
                   out_dir, "boundary_relevant_units")
  out.append(plots.img_tag(png, "Relevant units across searches (red: recurring beyond chance)",
                           "boundary_relevant_units"))
  tr = ps["transfer"]
  if tr["n_pairs"]:
    out.append(
        f"<p><b>Transferring a pair's mean shift.</b> Each pair's mean of r - relu(r - shift) over its successful "
        f"searches (shift_opt.py's use_avg_shift_over_samples) applied to {tr['samples']} new samples of the origin "
        f"class (paired data no search started from): their regenerated image is classified as the target for "
        f"<b>{tr['mean_rate']:.0%}</b> of them (mean over {tr['n_pairs']} pairs; the head on the shifted r: "
        f"{tr['mean_rate_r']:.0%}), against {tr['mean_rate_null']:.0%} for a random shift of the same norm on the "
        f"same samples. The transfer beats the null for <b>{tr['n_transfers']} of {tr['n_pairs']}</b> pairs (test: "
        f"{html.escape(tr['test'])}; q &lt;= {tr['q_level']}; intervals: Wilson, {tr['level']:.0%}).</p>")
    rows = [p for p in tr["pairs"] if p["n"] > 0]
    key = lambda v: np.array([p[v] for p in rows], np.float64)
    png = plots.save(plots.transfer_rates([f"{_class_name(G, p['origin'])} > {_class_name(G, p['target'])}" for p in rows],
                                          key("rate"), key("ci_low"), key("ci_high"), key("rate_null"),
                                          key("null_low"), key("null_high"), [p["transfers"] for p in rows]),
                     out_dir, "boundary_transfer")
    out.append(plots.img_tag(png, "Success of the transferred mean shift per pair vs a random shift of the same "
                             "norm (Wilson intervals; *: q <= q_level)", "boundary_transfer"))
  return out


def section(ctx) -> str | None:
  """HTML: crossings, the concepts that change per pair (bars, strips), validation, shifted units."""
  from lis_jax import plots
  if not os.path.exists(os.path.join(ctx.out_dir(NAME), "summary.json")):
    return None
  c = ctx.cfg(NAME)
  res = load(ctx.workdir)
  s = res.summary
  G = ctx.G
  out_dir = ctx.out_dir("report")
  name = lambda k: html.escape(_class_name(G, k))
  parts = ["<h2>The decision boundary</h2>",
           f"<p>Each of the {s['n_searches']} counterfactual searches is followed along its path "
           "w(t) = link(relu(r - t shift)), t from 0 to 1. Bisection finds where the classifier's "
           "prediction on the regenerated image leaves the origin class and where it reaches the target "
           f"(to {_fmt(s['bracket_width'], 2)} in t). The origin class is left on "
           f"<b>{s['leave_found']:.0%}</b> of the paths (median t {_fmt(s['t_leave_median'])}), the target "
           f"reached on <b>{s['reach_found']:.0%}</b> (median t {_fmt(s['t_reach_median'])}). The images at "
           "the path's start and where the target is reached are segmented and measured; each concept's "
           f"change is averaged over a pair's searches ({int(c.level * 100)}% bootstrap interval) and "
           f"compared with {c.null_draws} null paths per search from the same start"
           + (" (random r-space shifts of the same norm, through the same relu and link)" if c.null_space == "r"
              else " (random directions in w of the same length)")
           + " (effect = mean / null rms); a concept changes across the boundary for a pair when its "
           f"Benjamini-Hochberg q over the whole pair x concept table is &lt;= {c.q_level}.</p>"]
  cl = s.get("calls")
  if cl:
    npc = cl.get("null_paths")
    parts.append(f"<p><b>{cl['n_selective']} of {cl['n_tests']}</b> (pair, concept) changes are significant "
                 f"(q &lt;= {cl['q_level']})."
                 + (f" Beside it, the same test on the null paths: p &lt;= {cl['alpha']} on "
                    f"{npc['fpr']:.3f} of them (calibrated: near {cl['alpha']}), and a call after the "
                    f"correction in {npc['fwer']:.0%} of the {npc['draws']} null tables (BH: at most "
                    f"{cl['q_level']:.0%} expected)." if npc else "")
                 + (f" Against the world's truth: false-discovery rate {_fmt(cl['vs_truth']['fdr'], 2)}, "
                    f"power {_fmt(cl['vs_truth']['power'], 2)}." if cl.get("vs_truth") else "") + "</p>")
  v = s.get("validation")
  if v:
    fid = v.get("fidelity") or {}
    parts.append(
        f"<h3>Check against the ground truth</h3><p>The world's own factors, decoded from w at the path's "
        f"start and at the crossing, say what truly changed. Per pair, the Spearman correlation over the "
        f"{len(v['factors'])} factors that a concept shows ({', '.join(v['factors'])}) of measured |effect| "
        f"and true |change|"
        + (" (over the RMS of the same change along the null paths, the effect's own scale)"
           if v.get("truth_scale") == "null paths" else "")
        + f": <b>mean {_fmt(v['mean_spearman'], 2)}</b>. The concept that changes most is the "
        f"one of the factor that truly changes most in <b>{v['share_right_top']:.0%}</b> of the pairs "
        f"(chance {v['chance']:.0%})."
        + (f" Left out: {', '.join(f'{f} (r {_fmt(fid.get(f), 2)})' for f in v['left_out'])}"
           f", whose concept follows the factor too loosely on the null paths (Pearson r of the concept's change "
           f"with the factor's true change below {v['min_fidelity']:.2f}: less than "
           f"{v['min_fidelity'] ** 2:.0%} of the concept's variance is the factor's)."
           if v.get("left_out") else "")
        + "</p>")
  rel = s["shifted_units"]
  parts.append(
      f"<h3>The most shifted units</h3><p>Of the units the counterfactual shifts most, "
      f"<b>{_fmt(rel['mean_share'], 2)}</b> (mean over pairs) are selective (quantify) for one of the "
      f"pair's top {c.top_k} changing concepts, against {_fmt(rel['baseline'], 2)} of all quantified units.</p>")
  show = _show_pairs(s, c.pairs_shown)
  if show:
    labels = [f"{_class_name(G, s['pairs'][i]['origin'])} > {_class_name(G, s['pairs'][i]['target'])}" for i in show]
    png = plots.save(plots.boundary_bars(labels, [s["pairs"][i]["top"] for i in show]), out_dir, "boundary_pairs")
    parts.append(plots.img_tag(png, f"Top {c.top_k} concepts changing across the boundary, {len(show)} pairs",
                               "boundary_pairs"))
  rows = _strip_rows(ctx, c, res.batches())
  if rows:
    png = plots.save(plots.image_strips(rows), out_dir, "boundary_strips")
    parts.append(plots.img_tag(png, "From w_before through the path's start and both crossings to w_after",
                               "boundary_strips"))
  parts.extend(_paths_section(ctx, c, s, out_dir))
  table_rows = []
  per_pair = {(p["origin"], p["target"]): p for p in (v["per_pair"] if v else [])}
  for p in s["pairs"]:
    top = ", ".join(f"{t['part']} {t['metric']} ({t['effect']:+.2f}{'*' if t['selective'] else ''})"
                    for t in p["top"])
    val = per_pair.get((p["origin"], p["target"]))
    table_rows.append([name(p["origin"]), name(p["target"]), top]
                      + ([_fmt(val["spearman"], 2), "yes" if val["right"] else "no"] if val else []))
  cols = ["origin", "target", "top concepts (effect; *: selective)"] + (["Spearman vs truth", "right top"] if v else [])
  parts.append(f"<details><summary>all {len(s['pairs'])} pairs</summary>" + page.table(cols, table_rows, escape_cells=False)
               + "</details>")
  return "\n".join(parts)


def summary(ctx) -> dict | None:
  """Headline numbers for report/summary.json."""
  if not os.path.exists(os.path.join(ctx.out_dir(NAME), "summary.json")):
    return None
  s = ctx.result(NAME).summary
  out = {k: s[k] for k in ("n_searches", "n_pairs", "leave_found", "reach_found", "t_reach_median")}
  out["shifted_units_selective"] = s["shifted_units"]["mean_share"]
  out["shifted_units_baseline"] = s["shifted_units"]["baseline"]
  if "validation" in s:
    out.update({f"validation_{k}": s["validation"][k] for k in ("mean_spearman", "share_right_top", "chance")})
  if "paths" in s:
    ps = s["paths"]
    out.update({"path_p_target_at_1": ps["image"]["p_target_at_1"], "path_p_target_end": ps["image"].get("p_target_end"),
                "path_progress_at_1_r": ps["trajectories"]["progress_at_1"]["r"][1],
                "relevant_units_recurring": ps["relevant_units"]["n_recurring"],
                "transfer_rate": ps["transfer"]["mean_rate"], "transfer_rate_null": ps["transfer"]["mean_rate_null"],
                "transfer_pairs_beating_null": ps["transfer"]["n_transfers"]})
  return out


STAGE = Stage(name=NAME, requires=("counterfactual", "quantify"), default_config=default_config, run=run,
              load=load, uses=("seed",), section=section, summary=summary,
              ignores=("measure_batch", "strips", "pairs_shown", "paths_shown"),  # batch_size: batch files partition the searches
              rules=RULES)
