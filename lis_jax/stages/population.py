"""Stage `population`: superposition, semantic order and class-wise selectivity.

Reads the link (and its held-out split), the paired data and quantify's selectivity:
  superposition   per unit, the concepts it is selective for, grouped by (part,
                  measure family), the entropy of its |effect| profile and the label of
                  the rule in lis_jax.analysis.superposition; the unit-to-concept map
  semantic order  RSA (Spearman of dissimilarity upper triangles, permutation null),
                  linear CKA and k-NN class agreement of r versus w on held-out pairs,
                  pooled and within each class; the same for the link's prediction
                  link(r) against w, for every link kind of `compare_links` (the
                  fitted link, plus the others fitted here on the link's train split)
  class-wise      quantify's selectivity statistics per start-sample class

Outputs (workdir/population/, atomic):
  summary.json        superposition counts, semantic order (pooled, per class, per link
                      kind), class-wise summary
  superposition.csv   one row per unit: unit, n_concepts, n_groups, entropy, label,
                      top_concept, top_effect
  concept_map.csv     one row per selective (unit, concept): unit, part, metric, family,
                      effect, mean
  classwise.csv       one row per class x unit x concept that is selective in that class
  rsa.npz             the held-out items (rows [N], cls [N]) and their dissimilarity
                      matrices d_r, d_w [N, N] (for the report's plot)
"""
from __future__ import annotations

import copy
import dataclasses
import html
import os

import jax
import ml_collections
import numpy as np

from lis_jax import errors, io, page
from lis_jax.analysis import classwise, rsa, superposition
from lis_jax.generators.base import GroundTruthWorld
from lis_jax.quantify import measuring, selectivity
from lis_jax import validate as V
from lis_jax.stages.base import Stage

NAME = "population"


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.n_items = 240  # held-out pairs in the RSA (spread over the classes)
  c.metric = "correlation"  # dissimilarity: correlation | euclidean
  c.n_perm = 1000  # permutations of the RSA null
  c.k = 5  # neighbours for the k-NN statistics
  c.compare_links = "ols,mlp"  # link kinds compared side by side (others than the fitted one are fitted here)
  c.n_boot = 500  # bootstrap resamples of the class-wise selectivity
  return c


@dataclasses.dataclass(frozen=True)
class PopulationResult:
  summary: dict
  workdir: str


def load(workdir: str) -> PopulationResult:
  path = errors.require(os.path.join(workdir, NAME, "summary.json"), NAME)
  return PopulationResult(summary=io.read_json(path), workdir=workdir)


def stats_from_rows(rows: list[dict]) -> tuple[list[int], list[str], dict[str, np.ndarray]]:
  """quantify's selectivity rows -> (units, parts, {selective, effect, mean: [U, P, M]})."""
  units = sorted({r["unit"] for r in rows})
  parts = list(dict.fromkeys(r["part"] for r in rows))
  metrics = list(selectivity.CONCEPT_METRICS)
  ui = {u: i for i, u in enumerate(units)}
  out = {k: np.full((len(units), len(parts), len(metrics)), np.nan) for k in ("effect", "mean")}
  out["selective"] = np.zeros((len(units), len(parts), len(metrics)), bool)
  for r in rows:
    idx = (ui[r["unit"]], parts.index(r["part"]), metrics.index(r["metric"]))
    out["selective"][idx] = r["selective"]
    out["effect"][idx] = r["effect"]
    out["mean"][idx] = r["mean"]
  return units, parts, out


def held_out_items(cls: np.ndarray, test: np.ndarray, n: int) -> np.ndarray:
  """Up to n held-out rows, class by class in turn (round robin)."""
  groups = [list(test[cls[test] == k]) for k in np.unique(cls[test])]
  out = []
  while len(out) < n and any(groups):
    out += [g.pop(0) for g in groups if g][:n - len(out)]
  return np.sort(np.asarray(out, np.int64))


