"""Calibration of the pipeline's calls against the built-in world's truth, on seeds 0, 1, 2.

  python benchmarks/calibration.py --json /tmp/calibration.json [--workdir /tmp/lis_calib]

Per seed, the demo pipeline (configs/demo.py with --config.seed=SEED, the stages up to
boundary; population, invariances and report enter no figure: the superposition and CKA
figures are computed here) runs into WORKDIR/seed<SEED> (kept: a second run reuses it),
then this script measures:

  quantify     the run's own r-space null (quantify's null.npz: lis_jax.analysis.nulls.rspace_ends,
               quantify.null_draws directions from the start samples quantify measured,
               measured by the run's segmenter; their true changes drawn again from the
               stage's key), the units' statistics against it with BH q-values, and the
               calls (q <= --q) against the truth (analysis.truth; a unit's truth is its
               true change over the start samples quantify measured): fdr_selective,
               power_selective (the issue's 'selective', q <= level scored against the
               true factor change: quantify's 'changes' call, beyond quantify.min_effect x
               the null's RMS; also at the min_effect values of SENSITIVITY; fdr_changes
               and power_changes are the same numbers), fdr_beyond_random,
               power_beyond_random (quantify's 'selective' column: beyond random
               directions); the oracle (the units' true factor changes against the null
               directions': truth.oracle_beyond_random); precision@5 and Spearman as
               quantify's truth_check (also against the sweep's truth over all its start
               samples, '_all_starts', and precision_at_5_within_se:
               truth.precision_within_se); the same against the isotropic-w null
               (quantify.null_space='w', the earlier null: the same number of directions
               from the same start samples, measured here) side by side (`w_null`).
  superposition  the units' calls and the null directions' calls (leave one out, the
               same BH family size rule) labelled by analysis.superposition's rule:
               superposed_fraction_units, superposed_fraction_random (+ intervals).
  semantic order  planted independent spaces at configs/linear.py's sizes (5 classes x
               48 items, 2048 vs 512 dims): debiased CKA and its within-class null's
               95th percentile.
  boundary     r-space null paths (`--boundary-draws` per search), pair statistics (each
               search's exact permutation p, Fisher over the pair's searches) with BH
               over pair x concept: boundary_fpr_uncorrected (null paths tested as
               pairs, p <= 0.05), boundary_fdr (calls at q <= --q on the real pairs
               against the truth of the pairs' mean true factor change),
               boundary_spearman and boundary_right_top (boundary.validate with the null
               paths' true changes: the truth over their RMS, factors whose concept
               follows them on the null paths; boundary_fidelity, boundary_left_out;
               '_range_scale_all': the earlier definition, raw truth, every factor).

Prints one line per figure and writes them as JSON: each key a list, one value per seed.
"""
import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from lis_jax import generators, io  # noqa: E402
from lis_jax.context import stream_key  # noqa: E402
from lis_jax.analysis import boundary as blib  # noqa: E402
from lis_jax.analysis import calls, nulls, rsa, superposition, truth  # noqa: E402
from lis_jax.quantify import selectivity  # noqa: E402
from lis_jax.stages import boundary as bstage  # noqa: E402
from lis_jax.stages import counterfactual, quantify, sweep  # noqa: E402
from lis_jax.stages import link as link_stage  # noqa: E402

STAGES = "paired_data,link,sweep,counterfactual,quantify,boundary"
DEMO_OVERRIDES = []  # extra --config overrides of the demo runs
KEYS = ("fdr_selective", "power_selective", "fdr_beyond_random", "power_beyond_random", "oracle_beyond_random_calls",
        "superposed_fraction_random", "superposed_fraction_units",
        "cka_debiased_independent", "cka_debiased_null_q95", "boundary_fpr_uncorrected", "boundary_fdr",
        "boundary_spearman", "boundary_right_top", "precision_at_5", "spearman", "precision_at_5_all_starts",
        "spearman_all_starts", "precision_at_5_within_se", "boundary_spearman_range_scale_all", "boundary_right_top_range_scale_all")


