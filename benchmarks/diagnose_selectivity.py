"""Where does the quantify stage's selectivity go wrong on the built-in world?

Reads a demo workdir's sweep, link and quantify/segmenter (run the demo's paired_data,
link and sweep stages and the quantify stage's segmenter once), measures every unit's
sweep end points for `--samples` start samples, `--null` random directions shared by
those start samples (the null), and `--fake` further random directions ("sweeps" along
random directions, on which `selective` should fire at rate alpha), each with the world's
true part masks and with the segmenter's, and prints (benchmarks/selectivity_results.md):

  1. per concept, how the metric's change tracks its factor's change on image pairs
     with known factors (Pearson r over pairs, true masks and segmenter masks);
  2. the truth check (precision@5, Spearman) per factor for both masks, for the
     reference's concepts and the calibrated ones, ranked by |mean| or by effect;
  3. the mean precision / Spearman as functions of start samples and null draws;
  4. the false-positive rate of `selective` on random-direction sweeps: the old
     per-sample null vs the shared-direction null.

Measurements are cached in `--cache` (delete it to re-measure).

  python benchmarks/diagnose_selectivity.py --workdir /tmp/sel_demo

`--calibration DIR` instead reads a finished demo workdir (one of benchmarks/
calibration.py's seed<N> dirs, or any demo workdir; the quantify stage's own null, which
calibration.py scores too) and prints, per factor of the world's factor -> concept table, why
the measured concept ranks units differently from the true factor change: precision@5
and Spearman as the quantify stage computes them, the Pearson r over units of the
concept's change and the factor's true change at each measured start sample (spread
over the classes), and the factors that drive the concept's change at each start sample (largest
standardised least-squares weights of all 20 true factor changes):

  python benchmarks/diagnose_selectivity.py --calibration /tmp/lis_calibration/seed0 --seed 0

`--misses` (with `--calibration`) asks of every unit precision@5 lists but the truth does
not (a miss) whether it is noise or systematic, and prints:

  per miss   its true rank, its gap below the true 5th unit and that gap's standard error
             over the start samples (the truth's own: 'truth tie' when the gap is within
             it), the measured change's standard error over the start samples and the
             pull of the other 19 factors (per start sample, the concept's change
             regressed on all 20 true factor changes over units; the other factors'
             share, the unit's minus the true top 5's median), both divided by the slope
             of the unit's measured average change on its true change (fraction of the
             factor's range): 'systematic' when that pull exceeds half the gap and half
             the noise, 'noise' when the gap is within twice the measurement's SE,
             'unexplained' otherwise (in that order);
  per factor the fidelity (Pearson r over units of the concept's change and the factor's
             true change, mean over start samples) and the ceiling: precision@5 of the
             true changes themselves averaged as quantify averages the measured ones
             (quantify.average) and by the mean (the truth's own average).

  python benchmarks/diagnose_selectivity.py --calibration /tmp/lis_calibration/seed0 --seed 0 --misses
"""
import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/, lis_jax
from lis_jax import generators  # noqa: E402
from lis_jax.generators import shapes  # noqa: E402
from lis_jax.quantify import metrics, segment, selectivity  # noqa: E402
from lis_jax.stages import link as link_stage, quantify as stage, sweep as sweep_stage  # noqa: E402

ALPHA = 0.05
K = 5
# Factor -> candidate concepts (the first is the reference's, FACTOR_CONCEPTS before issue 15).
CANDIDATES = {
    "pos_x": [("body", "centre_x"), ("object", "centre_x")],
    "pos_y": [("body", "centre_y"), ("object", "centre_y")],
    "scale": [("body", "area"), ("object", "area")],
    "rotation": [("body", "angle"), ("object", "angle")],
    "body_lum": [("body", "luminance")],
    "top_lum": [("top", "luminance")],
    "extra_lum": [("extra", "luminance")],
    "stripe_contrast": [("body", "texture")],
}