def _links(ctx, kinds: list[str], pd, train: np.ndarray) -> dict:
  """{kind: Link}: the fitted one, plus the others fitted on the same train split."""
  from lis_jax import linking
  fitted = ctx.result("link").link
  out = {}
  for kind in kinds:
    if kind == fitted.kind:
      out[kind] = fitted
      continue
    section = copy.deepcopy(ctx.cfg("link"))
    section.kind = kind
    out[kind] = linking.fit(section, pd.r[train], pd.w[train], ctx.key(f"{NAME}.link.{kind}"))
  return out


def semantic_order(ctx, c, pd, split) -> tuple[dict, dict]:
  """(summary, matrices for rsa.npz): r vs w, link(r) vs w per kind, pooled and per class."""
  from lis_jax import linking
  items = held_out_items(pd.cls, split.test, c.n_items)
  r, w, cls = pd.r[items], pd.w[items], pd.cls[items]
  rng = ctx.rng(f"{NAME}.rsa")   # the RSA permutations
  print(f"[{NAME}] RSA over {len(items)} items: {c.n_perm} permutations per comparison "
        f"(pooled, per class, per link kind)", flush=True)
  pooled = rsa.compare(r, w, cls, metric=c.metric, k=c.k, n_perm=c.n_perm, rng=rng)
  per_class = {}
  for k in np.unique(cls):
    m = cls == k
    if m.sum() >= 4:
      per_class[int(k)] = {"n": int(m.sum()),
                           "rsa": rsa.rsa(rsa.dissimilarity(r[m], c.metric), rsa.dissimilarity(w[m], c.metric),
                                          n_perm=c.n_perm, rng=rng),
                           "cka": rsa.linear_cka(r[m], w[m]),
                           "cka_debiased": rsa.cka_test(r[m], w[m], n_perm=c.n_perm, rng=rng)}
  kinds = [k.strip() for k in c.compare_links.split(",") if k.strip()]
  unknown = [k for k in kinds if k not in linking.KINDS]
  if unknown:
    raise errors.PipelineError(f"population.compare_links: unknown kind(s) {unknown}; known: "
                                 f"{', '.join(linking.KINDS)}")
  links = {}
  test_rows = split.test
  for kind, link in _links(ctx, kinds, pd, split.train).items():
    pred = np.asarray(jax.jit(lambda l, x: l(x))(link, pd.r[items]))
    reg = linking.regression_metrics(pd.w[test_rows], np.asarray(link(pd.r[test_rows])))
    links[kind] = {"heldout_r2": float(reg["r2"]), "fitted_by": "link" if link is ctx.result("link").link
                   else NAME, "vs_w": rsa.compare(pred, w, cls, metric=c.metric, k=c.k, n_perm=c.n_perm, rng=rng),
                   "vs_r": {"rsa": rsa.rsa(rsa.dissimilarity(r, c.metric), rsa.dissimilarity(pred, c.metric),
                                           n_perm=c.n_perm, rng=rng), "cka": rsa.linear_cka(r, pred)}}
  mats = {"rows": items, "cls": cls, "d_r": rsa.dissimilarity(r, c.metric), "d_w": rsa.dissimilarity(w, c.metric)}
  return {"n_items": int(items.size), "metric": c.metric, "pooled": pooled, "per_class": per_class,
          "links": links}, mats