def run_demo(workdir: str, seed: int) -> float:
  """The demo's stages into workdir (skipped when done); returns the seconds spent."""
  if os.path.exists(os.path.join(workdir, "boundary", "summary.json")):   # its last stage's last file
    from lis_jax.quantify import metrics
    with np.load(os.path.join(workdir, "quantify", "block_00000.npz")) as f:
      missing = [k for k in metrics.SCALAR_METRICS if f"first.{k}" not in f.files]
    if missing:
      raise SystemExit(f"{workdir} was measured by an older lis_jax (no {', '.join(missing)}): "
                       f"use a fresh --workdir")
    return 0.0
  t0 = time.time()
  cmd = [sys.executable, "-m", "lis_jax.main", "--config=configs/demo.py", f"--workdir={workdir}",
         f"--config.seed={seed}", f"--config.stages={STAGES}", *DEMO_OVERRIDES]
  with open(os.path.join(os.path.dirname(workdir), f"seed{seed}.log"), "w") as log:
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
  return time.time() - t0


def _measure_cached(path: str, fn, prefix: str):
  """fn()'s arrays, cached at path; a cache without every metric of this version (an older
  metrics.SCALAR_METRICS) is measured again."""
  from lis_jax.quantify import metrics
  if io.npz_ok(path, finite=False):
    out = io.load_npz(path, finite=False)
    if all(f"{prefix}{k}" in out for k in metrics.SCALAR_METRICS):
      return out
  out = fn()
  io.save_npz(path, **out)
  return out


def null_truth(G, w_start: np.ndarray, ends: np.ndarray) -> dict:
  """[R, F] the null directions' mean true factor change, from their start samples' w
  [S, w_dim] and end points [R, S, w_dim] (nulls.rspace_ends, as the quantify stage draws them)."""
  from lis_jax.analysis.readout import decode_factors
  draws = ends.shape[0]
  f0, _ = decode_factors(G, jax.numpy.asarray(w_start))
  f1, _ = decode_factors(G, jax.numpy.asarray(ends.reshape(-1, ends.shape[-1])))
  ch = blib.factor_changes({k: np.tile(np.asarray(v), draws) for k, v in f0.items()},
                           {k: np.asarray(v) for k, v in f1.items()}, G.factor_ranges, G.circular_factors)
  return {"truth_delta": np.stack([v.reshape(draws, -1).mean(1) for v in ch.values()], -1),
          "truth_factors": np.asarray(list(ch))}


def _null_path_ends(link, cf, a, draws: int, key) -> tuple[np.ndarray, np.ndarray]:
  """(rows of the boundary's searches in the counterfactual arrays [B], the ends of their
  r-space null paths [B, R, w_dim])."""
  ids = a["search"]
  pos = {int(s): i for i, s in enumerate(cf["search"])}
  rows = np.array([pos[int(s)] for s in ids])
  t_c = blib.crossing_t(a["t_leave"], a["t_reach"])
  return rows, nulls.boundary_ends(link, cf["r"][rows], cf["shift"][rows], t_c, key, ids, draws)


def boundary_null(G, seg, qc, link, cf, a, draws: int, key) -> dict:
  """null.<m> [B, R, P] at the ends of r-space null paths of the boundary's searches."""
  _, ends = _null_path_ends(link, cf, a, draws, key)
  b, r, d = ends.shape
  m = quantify.measure(G, seg, ends.reshape(-1, d), qc.batch_size, qc.max_components,
                       quantify.uses_entropy(qc))
  return {f"null.{k}": v.reshape(b, r, *v.shape[1:]) for k, v in m.items()}


def boundary_null_truth(G, link, cf, a, draws: int, key, names) -> dict:
  """{factor: [B, R]} true factor changes along boundary_null's paths (the same draws)."""
  from lis_jax.analysis.readout import decode_factors
  rows, ends = _null_path_ends(link, cf, a, draws, key)
  b, r, d = ends.shape
  w0 = np.asarray(link(jax.numpy.maximum(jax.numpy.asarray(cf["r"][rows]), 0.0)))  # the path's start (t = 0)
  f0, _ = decode_factors(G, jax.numpy.asarray(w0))
  f1, _ = decode_factors(G, jax.numpy.asarray(ends.reshape(-1, d)))
  ch = blib.factor_changes({k: np.repeat(np.asarray(v), r) for k, v in f0.items()},
                           {k: np.asarray(v) for k, v in f1.items()}, G.factor_ranges, G.circular_factors)
  return {n: ch[n].reshape(b, r) for n in names}