def make_measure(G, seg):
  @jax.jit
  def fn(G, params, w):
    ws = generators.broadcast_ws(w, G.num_ws)
    img = segment.resize_images(G.synthesis(ws), seg.resolution)
    true = segment.resize_images(G.ground_truth(ws)["masks"], seg.resolution)  # [B, R, R, 4]
    true = jax.nn.one_hot(jnp.argmax(true, -1), true.shape[-1])[..., 1:]
    logits = segment.apply_head(params, segment.feature_stack(G, ws, seg.layers, seg.resolution),
                                seg.num_parts, seg.size)
    pred = jax.nn.one_hot(jnp.argmax(logits, -1), seg.num_parts)[..., 1:]
    masks = jnp.concatenate([metrics.with_object(true), metrics.with_object(pred)], -1)
    return metrics.part_metrics(img, masks, max_components=1)

  def measure(w, batch=64):
    out = []
    for s in range(0, w.shape[0], batch):
      chunk = w[s:s + batch]
      pad = batch - chunk.shape[0]
      r = fn(G, seg.params, jnp.asarray(np.pad(chunk, ((0, pad), (0, 0)), mode="edge")))
      out.append({k: np.asarray(v)[:chunk.shape[0]] for k, v in r.items()})
    return {k: np.concatenate([o[k] for o in out]) for k in out[0]}
  return measure


def split_masks(m, n_parts):
  """Metrics over 2 n_parts parts -> (true-mask metrics, segmenter metrics)."""
  return ({k: v[..., :n_parts] if v.ndim == 2 else v[:, :n_parts] for k, v in m.items()},
          {k: v[..., n_parts:] if v.ndim == 2 else v[:, n_parts:] for k, v in m.items()})


def collect(args):
  G = generators.load("shapes")
  seg = segment.load(os.path.join(args.workdir, "quantify", "segmenter"))
  link = link_stage.load(args.workdir).link
  swept = sweep_stage.load(args.workdir)
  blocks = list(swept.blocks())
  pick = sweep_stage.pick_starts(blocks[0]["cls"], args.samples)
  units = np.concatenate([b["units"] for b in blocks])
  ends = np.concatenate([b["w"][:, pick][:, :, [0, -1]] for b in blocks])  # [U, S, 2, w_dim]
  w_s = np.asarray(link(jnp.asarray(swept.r_start[pick])))  # [S, w_dim] the start samples' own w
  lengths = np.linalg.norm(ends[:, 0, 1] - ends[:, 0, 0], axis=-1)  # [U] (same for every sample)
  rng = np.random.default_rng(0)
  n_dir = args.null + args.fake
  d = rng.normal(size=(n_dir, w_s.shape[-1]))
  d /= np.linalg.norm(d, axis=-1, keepdims=True)
  dir_len = lengths[rng.integers(0, lengths.size, n_dir)]  # lengths drawn from the units'
  rand_ends = w_s[None] + dir_len[:, None, None] * d[:, None]  # [R + F, S, w_dim]
  measure = make_measure(G, seg)
  u, s, _, wd = ends.shape
  t0 = time.time()
  m = measure(np.concatenate([ends.reshape(-1, wd), w_s, rand_ends.reshape(-1, wd)]).astype(np.float32))
  print(f"measured {u * s * 2 + s + n_dir * s} images in {time.time() - t0:.0f} s", flush=True)
  delta, names = _truth(G, ends)
  # Single images with known factors: pairs z, z + small step (all factors move a little).
  z = rng.normal(size=(args.pairs, G.z_dim)).astype(np.float32)
  cls = rng.integers(0, G.num_classes, args.pairs)
  z2 = z + 0.6 * rng.normal(size=z.shape).astype(np.float32)
  wp = np.concatenate([np.asarray(G.mapping(z, cls, 0.7)[:, 0]), np.asarray(G.mapping(z2, cls, 0.7)[:, 0])])
  mp = measure(wp)
  fac, _ = G.decode_factors(generators.broadcast_ws(jnp.asarray(wp), G.num_ws))
  fac = np.stack([np.asarray(fac[n]) for n in names], -1)
  np.savez(args.cache, units=units, lengths=lengths, dir_len=dir_len, truth=delta, names=np.asarray(names),
           parts=np.asarray(list(seg.part_names[1:]) + ["object"]), n_units=u, n_samples=s,
           pair_factors=fac, **{f"m.{k}": v for k, v in m.items()}, **{f"p.{k}": v for k, v in mp.items()})