def class_wise(ctx, c, pd, parts: list[str]) -> tuple[list[dict], list[dict]] | None:
  """(summary rows, selective rows) per start-sample class, or None if samples differ per block."""
  blocks = ctx.result("quantify").blocks()
  samples = blocks[0]["samples"]
  if any(not np.array_equal(b["samples"], samples) for b in blocks):
    return None
  null = ctx.result("quantify").null()
  qc = ctx.cfg("quantify")
  units, deltas, lengths, null_d, null_len = measuring.deltas_from_blocks(
      blocks, null, measuring.concept_sources(qc))
  opts = dict(n_boot=c.n_boot, q_level=qc.q_level, **measuring.statistics_options(qc))
  per = classwise.statistics(deltas, lengths, null_d, null_len, pd.cls[samples],
                             seed=ctx.seed(f"{NAME}.classwise"), **opts)
  null_count = classwise.null_counts(null_d, null_len, pd.cls[samples], len(units),
                                     seed=ctx.seed(f"{NAME}.classwise"), alpha=qc.alpha, q_level=qc.q_level,
                                     average=qc.average, per_length=qc.null_per_length,
                                     per_start_scale=qc.per_start_scale)
  pooled = selectivity.shared_null_statistics(deltas, lengths, null_d, null_len,  # calls and ranks only
                                              seed=ctx.seed(f"{NAME}.classwise"), intervals=False, **opts)
  rows = []
  for k, st in per.items():
    for r in selectivity.table_rows(st, units, parts):
      if r["selective"]:
        rows.append({"class": k, **r})
  return classwise.summary(pooled, per, null_count), rows


def null_selective(ctx) -> np.ndarray:
  """[R, P, M] quantify's calls made on its own null directions (selectivity.null_calls)."""
  qc = ctx.cfg("quantify")
  q = ctx.result("quantify")
  _, _, _, null_d, null_len = measuring.deltas_from_blocks(q.blocks(), q.null(), measuring.concept_sources(qc))
  return selectivity.null_calls(null_d, null_len, seed=ctx.seed(f"{NAME}.superposition"), alpha=qc.alpha,
                                q_level=qc.q_level, average=qc.average, per_length=qc.null_per_length,
                                per_start_scale=qc.per_start_scale)["selective"]


def run(ctx) -> None:
  c = ctx.cfg(NAME)
  if c.n_items < 4 or c.n_perm < 1 or c.k < 1:
    raise errors.PipelineError("population: n_items must be >= 4, n_perm and k >= 1")
  out_dir = ctx.out_dir(NAME)
  os.makedirs(out_dir, exist_ok=True)
  pd = ctx.result("paired_data")
  split = ctx.result("link")
  units, parts, st = stats_from_rows(ctx.result("quantify").rows)
  sup = superposition.analyse(st, units, parts, list(selectivity.CONCEPT_METRICS),
                              null_selective=null_selective(ctx))
  selectivity.write_csv(os.path.join(out_dir, "superposition.csv"), sup["units"],
                        ["unit", "n_concepts", "n_groups", "entropy", "label", "top_concept", "top_effect"])
  selectivity.write_csv(os.path.join(out_dir, "concept_map.csv"), sup["concept_map"],
                        ["unit", "part", "metric", "family", "effect", "mean"])
  order, mats = semantic_order(ctx, c, pd, split)
  io.save_npz(os.path.join(out_dir, "rsa.npz"), **mats)
  cw = class_wise(ctx, c, pd, parts)
  if cw is not None:
    selectivity.write_csv(os.path.join(out_dir, "classwise.csv"), cw[1],
                          ("class",) + selectivity.TABLE_COLUMNS)
  summary = {"superposition": {k: v for k, v in sup.items() if k not in ("units", "concept_map")},
             "semantic_order": order, "classwise": cw[0] if cw is not None else None}
  io.write_json(os.path.join(out_dir, "summary.json"), summary)
  p = order["pooled"]["rsa"]
  sn = sup["superposed_null"]
  pw, cd = order["pooled"]["rsa_within_class"], order["pooled"]["cka_debiased"]
  print(f"[population] superposed units: {sup['fraction_superposed']:.2f} of all "
        f"({sup['counts']['superposed']} of {len(units)}; null directions {sn['fraction']:.2f}, "
        f"95% [{sn['ci_low']:.2f}, {sn['ci_high']:.2f}]); RSA r-w Spearman {p['spearman']:.3f} "
        f"(null {p['null_mean']:.3f} +- {p['null_sd']:.3f}, p {p['p']:.3g}; within-class null "
        f"{pw['null_mean']:.3f} +- {pw['null_sd']:.3f}, p {pw['p']:.3g}); debiased CKA {cd['cka']:.3f} "
        f"(within-class null q95 {cd['null_q95']:.3f}, p {cd['p']:.3g}; biased {order['pooled']['cka']:.3f})",
        flush=True)


