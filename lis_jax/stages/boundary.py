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
                          of range) and truth_factors [F]
  pairs.csv               one row per pair x part x metric: origin, target, part, metric,
                          mean, ci_low, ci_high, n, null_rms, effect, p_null, selective, rank
  summary.json            crossings found, per pair top concepts, the relation to the
                          most shifted units, validation (built-in world)
"""
from __future__ import annotations

import dataclasses
import functools
import html
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from lis_jax import blocks, distribute, errors, images, io, memory, page
from lis_jax.analysis import boundary as lib
from lis_jax.generators.base import GroundTruthWorld
from lis_jax.quantify import selectivity
from lis_jax.analysis.counterfactual import image_logits
from lis_jax.analysis.readout import decode_factors
from lis_jax.analysis import nulls, truth as truth_lib
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
_FINITE = ("search", "origin", "target", "width", "pred_grid", "pt.area", "null.area")


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
  for b in tqdm(store.todo(n_batches), unit="batch", desc=NAME):
    ids = np.arange(b * batch, min(n, (b + 1) * batch))
    out = _batch(ctx, c, seg, link, cf, ids, batch)
    errors.check_finite(f"boundary batch {b} areas", out["pt.area"])
    errors.maybe_interrupt(NAME, b + 1)
    store.write(b, **out)
  summarise(ctx, measuring.measured_parts(seg))


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
    summary["validation"] = lib.validate(stats, truth, a["origin"], a["target"], list(parts), metrics,
                                         ctx.G.factor_concepts)
    _, idx = lib.group_by_pair(a["origin"], a["target"])
    pair_truth = np.stack([np.nanmean(lib.take_rows(a["truth_change"], row), axis=0) for row in idx])
    status = truth_lib.labels(pair_truth, names, ctx.G.factor_concepts, list(parts), metrics)
    summary["calls"]["vs_truth"] = {**truth_lib.rates(stats["selective"], status),
                                    "null_below": truth_lib.NULL_BELOW,
                                    "selective_above": truth_lib.SELECTIVE_ABOVE}
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
    parts.append(
        f"<h3>Check against the ground truth</h3><p>The world's own factors, decoded from w at the path's "
        f"start and at the crossing, say what truly changed. Per pair, the Spearman correlation over the "
        f"{len(v['factors'])} factors that a concept shows ({', '.join(v['factors'])}) of measured |effect| "
        f"and true |change|: <b>mean {_fmt(v['mean_spearman'], 2)}</b>. The concept that changes most is the "
        f"one of the factor that truly changes most in <b>{v['share_right_top']:.0%}</b> of the pairs "
        f"(chance {v['chance']:.0%}).</p>")
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
  return out


STAGE = Stage(name=NAME, requires=("counterfactual", "quantify"), default_config=default_config, run=run,
              load=load, uses=("seed",), section=section, summary=summary,
              ignores=("measure_batch", "strips", "pairs_shown"),  # batch_size: batch files partition the searches
              rules=RULES)