def _truth(G, ends):
  """Per unit and sample: change of each factor over the sweep / the factor's range [U, S, F]."""
  u, s_n, _, wd = ends.shape
  f, _ = G.decode_factors(generators.broadcast_ws(jnp.asarray(ends.reshape(-1, wd)), G.num_ws))
  names = list(f)
  out = []
  for n in names:
    v = np.asarray(f[n]).reshape(u, s_n, 2)
    d = v[..., 1] - v[..., 0]
    lo, hi = G.factor_ranges[n]
    if n in G.circular_factors:
      d = (d - lo + (hi - lo) / 2) % (hi - lo) - (hi - lo) / 2
    out.append(d / (hi - lo))
  return np.stack(out, -1), names


def analyse(args):
  c = np.load(args.cache)
  parts = [str(p) for p in c["parts"]]
  n_parts = len(parts)
  names = [str(n) for n in c["names"]]
  u, s = int(c["n_units"]), int(c["n_samples"])
  m = {k[2:]: c[k] for k in c.files if k.startswith("m.")}
  mp = {k[2:]: c[k] for k in c.files if k.startswith("p.")}
  units, lengths, dir_len, truth = c["units"], c["lengths"], c["dir_len"], c["truth"]
  n_ends = u * s * 2
  rng = np.random.default_rng(1)

  def changes(mm, sources):
    """-> unit deltas [U, S, P, M], random-direction deltas [R + F, S, P, M]."""
    v = selectivity.concept_values(mm, sources)
    ends = v[:n_ends].reshape(u, s, 2, *v.shape[1:])
    start = v[n_ends:n_ends + s]
    rand = v[n_ends + s:].reshape(-1, s, *v.shape[1:])
    d_units = selectivity.sweep_changes(ends[:, :, 0].copy(), ends[:, :, 1].copy(), sources)
    d_rand = selectivity.sweep_changes(np.broadcast_to(start, rand.shape).copy(), rand, sources)
    return d_units, d_rand

  masks = dict(zip(("true", "segmenter"), split_masks(m, n_parts)))
  pmasks = dict(zip(("true", "segmenter"), split_masks(mp, n_parts)))

  # 1. Single-image pairs: metric change vs factor change.
  print("\n## 1. Metric change vs its factor's change on image pairs with known factors (Pearson r)")
  fac = c["pair_factors"]
  n = fac.shape[0] // 2
  dfac = fac[n:] - fac[:n]
  print("| factor | concept | reference true | reference seg | calibrated true | calibrated seg |")
  print("| --- | --- | --- | --- | --- | --- |")
  for f, cands in CANDIDATES.items():
    for part, metric in cands:
      row = []
      for cs in ("reference", "calibrated"):
        src = selectivity.concept_sources(cs)
        for mk in ("true", "segmenter"):
          v = selectivity.concept_values(pmasks[mk], src)
          d = selectivity.sweep_changes(v[:n].copy(), v[n:].copy(), src)[:, parts.index(part),
                                                                      selectivity.CONCEPT_METRICS.index(metric)]
          x = dfac[:, names.index(f)]
          ok = np.isfinite(d)
          row.append(np.corrcoef(d[ok], x[ok])[0, 1])
      print(f"| {f} | {part} {metric} | " + " | ".join(f"{r:.2f}" for r in row) + " |")

  def check(mk, cs, s_n=s, r_n=args.null, rank_by="mean", concepts=None, average="median",
            per_length=False):
    src = selectivity.concept_sources(cs)
    du, dr = changes(masks[mk], src)
    st = selectivity.shared_null_statistics(du[:, :s_n], lengths, dr[:r_n, :s_n], dir_len[:r_n], seed=0,
                                            n_boot=200, alpha=ALPHA, rank_by=rank_by, average=average,
                                            per_length=per_length)
    return stage.truth_check(st, units, parts, _truth_subset(c, s_n), names, K, concepts or obj,
                             score=rank_by)

  def _fmt(x):
    return "n/a" if x is None else f"{x:.2f}"

  body = shapes.REFERENCE_FACTOR_CONCEPTS
  obj = shapes.FACTOR_CONCEPTS
  variants = [  # (label, concepts, factor map, average, per_length, rank_by)
      ("reference metrics, body geometry, mean, per-length null", "reference", body, "mean", True, "mean"),
      ("+ object geometry", "reference", obj, "mean", True, "mean"),
      ("+ calibrated metrics", "calibrated", obj, "mean", True, "mean"),
      ("+ median over start samples", "calibrated", obj, "median", True, "mean"),
      ("+ null on the change itself (lengths drawn from the units'): the default", "calibrated", obj,
       "median", False, "mean"),
      ("default, but ranked by effect (change / null RMS)", "calibrated", obj, "median", False, "effect"),
      ("default with the reference's metrics", "reference", obj, "median", False, "mean"),
      ("default with the mean", "calibrated", obj, "mean", False, "mean"),
  ]
  print(f"\n## 2. Truth check, {s} start samples, {args.null} shared null directions: mean precision@5 / "
        f"Spearman (chance {K / u:.3f})")
  print("| variant | precision true masks | precision segmenter | Spearman true masks | Spearman segmenter |")
  print("| --- | --- | --- | --- | --- |")
  results = {}
  for label, cs, fc, avg, pl, rb in variants:
    res = {mk: check(mk, cs, concepts=fc, average=avg, per_length=pl, rank_by=rb) for mk in masks}
    results[label] = res
    print(f"| {label} | {_fmt(res['true']['mean_precision'])} | {_fmt(res['segmenter']['mean_precision'])} | "
          f"{_fmt(res['true']['mean_spearman'])} | {_fmt(res['segmenter']['mean_spearman'])} |")
  for label in (variants[0][0], variants[4][0]):
    res = results[label]
    print(f"\nPer factor, {label}:")
    print("| factor | concept | precision true | precision seg | Spearman true | Spearman seg |")
    print("| --- | --- | --- | --- | --- | --- |")
    for f, v in res["true"]["per_factor"].items():
      sv = res["segmenter"]["per_factor"][f]
      print(f"| {f} | {v['part']} {v['metric']} | {_fmt(v['precision'])} | {_fmt(sv['precision'])} | "
            f"{_fmt(v['spearman'])} | {_fmt(sv['spearman'])} |")

  print("\n## 3. Mean precision@5 / Spearman (default method, segmenter masks) vs start samples and null directions")
  print("| start samples | null directions | precision@5 | Spearman |")
  print("| --- | --- | --- | --- |")
  for s_n in (2, 4, 6, s):
    for r_n in (19, 39, args.null):
      r = check("segmenter", "calibrated", s_n=s_n, r_n=r_n, concepts=obj)
      print(f"| {s_n} | {r_n} | {_fmt(r['mean_precision'])} | {_fmt(r['mean_spearman'])} |")

  print(f"\n## 4. False-positive rate of `selective` on {args.fake} random-direction sweeps (alpha {ALPHA})")
  print("| masks | concepts | null | start samples | false-positive rate |")
  print("| --- | --- | --- | --- | --- |")
  for mk in masks:
    for cs in ("reference", "calibrated"):
      src = selectivity.concept_sources(cs)
      _, dr = changes(masks[mk], src)
      null, fake = dr[:args.null], dr[args.null:]
      fake_len = dir_len[args.null:]
      for s_n in (4, s):
        for avg, pl in (("median", False), ("mean", True)):
          st = selectivity.shared_null_statistics(fake[:, :s_n], fake_len, null[:, :s_n], dir_len[:args.null],
                                                  seed=0, n_boot=200, alpha=ALPHA, average=avg, per_length=pl)
          print(f"| {mk} | {cs} | shared directions, {avg}{', per length' if pl else ''} | {s_n} | "
                f"{_rate(st['selective'], st['p_null']):.3f} |")
        # The old null: one independent direction per (unit, start sample), pooled per unit.
        idx = (np.arange(fake.shape[0])[:, None] * s_n + np.arange(s_n)[None]) % args.null
        old_null = null[idx, np.arange(s_n)[None]]  # [F, S, P, M]
        st = selectivity.unit_statistics(fake[:, :s_n], old_null, seed=0, n_boot=200, alpha=ALPHA)
        print(f"| {mk} | {cs} | one direction per sample (old) | {s_n} | {_rate(st['selective'], st['p_null']):.3f} |")