def planted_cka(seed: int, n_perm: int) -> dict:
  """configs/linear.py's sizes: 5 classes x 48 items, r 2048-d vs w 512-d, independent."""
  rng = np.random.default_rng(seed)
  cls = np.repeat(np.arange(5), 48)
  x, y = rng.normal(size=(240, 2048)), rng.normal(size=(240, 512))
  res = rsa.cka_test(x, y, n_perm=n_perm, rng=rng, cls=cls)
  return {"cka_debiased_independent": res["cka"], "cka_debiased_null_q95": res["null_q95"],
          "cka_biased_independent": rsa.linear_cka(x, y)}


def quantify_figures(wd, G, qc, stats_fn, blks, null, parts, q_level, t, names, per_start=None) -> dict:
  """FDR / power of the calls, precision@5 and Spearman, superposition, for one null.

  t [U, F]: the units' true factor changes over the start samples quantify measured
  (names: its F columns); the sweep's truth_delta (all its start samples) gives the
  '_all_starts' figures."""
  sources = selectivity.concept_sources(qc.concepts)
  units, deltas, lengths, null_d, null_len = quantify.deltas_from_blocks(blks, null, sources)
  st = stats_fn(deltas, lengths, null_d, null_len)
  assert names == [str(n) for n in blks[0]["truth_factors"]]
  t_all = np.concatenate([b["truth_delta"] for b in blks])
  metrics = list(selectivity.CONCEPT_METRICS)
  status = truth.labels(t, names, G.factor_concepts, parts, metrics)
  r = truth.rates(st["selective"], status)
  check = quantify.truth_check({**st, "selective": st["changes"]}, units, parts, t, names, qc.top_k,
                               G.factor_concepts, score=qc.rank_by)
  check_all = quantify.truth_check({**st, "selective": st["changes"]}, units, parts, t_all, names, qc.top_k,
                                   G.factor_concepts, score=qc.rank_by)
  beyond = quantify.truth_check(st, units, parts, t, names, qc.top_k, G.factor_concepts, score=qc.rank_by)
  rc = truth.rates(st["changes"], status)
  ranked = quantify.truth_check({**st, "selective": np.ones_like(st["selective"])}, units, parts, t, names,
                                qc.top_k, G.factor_concepts, score=qc.rank_by)
  nc = selectivity.null_calls(null_d, null_len, seed=0, alpha=qc.alpha, q_level=q_level,
                              average=qc.average, per_length=qc.null_per_length,
                              per_start_scale=qc.per_start_scale)
  sup = superposition.analyse(st, units, parts, metrics, null_selective=nc["selective"])
  p_unc = truth.rates(st["p_null"] <= qc.alpha, status)
  with np.errstate(invalid="ignore"):  # the same rule with uncorrected calls (p <= alpha), for contrast
    sup_unc = superposition.analyse({**st, "selective": st["p_null"] <= qc.alpha}, units, parts, metrics,
                                    null_selective=nc["p_null"] <= qc.alpha)
  within = {}
  if per_start is not None:  # precision@k with the truth's top k known to its standard error
    pos = {int(u): i for i, u in enumerate(units)}
    for f, v in check["per_factor"].items():
      within[f] = truth.precision_within_se([pos[u] for u in v["found"]], per_start[:, :, names.index(f)],
                                            check["k"])
  vals = [p for p, _ in within.values() if p is not None]
  # 'selective' as the issue defines it (q <= level; truly selective = the true factor change)
  # is the 'changes' call; the beyond-random-directions call is reported under its own name.
  return {"fdr_selective": rc["fdr"], "power_selective": rc["power"], "n_called": rc["n_called"],
          "fdr_beyond_random": r["fdr"], "power_beyond_random": r["power"], "n_beyond_random_called": r["n_called"],
          "fdr_changes": rc["fdr"], "power_changes": rc["power"], "n_changes_called": rc["n_called"],
          "n_changes_all": int(np.sum(st["changes"])), "precision_at_5_selective": beyond["mean_precision"],
          "n_true_selective": r["n_true_selective"], "n_true_null": r["n_true_null"],
          "n_beyond_random_all": int(np.sum(st["selective"])), "n_tests": int(np.sum(np.isfinite(st["p_null"]))),
          "fdr_uncorrected_p05": p_unc["fdr"], "power_uncorrected_p05": p_unc["power"],
          "null_fpr_p05": nc["fpr"], "null_any_call": nc["fdr_any"],
          "n_null_selective": int(np.sum(nc["selective"])),
          "precision_at_5": check["mean_precision"], "spearman": check["mean_spearman"],
          "precision_at_5_all_starts": check_all["mean_precision"], "spearman_all_starts": check_all["mean_spearman"],
          "spearman_per_factor": {f: v["spearman"] for f, v in check["per_factor"].items()},
          "precision_at_5_within_se": float(np.mean(vals)) if vals else None,
          "precision_at_5_within_se_per_factor": {f: p for f, (p, _) in within.items()},
          "within_se_top_sizes": {f: n for f, (_, n) in within.items()},
          "precision_at_5_ranked": ranked["mean_precision"],
          "precision_at_5_per_factor": {f: v["precision"] for f, v in check["per_factor"].items()},
          "superposed_fraction_units": sup["superposed_units"]["fraction"],
          "superposed_units_ci": [sup["superposed_units"]["ci_low"], sup["superposed_units"]["ci_high"]],
          "superposed_fraction_random": sup["superposed_null"]["fraction"],
          "superposed_random_ci": [sup["superposed_null"]["ci_low"], sup["superposed_null"]["ci_high"]],
          "null_draws": int(null_d.shape[0]),
          "superposed_fraction_units_p05": sup_unc["superposed_units"]["fraction"],
          "superposed_fraction_random_p05": sup_unc["superposed_null"]["fraction"]}