# ----------------------------------------------------------------------------- report section


def _fmt(x, digits: int = 3) -> str:
  return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}g}"


def _rsa_cells(res: dict) -> list[str]:
  r = res["rsa"]
  return [_fmt(r["spearman"]), f"{_fmt(r['null_mean'], 2)} +- {_fmt(r['null_sd'], 2)}", _fmt(r["p"], 2),
          _fmt(res["cka"])]


def _unit_figures(ctx, units, parts, st, rows_by_unit, out_dir, n: int) -> list[str]:
  """Bar charts (as the reference's visualize_unit) of the n units with the most selective groups."""
  from lis_jax import plots
  sel_units = sorted(rows_by_unit, key=lambda r: (-r["n_groups"], -abs(r["top_effect"])
                                                  if np.isfinite(r["top_effect"]) else 0.0))[:n]
  q = {(r["unit"], r["part"], r["metric"]): r for r in ctx.result("quantify").rows}
  metrics = list(selectivity.CONCEPT_METRICS)
  out = []
  for row in sel_units:
    u = row["unit"]
    get = lambda key: np.array([[q[(u, p, m)][key] for m in metrics] for p in parts], np.float64)
    sel = np.array([[q[(u, p, m)]["selective"] for m in metrics] for p in parts], bool)
    png = plots.save(plots.unit_bars(u, parts, metrics, get("mean"), get("ci_low"), get("ci_high"), sel),
                     out_dir, f"unit_{u:05d}")
    out.append(plots.img_tag(png, f"unit {u} ({row['label']}, {row['n_groups']} groups): part changes over "
                             "its sweep", f"unit_{u:05d}"))
  return out