def _rate(sel, p):
  """Fraction of (sweep, concept) pairs with a defined change that are flagged."""
  ok = np.isfinite(p)
  return float(np.mean(sel[ok]))


def _truth_subset(c, s_n):
  """[U, F] mean true factor change over the first s_n start samples (as the stage's truth)."""
  return c["truth"][:, :s_n].mean(1)


def calibration_diagnosis(workdir: str, seed: int) -> None:
  """Per factor: precision@5, Spearman, per-start r and confounders (module docstring)."""
  from configs import demo
  G = generators.load("shapes")
  qc = stage.default_config()
  qc.update(demo.get_config().quantify)
  qres = stage.load(workdir)
  blks = qres.blocks()
  null = stage.load_null(os.path.join(workdir, "quantify"))   # the null calibration.py scores
  sources = selectivity.concept_sources(qc.concepts)
  parts = stage.measured_parts(qres.segmenter())
  units, deltas, lengths, null_d, null_len = stage.deltas_from_blocks(blks, null, sources)
  per_start, names = stage.measured_truth(G, sweep_stage.load(workdir).blocks(), qc.samples_per_unit)
  sw = next(iter(sweep_stage.load(workdir).blocks()))
  cls = sw["cls"][sweep_stage.pick_starts(sw["cls"], qc.samples_per_unit)]
  st = selectivity.shared_null_statistics(deltas, lengths, null_d, null_len, seed=seed, n_boot=qc.n_boot,
                                          q_level=qc.q_level, min_effect=qc.min_effect, intervals=False,
                                          **stage.statistics_options(qc))
  check = stage.truth_check({**st, "selective": st["changes"]}, units, parts, per_start.mean(1), names,
                            qc.top_k, G.factor_concepts, score=qc.rank_by)
  print(f"{workdir}: precision@{check['k']} {check['mean_precision']:.3f}, Spearman {check['mean_spearman']:.3f} "
        f"(concepts {qc.concepts}, average {qc.average}); start samples' classes "
        + " ".join(G.class_names[c] for c in cls))
  for f, v in check["per_factor"].items():
    p, m = parts.index(v["part"]), selectivity.CONCEPT_METRICS.index(v["metric"])
    x, y = deltas[:, :, p, m], per_start[:, :, names.index(f)]
    rs, drivers = [], {}
    for s_i in range(x.shape[1]):
      ok = np.isfinite(x[:, s_i])
      rs.append(np.corrcoef(x[ok, s_i], y[ok, s_i])[0, 1] if ok.sum() > 2 else np.nan)
      z = per_start[ok, s_i]
      z = (z - z.mean(0)) / np.where(z.std(0) > 0, z.std(0), 1.0)
      xs = (x[ok, s_i] - x[ok, s_i].mean()) / max(x[ok, s_i].std(), 1e-12)
      beta = np.linalg.lstsq(np.c_[z, np.ones(len(z))], xs, rcond=None)[0][:-1]
      for j in np.argsort(-np.abs(beta))[:3]:
        drivers.setdefault(names[j], []).append(float(beta[j]))
    top = sorted(drivers.items(), key=lambda kv: -len(kv[1]))[:4]
    print(f"  {f:16s} {v['part']} {v['metric']}: precision {v['precision']}, Spearman {v['spearman']:.2f}, "
          f"called {int(st['changes'][:, p, m].sum())}; r per start " + " ".join(f"{r:.2f}" for r in rs)
          + "; drivers " + ", ".join(f"{n} ({len(b)} starts, mean weight {np.mean(b):+.2f})" for n, b in top))