SENSITIVITY = (0.0, 0.25, 0.5, 1.0)  # quantify.min_effect values the 'changes' call is also scored at


def changes_sensitivity(G, qc, blks, null, parts, seed, q_level, t, names) -> dict:
  """{min_effect: {fdr, power, n_called}} of the 'changes' call against the truth (0: a
  plain two-sided test of no change, whose false discoveries show why a smallest effect
  of interest is needed: measured concepts move a little with every factor)."""
  sources = selectivity.concept_sources(qc.concepts)
  _, deltas, lengths, null_d, null_len = quantify.deltas_from_blocks(blks, null, sources)
  status = truth.labels(t, names, G.factor_concepts, parts, list(selectivity.CONCEPT_METRICS))
  out = {}
  for me in SENSITIVITY:
    st = selectivity.shared_null_statistics(deltas, lengths, null_d, null_len, seed=seed, q_level=q_level,
                                            min_effect=me, intervals=False, **quantify.statistics_options(qc))
    if me == 0.0:  # two-sided: H0 mean change = 0
      st["changes"] = calls.bh_qvalues(np.minimum(2 * st["p_change"], 1.0)) <= q_level
    r = truth.rates(st["changes"], status)
    out[str(me)] = {"fdr": r["fdr"], "power": r["power"], "n_called": r["n_called"],
                    "n_changes_all": int(np.sum(st["changes"]))}
  return out


def boundary_figures(G, a, batch0, null_arrays, null_truth, sources, parts, seed, q_level) -> dict:
  arrays = {**{k: v for k, v in a.items() if k.startswith("pt.")}, **null_arrays}
  deltas, null_d = bstage.changes(arrays, sources)
  metrics = list(selectivity.CONCEPT_METRICS)
  pairs, st = blib.pair_statistics(deltas, null_d, a["origin"], a["target"], seed=seed, q_level=q_level)
  nc = blib.null_path_calls(null_d, a["origin"], a["target"], seed=seed, q_level=q_level)
  names = [str(x) for x in batch0["truth_factors"]]
  tr = {n: a["truth_change"][:, i] for i, n in enumerate(names)}
  val = blib.validate(st, tr, a["origin"], a["target"], parts, metrics, G.factor_concepts,
                      null_truth=null_truth, null_deltas=null_d)
  raw = blib.validate(st, tr, a["origin"], a["target"], parts, metrics, G.factor_concepts)  # the earlier definition
  bar05 = blib.validate(st, tr, a["origin"], a["target"], parts, metrics, G.factor_concepts,
                        null_truth=null_truth, null_deltas=null_d, min_fidelity=0.5)  # the earlier fidelity bar
  _, idx = blib.group_by_pair(a["origin"], a["target"])
  pair_truth = np.stack([np.nanmean(blib.take_rows(a["truth_change"], idx[i]), axis=0) for i in range(len(pairs))])
  status = truth.labels(pair_truth, names, G.factor_concepts, parts, metrics)
  r = truth.rates(st["selective"], status)
  return {"boundary_fpr_uncorrected": nc["fpr"], "boundary_fwer_null_paths": nc["fwer"],
          "boundary_fdr": r["fdr"], "boundary_power": r["power"], "boundary_n_called": r["n_called"],
          "boundary_n_true_null": r["n_true_null"], "boundary_n_true_selective": r["n_true_selective"],
          "boundary_selective_share": float(np.nanmean(st["selective"])),
          "boundary_spearman": val["mean_spearman"], "boundary_right_top": val["share_right_top"],
          "boundary_chance": val["chance"], "boundary_null_draws": int(null_d.shape[1]),
          "boundary_factors": val["factors"], "boundary_left_out": val["left_out"],
          "boundary_fidelity": val["fidelity"], "boundary_spearman_range_scale_all": raw["mean_spearman"],
          "boundary_right_top_range_scale_all": raw["share_right_top"],
          "boundary_spearman_fidelity_05": bar05["mean_spearman"], "boundary_right_top_fidelity_05":
          bar05["share_right_top"], "boundary_factors_fidelity_05": bar05["factors"]}