def section(ctx) -> str | None:
  """HTML: superposition (histogram, heatmap, unit bars), semantic order (tables, RSA matrices), class-wise."""
  import csv

  from lis_jax import plots
  out = ctx.out_dir(NAME)
  if not os.path.exists(os.path.join(out, "summary.json")):
    return None
  s = load(ctx.workdir).summary
  rep_dir = ctx.out_dir("report")
  sup = s["superposition"]
  with open(os.path.join(out, "superposition.csv")) as f:
    unit_rows = [{**r, "unit": int(r["unit"]), "n_groups": int(r["n_groups"]), "entropy": float(r["entropy"]),
                  "top_effect": float(r["top_effect"])} for r in csv.DictReader(f)]
  units, parts, st = stats_from_rows(ctx.result("quantify").rows)
  n_units = len(unit_rows)
  h = ["<h2>Population analyses</h2>", "<h3>Superposition: concepts per unit</h3>",
       f"<p>Rule: {html.escape(sup['rule'])} (measures in one family co-vary by construction; "
       f"'selective' is quantify's call, BH q &lt;= {ctx.cfg('quantify').q_level}). <b>{sup['counts']['superposed']} of {n_units} units "
       f"({sup['fraction_superposed']:.0%}) are superposed</b>"
       + (f" (95% interval {sup['superposed_units']['ci_low']:.2f}-{sup['superposed_units']['ci_high']:.2f}); "
          f"the same rule on the calls made on quantify's {sup['superposed_null']['n']} null directions: "
          f"<b>{sup['superposed_null']['fraction']:.0%}</b> (95% interval {sup['superposed_null']['ci_low']:.2f}-"
          f"{sup['superposed_null']['ci_high']:.2f}). " if "superposed_null" in sup else ", ")
       + f"{sup['counts']['single-concept']} "
       f"single-concept, {sup['counts']['none']} selective for nothing; of the units selective for anything, "
       f"{_fmt(sup['fraction_superposed_of_selective'], 2)} are superposed. Unit-to-concept map: "
       f"<code>population/concept_map.csv</code>.</p>"]
  png = plots.save(plots.superposition_histogram(np.array([r["n_groups"] for r in unit_rows]),
                                                 np.array([r["entropy"] for r in unit_rows]),
                                                 [r["label"] for r in unit_rows]), rep_dir, "superposition")
  h.append(plots.img_tag(png, "Selective (part, family) groups per unit, and the entropy of each unit's "
                         "|effect| profile", "superposition"))
  concepts = [f"{p} {m}" for p in parts for m in selectivity.CONCEPT_METRICS]
  png = plots.save(plots.selectivity_heatmap(st["effect"].reshape(len(units), -1), units, concepts,
                                             st["selective"].reshape(len(units), -1)), rep_dir, "selectivity_heatmap")
  h.append(plots.img_tag(png, "Units x concepts: effect (mean change over the sweep / random-direction null), "
                         "clustered", "selectivity_heatmap"))
  h += _unit_figures(ctx, units, parts, st, unit_rows, rep_dir, 3)

  so = s["semantic_order"]
  p = so["pooled"]
  h.append("<h3>Semantic order: r versus w</h3>"
           f"<p>{so['n_items']} held-out pairs spread over the classes; dissimilarity: {so['metric']}. RSA: "
           "Spearman correlation of the two dissimilarity matrices' upper triangles, against a null of "
           f"{p['rsa']['n_perm']} item permutations (mean +- sd, one-sided p). Linear CKA: 1 = the same space "
           "up to rotation and scale. k-NN class agreement: share of each item's nearest neighbours of its "
           f"class (chance {p['chance_class']:.2f}).</p>")
  if "rsa_within_class" in p:
    pw, pr, cd = p["rsa_within_class"], p["partial_rsa"], p["cka_debiased"]
    h.append("<p>Beyond the classes (both spaces cluster by class, which alone passes the item-permutation null): "
             f"RSA against items permuted only within their class: {_fmt(p['rsa']['spearman'])} vs null "
             f"{_fmt(pw['null_mean'], 2)} +- {_fmt(pw['null_sd'], 2)} (p {_fmt(pw['p'], 2)}); RSA partialled on "
             f"class: {_fmt(pr['partial_spearman'])} (within-class null {_fmt(pr['null_mean'], 2)} +- "
             f"{_fmt(pr['null_sd'], 2)}, p {_fmt(pr['p'], 2)}); <b>debiased linear CKA {_fmt(cd['cka'])}</b> "
             f"(unbiased HSIC; within-class null 95th percentile {_fmt(cd['null_q95'], 2)}, p {_fmt(cd['p'], 2)}; "
             f"the biased estimator {_fmt(p['cka'])} is far from 0 even for independent spaces).</p>")
  h.append(page.table(["compared", "RSA Spearman", "null", "p", "linear CKA", "k-NN class (first)",
                          "k-NN class (second)", "shared neighbours"],
                         [["r vs w (pooled)", *_rsa_cells(p), _fmt(p["knn_class_x"]), _fmt(p["knn_class_y"]),
                           _fmt(p["knn_overlap"])]]
                         + [[f"link(r) [{k}] vs w", *_rsa_cells(v["vs_w"]), _fmt(v["vs_w"]["knn_class_x"]),
                             _fmt(v["vs_w"]["knn_class_y"]), _fmt(v["vs_w"]["knn_overlap"])]
                            for k, v in so["links"].items()]))
  if so["links"]:
    h.append("<p>The link kinds side by side (held-out R^2 of w; the first is the pipeline's link, the others are "
             "fitted here on the same train split):</p>" + page.table(
                 ["link", "fitted by", "held-out R^2", "RSA link(r) vs w", "RSA r vs link(r)", "CKA r vs link(r)"],
                 [[k, v["fitted_by"], _fmt(v["heldout_r2"]), _fmt(v["vs_w"]["rsa"]["spearman"]),
                   _fmt(v["vs_r"]["rsa"]["spearman"]), _fmt(v["vs_r"]["cka"])] for k, v in so["links"].items()]))
  names = ctx.G.class_names if isinstance(ctx.G, GroundTruthWorld) else None
  h.append(page.table(["class", "items", "RSA Spearman", "null", "p", "linear CKA", "debiased CKA",
                       "its null q95"],
                         [[names[int(k)] if names else k, v["n"], *_rsa_cells(v),
                           _fmt(v.get("cka_debiased", {}).get("cka")), _fmt(v.get("cka_debiased", {}).get("null_q95"), 2)]
                          for k, v in so["per_class"].items()]))
  f = io.load_npz(os.path.join(out, "rsa.npz"), finite=False)
  png = plots.save(plots.rsa_matrices({"r (classifier)": f["d_r"], "w (generator)": f["d_w"]}, f["cls"],
                                      f"dissimilarity ({so['metric']}) of held-out items, sorted by class"),
                   rep_dir, "rsa")
  h.append(plots.img_tag(png, "Representational dissimilarity matrices of r and w", "rsa"))
  if s.get("classwise"):
    h.append("<h3>Class-wise selectivity</h3><p>quantify's statistics recomputed on each class's start samples "
             "alone (with that class's share of the null). <i>Jaccard</i>: overlap of the selective (unit, "
             "concept) pairs with the pooled ones; <i>top agreement</i>: share of concepts whose top unit is the "
             "pooled top unit. Selective pairs per class: <code>population/classwise.csv</code>.</p>"
             + page.table(["class", "start samples per unit", "selective pairs (BH per class)",
                              "same on null directions", "Jaccard vs pooled", "top agreement"],
                             [[names[r["class"]] if names else r["class"], r["n_samples"], r["n_selective"],
                               _fmt(r.get("n_selective_null"), 3), _fmt(r["jaccard"], 2),
                               _fmt(r["top_agreement"], 2)] for r in s["classwise"]]))
  return "\n".join(h)