def _calibration_inputs(workdir: str, seed: int) -> dict:
  """A finished demo workdir's quantify statistics as the stage computes them, with the truth
  of its measured start samples: {qc, G, units, parts, deltas [U, S, P, M], per_start
  [U, S, F], names, st (shared_null_statistics)}."""
  from configs import demo
  G = generators.load("shapes")
  qc = stage.default_config()
  qc.update(demo.get_config().quantify)
  qres = stage.load(workdir)
  null = stage.load_null(os.path.join(workdir, "quantify"))   # the null calibration.py scores
  blks = qres.blocks()
  units, deltas, lengths, null_d, null_len = stage.deltas_from_blocks(blks, null, selectivity.concept_sources(qc.concepts))
  per_start, names = stage.measured_truth(G, sweep_stage.load(workdir).blocks(), qc.samples_per_unit)
  stored = [str(n) for n in blks[0]["truth_factors"]]
  per_start, names = per_start[..., [names.index(n) for n in stored]], stored
  st = selectivity.shared_null_statistics(deltas, lengths, null_d, null_len, seed=seed, n_boot=qc.n_boot,
                                          q_level=qc.q_level, min_effect=qc.min_effect, intervals=False,
                                          **stage.statistics_options(qc))
  return dict(qc=qc, G=G, units=units, parts=stage.measured_parts(qres.segmenter()), deltas=deltas,
              per_start=per_start, names=names, st=st)