def measure_seed(wd: str, seed: int, args) -> dict:
  from configs import demo
  cfg = demo.get_config()
  qc = quantify.default_config()
  qc.update(cfg.quantify)
  G = generators.load(cfg.generator)
  qres = quantify.load(wd)
  seg = qres.segmenter()
  parts = quantify.measured_parts(seg)
  link = link_stage.load_model(os.path.join(wd, "link"))
  sres = sweep.load(wd)
  blks = qres.blocks()
  sweep_blocks = list(sres.blocks())
  ranges = np.concatenate([np.abs(b["values"][:, -1] - b["values"][:, 0]) for b in sweep_blocks])
  root = jax.random.PRNGKey(1000 + seed)
  t0 = time.time()
  if qc.null_space != "r":
    raise SystemExit(f"the demo's quantify.null_space is {qc.null_space!r}: the figures score the r-space null")
  null_key = stream_key(seed, "quantify.null")   # the stage's (ctx.key("quantify.null"))
  rnull = quantify.load_null(os.path.join(wd, "quantify"))   # the run's own r-space null
  null_ends = nulls.rspace_ends(link, sres.r_start[sweep.pick_starts(sres.cls, qc.samples_per_unit)], ranges,
                               qc.null_draws, null_key)   # the stage's directions, drawn again for their truth
  np.testing.assert_array_equal(rnull["length"], null_ends[2])
  qc_w = qc.copy_and_resolve_references()
  qc_w.null_space = "w"
  wnull = _measure_cached(os.path.join(wd, f"calib_w_null_{qc.null_draws}.npz"),
                          lambda: quantify._quantify_null(qc_w, G, seg, sweep_blocks, null_key, None, None), "end.")
  a = bstage._concat(bstage.load_batches(wd))
  cf = counterfactual.load(wd).arrays
  bnull = _measure_cached(os.path.join(wd, f"calib_boundary_null_{args.boundary_draws}.npz"),
                          lambda: boundary_null(G, seg, qc, link, cf, a, args.boundary_draws,
                                                jax.random.fold_in(root, 1)), "null.")
  t_measure = time.time() - t0

  def stats_fn(deltas, lengths, null_d, null_len):
    return selectivity.shared_null_statistics(deltas, lengths, null_d, null_len, seed=seed, n_boot=qc.n_boot,
                                              q_level=args.q, min_effect=qc.min_effect,
                                              **quantify.statistics_options(qc))

  # The truth of what quantify measured: the units' true changes over the same start samples
  # (quantify measures samples_per_unit of the sweep's; the sweep's truth_delta averages all
  # of them, so its top units are partly the unmeasured samples' and would also shrink the
  # units' extremes against the null's, measured from the same 8 samples).
  # (quantify's truth_check uses the same truth: measuring.measured_truth.)
  per_start, names = quantify.measured_truth(G, sweep_blocks, qc.samples_per_unit)
  stored = [str(n) for n in blks[0]["truth_factors"]]  # the blocks' order (older workdirs: sorted)
  per_start, names = per_start[..., [names.index(n) for n in stored]], stored
  t_units = per_start.mean(1)
  t8 = [sweep.factor_deltas(G, b["w"][:, sweep.pick_starts(b["cls"], qc.samples_per_unit)]) for b in sweep_blocks]
  t8_names = [str(n) for n in t8[0][1]]
  np.testing.assert_allclose(np.concatenate([x[0] for x in t8])[:, [t8_names.index(n) for n in names]], t_units,
                             atol=1e-5)  # the sweep's own reading
  assert np.array_equal(np.concatenate([b["units"] for b in sweep_blocks]), np.concatenate([b["units"] for b in blks]))
  out = {"measure_seconds": t_measure}
  out.update(quantify_figures(wd, G, qc, stats_fn, blks, rnull, parts, args.q, t_units, names, per_start))
  out["changes_by_min_effect"] = changes_sensitivity(G, qc, blks, rnull, parts, seed, args.q, t_units, names)
  nt = null_truth(G, null_ends[0], null_ends[1])
  assert names == [str(n) for n in nt["truth_factors"]]
  orc = truth.oracle_beyond_random(t_units, nt["truth_delta"], names, list(G.factor_concepts), args.q)
  out.update(oracle_beyond_random_calls=orc["n_calls"], oracle_beyond_random_tests=orc["n_tests"],
             oracle_beyond_random_min_p=orc["min_p"], oracle_beyond_random_share_p05=orc["share_p05"])
  out["w_null"] = quantify_figures(wd, G, qc, stats_fn, blks, wnull, parts, args.q, t_units, names)
  out.update(planted_cka(seed, args.cka_perm))
  batch0 = bstage.load_batches(wd)[0]
  bnt = boundary_null_truth(G, link, cf, a, args.boundary_draws, jax.random.fold_in(root, 1),
                            [str(x) for x in batch0["truth_factors"]])
  out.update(boundary_figures(G, a, batch0, bnull, bnt, selectivity.concept_sources(qc.concepts),
                              parts, seed, args.q))
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--json", required=True, help="where to write the figures")
  p.add_argument("--workdir", default="/tmp/lis_calibration", help="cached demo workdirs (one per seed)")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--q", type=float, default=0.1, help="BH level of the calls")
  p.add_argument("--boundary-draws", type=int, default=16, help="r-space null paths per search")
  p.add_argument("--cka-perm", type=int, default=200, help="within-class permutations of the CKA null")
  args = p.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  os.makedirs(args.workdir, exist_ok=True)
  t_all = time.time()
  per_seed = []
  for seed in seeds:
    wd = os.path.join(args.workdir, f"seed{seed}")
    t_demo = run_demo(wd, seed)
    res = measure_seed(wd, seed, args)
    res["demo_seconds"] = t_demo
    per_seed.append(res)
    print(f"seed {seed}: " + ", ".join(f"{k} {res[k]:.3f}" for k in KEYS if res.get(k) is not None), flush=True)
  out = {k: [r.get(k) for r in per_seed] for k in per_seed[0] if k != "w_null"}
  out["w_null"] = {k: [r["w_null"].get(k) for r in per_seed] for k in per_seed[0]["w_null"]}
  out.update(seeds=seeds, q=args.q, truth_null_below=truth.NULL_BELOW,
             truth_selective_above=truth.SELECTIVE_ABOVE, seconds=time.time() - t_all)
  io.write_json(args.json, out)
  for k in KEYS:
    v = [x for x in out[k] if x is not None]
    print(f"{k:28s} " + " ".join(f"{x:.3f}" for x in v) + (f"   mean {np.mean(v):.3f} min {np.min(v):.3f}" if v else ""))
  for me in SENSITIVITY:
    v = [r["changes_by_min_effect"][str(me)] for r in per_seed]
    print(f"changes at min_effect {me}: FDR " + " ".join(f"{x['fdr']:.3f}" for x in v)
          + ", power " + " ".join(f"{x['power']:.3f}" for x in v))
  print(f"w-null side by side: fdr_selective {out['w_null']['fdr_selective']}, "
        f"superposed_fraction_random {out['w_null']['superposed_fraction_random']}")
  print(f"total {out['seconds']:.0f} s")


if __name__ == "__main__":
  main()