def summary(ctx) -> dict | None:
  """Headline numbers for report/summary.json."""
  if not os.path.exists(os.path.join(ctx.out_dir(NAME), "summary.json")):
    return None
  s = ctx.result(NAME).summary
  sup, so = s["superposition"], s["semantic_order"]
  r = so["pooled"]["rsa"]
  return {"fraction_superposed": sup["fraction_superposed"], "counts": sup["counts"],
          "fraction_superposed_null": sup.get("superposed_null", {}).get("fraction"),
          "cka_debiased": so["pooled"].get("cka_debiased", {}).get("cka"),
          "rsa_spearman": r["spearman"], "rsa_null_mean": r["null_mean"], "rsa_null_sd": r["null_sd"],
          "rsa_p": r["p"], "cka": so["pooled"]["cka"],
          "links": {k: {"heldout_r2": v["heldout_r2"], "rsa_vs_w": v["vs_w"]["rsa"]["spearman"]}
                    for k, v in so["links"].items()}}


# Values a run accepts (lis_jax/validate.py's rule kinds), checked before anything runs.
RULES = {
    "n_items": V.int_at_least(4), "metric": V.choice("correlation", "euclidean"),
    "n_perm": V.why(("int", 1, 100_000), "a p-value of 1e-5 needs no more; each permutation "
                    "recomputes every comparison"),
    "k": V.pos_int(), "n_boot": ("int", 1, 1_000_000),
}

STAGE = Stage(name=NAME, requires=("paired_data", "link", "quantify"), default_config=default_config, run=run,
              load=load, uses=("seed",), section=section, summary=summary, rules=RULES)