def _confound_pull(x: np.ndarray, per_start: np.ndarray, own: int) -> np.ndarray:
  """[U] the other factors' share of each unit's measured change (mean over start samples).

  x [U, S] the concept's changes; per_start [U, S, F] true factor changes; own: the
  concept's factor. Per start sample, x over units regressed on all F true changes."""
  pull = np.full(x.shape, np.nan)
  for s_i in range(x.shape[1]):
    ok = np.isfinite(x[:, s_i])
    y = per_start[:, s_i]
    beta = np.linalg.lstsq(np.c_[y[ok], np.ones(ok.sum())], x[ok, s_i], rcond=None)[0][:-1]
    beta[own] = 0.0
    pull[ok, s_i] = y[ok] @ beta
  return np.nanmean(pull, axis=1)


def _miss_rows(inp: dict, factor: str, v: dict, k: int) -> list[str]:
  """The lines of one factor's misses (miss_diagnosis)."""
  p = inp["parts"].index(v["part"])
  m = selectivity.CONCEPT_METRICS.index(v["metric"])
  fi = inp["names"].index(factor)
  units, st = inp["units"], inp["st"]
  x, tt = inp["deltas"][:, :, p, m], inp["per_start"][:, :, fi]
  t, t_se = np.abs(tt.mean(1)), tt.std(1, ddof=1) / np.sqrt(tt.shape[1])
  sign = np.sign(st["mean"][:, p, m])
  x_se = np.nanstd(x, 1, ddof=1) / np.sqrt(np.sum(np.isfinite(x), 1))
  ok = np.isfinite(st["mean"][:, p, m])
  slope = np.polyfit(t[ok], np.abs(st["mean"][ok, p, m]), 1)[0]
  pull = sign * _confound_pull(x, inp["per_start"], fi)
  order = np.argsort(-t, kind="stable")
  kth = order[k - 1]
  lines = []
  for u in v["found"]:
    i = int(np.flatnonzero(units == u)[0])
    rank = int(np.flatnonzero(order == i)[0]) + 1
    if rank <= k:
      continue
    gap, gap_se = t[kth] - t[i], np.hypot(t_se[i], t_se[kth])
    noise = np.hypot(x_se[i], x_se[kth]) / slope
    conf = (pull[i] - np.nanmedian(pull[order[:k]])) / slope
    kind = ("truth tie" if gap < gap_se else "systematic" if conf > max(gap, noise) / 2
            else "noise" if gap < 2 * noise else "unexplained")
    lines.append(f"| {factor} | {u} | {rank} | {gap:.3f} | {gap_se:.3f} | {noise:.3f} | {conf:+.3f} | {kind} |")
  return lines


def _ceiling(inp: dict, average: str) -> float:
  """precision@k of the true changes themselves, every unit ranked, averaged by `average`."""
  d = inp["deltas"].copy()
  for f, (part, metric) in inp["G"].factor_concepts.items():
    d[:, :, inp["parts"].index(part), selectivity.CONCEPT_METRICS.index(metric)] = \
        inp["per_start"][:, :, inp["names"].index(f)]
  mean = selectivity._average(d, average, 1)
  st = {"selective": np.ones(mean.shape, bool), "rank": selectivity.rank_units(mean), "mean": mean}
  qc = inp["qc"]
  return stage.truth_check(st, inp["units"], inp["parts"], inp["per_start"].mean(1), inp["names"], qc.top_k,
                           inp["G"].factor_concepts)["mean_precision"]


def miss_diagnosis(workdir: str, seed: int) -> None:
  """Per miss of precision@k: noise or systematic; per factor: fidelity (module docstring)."""
  inp = _calibration_inputs(workdir, seed)
  qc, st = inp["qc"], inp["st"]
  check = stage.truth_check({**st, "selective": st["changes"]}, inp["units"], inp["parts"],
                            inp["per_start"].mean(1), inp["names"], qc.top_k, inp["G"].factor_concepts,
                            score=qc.rank_by)
  k = check["k"]
  print(f"{workdir}: precision@{k} {check['mean_precision']:.3f}, Spearman {check['mean_spearman']:.3f}; "
        f"ceiling (true changes, {qc.average}) {_ceiling(inp, qc.average):.3f}, (mean) {_ceiling(inp, 'mean'):.3f}")
  print("| factor | found unit | true rank | gap below true 5th | its SE (truth) | measurement SE | "
        "other factors' pull | call |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- |")
  for f, v in check["per_factor"].items():
    for line in _miss_rows(inp, f, v, k):
      print(line)
  print("| factor | concept | precision | Spearman | fidelity r (mean over starts) | true top not called |")
  print("| --- | --- | --- | --- | --- | --- |")
  for f, v in check["per_factor"].items():
    p, m = inp["parts"].index(v["part"]), selectivity.CONCEPT_METRICS.index(v["metric"])
    x, y = inp["deltas"][:, :, p, m], inp["per_start"][:, :, inp["names"].index(f)]
    r = [np.corrcoef(x[ok, s], y[ok, s])[0, 1] for s in range(x.shape[1]) if (ok := np.isfinite(x[:, s])).sum() > 2]
    pos = [int(np.flatnonzero(inp["units"] == u)[0]) for u in v["true_top"]]
    uncalled = [u for u, i in zip(v["true_top"], pos) if not st["changes"][i, p, m]]
    print(f"| {f} | {v['part']} {v['metric']} | {v['precision']} | {v['spearman']:.3f} | {np.mean(r):.3f} | "
          f"{uncalled or '-'} |")


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default="/tmp/sel_demo")
  p.add_argument("--samples", type=int, default=8)
  p.add_argument("--null", type=int, default=59)
  p.add_argument("--fake", type=int, default=40)
  p.add_argument("--pairs", type=int, default=128)
  p.add_argument("--cache", default="/tmp/sel_diag_cache.npz")
  p.add_argument("--calibration", default=None, help="a finished demo workdir: per-factor diagnosis")
  p.add_argument("--seed", type=int, default=0, help="the workdir's config.seed (--calibration)")
  p.add_argument("--misses", action="store_true", help="with --calibration: noise or systematic, per miss")
  args = p.parse_args()
  if args.calibration:
    (miss_diagnosis if args.misses else calibration_diagnosis)(args.calibration, args.seed)
    return
  if not os.path.exists(args.cache):
    collect(args)
  analyse(args)


if __name__ == "__main__":
  main()
