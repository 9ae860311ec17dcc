"""The 'report' stage: one readable HTML page of what the pipeline found.

    python -m lis_jax.main --config=configs/demo.py --workdir=DIR   # ends with this stage
    open DIR/report/index.html

Writes `DIR/report/`:
  index.html          one self-contained page (images inline as base64 PNG)
  summary.json        the headline numbers (link R^2 / MSE, counterfactual success rate,
                      the unit -> factor table) for scripts and tests
  unit_factors.csv    per swept unit: image change over its sweep and, when the
                      generator knows its own truth (the built-in 'shapes' world), the
                      ground-truth factor its sweep moves most
  sweeps.png, counterfactuals.png   the figures of the page, also as files;
  overview.png        both side by side (the README's picture)

The page is a list of sections. A section is a function `(config, workdir) -> html or
None` (None: nothing to show, e.g. its stage did not run), registered in `SECTIONS` by
name as "module:function" (add ONE entry to add a section; re-read this file before
editing). `config.report.sections` picks and orders them ('all': every registered one).
Sections can share the per-unit analysis through `unit_table(config, workdir)`.
"""
from __future__ import annotations

import base64
import csv
import html
import io as _io
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from lis_jax import io, pipeline

# Section name -> "module:function(config, workdir) -> str | None", in page order.
SECTIONS: dict[str, str] = {
    "link": "lis_jax.report:link_section",
    "sweeps": "lis_jax.report:sweep_section",
    "unit_factors": "lis_jax.report:unit_factor_section",
    "factor_readout": "lis_jax.report:factor_readout_section",
    "counterfactuals": "lis_jax.report:counterfactual_section",
    "quantify": "lis_jax.quantify.stage:report_section",  # part measures, unit cards, precision@k
    "boundary": "lis_jax.stages.boundary:report_section",  # what changes across the decision boundary
    "population": "lis_jax.stages.population:report_section",  # superposition, semantic order, class-wise
}

REPORT_DIR = "report"
UNIT_TABLE = "unit_factors.csv"
FIGURES = ("sweeps.png", "counterfactuals.png", "overview.png")


def default_config() -> ml_collections.ConfigDict:
  """The report's settings, used when the pipeline config has no `report` section."""
  c = ml_collections.ConfigDict()
  c.sections = "all"  # 'all' or a comma list of SECTIONS names, in page order
  c.n_top = 5  # sweep strips of the units whose sweeps change the image most
  c.n_bottom = 3  # ... and of those that change it least
  c.strip_samples = 2  # start samples shown per unit
  c.n_counterfactuals = 8  # before/after pairs shown (successes first)
  c.table_rows = 20  # unit rows shown before the "all units" fold
  c.image_scale = 2  # nearest-neighbour upscaling of the small images on the page
  c.batch_size = 256  # images per synthesis call when rendering
  c.change_samples = 8  # start samples per unit rendered to measure its image change
  return c


def report_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The report settings: `default_config()` updated with `config.report`."""
  return pipeline.section_config(config, "report", default_config())


# ----------------------------------------------------------------------------- stage


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Stage entry: writes `workdir/report/` from whatever earlier stages wrote."""
  c = report_config(config)
  names = list(SECTIONS) if c.sections == "all" else [s.strip() for s in c.sections.split(",") if s.strip()]
  unknown = [n for n in names if n not in SECTIONS]
  if unknown:
    raise pipeline.PipelineError(f"report.sections: unknown {unknown}; known: {', '.join(SECTIONS)}")
  out_dir = pipeline.stage_dir(workdir, REPORT_DIR)
  os.makedirs(out_dir, exist_ok=True)
  for name in FIGURES:  # Sections rewrite theirs; none may survive from an earlier run.
    if os.path.exists(os.path.join(out_dir, name)):
      os.remove(os.path.join(out_dir, name))
  parts = []
  for name in tqdm(names, unit="section", desc="report"):
    part = pipeline.resolve(SECTIONS[name])(config, workdir)
    if part:
      parts.append(f'<section id="{html.escape(name)}">\n{part}\n</section>')
  if not parts:
    raise pipeline.PipelineError("nothing to report: run the link, sweep or counterfactual stage first")
  page = _PAGE.format(title="Linking in Style: report", workdir=html.escape(os.path.abspath(workdir)),
                      toc=toc(parts), body="\n".join(parts))
  with io.atomic_file(os.path.join(out_dir, "index.html"), "w") as f:
    f.write(page)
  io.write_json(os.path.join(out_dir, "summary.json"), summary(config, workdir))
  _write_overview(out_dir)
  print(f"[report] wrote {os.path.join(out_dir, 'index.html')}")


def toc(sections: list[str]) -> str:
  """A table of contents: one link per section (its id) titled by the section's first <h2>."""
  import re
  items = []
  for sec in sections:
    m_id = re.search(r'<section id="([^"]+)"', sec)
    m_h2 = re.search(r"<h2>(.*?)</h2>", sec, re.S)
    if m_id:
      title = re.sub(r"<[^>]+>", "", m_h2.group(1)) if m_h2 else m_id.group(1)
      items.append(f'<li><a href="#{m_id.group(1)}">{title}</a></li>')
  return f'<nav class="toc"><b>Contents</b><ul>{"".join(items)}</ul></nav>' if items else ""


def _write_overview(out_dir: str) -> None:
  """overview.png: the sweep strips and the counterfactual pairs side by side (for READMEs)."""
  figs = [(title, os.path.join(out_dir, name)) for title, name in
          (("unit sweeps (most / least effective)", "sweeps.png"),
           ("counterfactuals: before | after", "counterfactuals.png"))]
  figs = [(t, np.asarray(Image.open(p).convert("RGB"))) for t, p in figs if os.path.exists(p)]
  if not figs:
    return
  head, gap = 18, 16
  h = max(im.shape[0] for _, im in figs) + head
  canvas = Image.new("RGB", (sum(im.shape[1] for _, im in figs) + gap * (len(figs) - 1), h), "white")
  x = 0
  for title, im in figs:
    canvas.paste(Image.fromarray(im), (x, head))
    ImageDraw.Draw(canvas).text((x + 4, 3), title, fill="black")
    x += im.shape[1] + gap
  _save_png(os.path.join(out_dir, "overview.png"), np.asarray(canvas, np.float32) / 255)


def summary(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The headline numbers: link metrics, counterfactual summary, the unit -> factor table."""
  out: dict[str, Any] = {}
  metrics = os.path.join(workdir, "link", "metrics.json")
  if os.path.exists(metrics):
    m = io.read_json(metrics)
    out["link"] = {"kind": m.get("kind"), "heldout_r2": m["test"]["r2"], "heldout_mse": m["test"]["mse"],
                   "n_train": m.get("n_train"), "n_test": m.get("n_test")}
    if "cycle" in m:
      out["link"]["cycle_corr"] = m["cycle"]["corr_per_sample_mean"]
  cf = os.path.join(workdir, "counterfactual", "summary.json")
  if os.path.exists(cf):
    out["counterfactual"] = io.read_json(cf)
  table = unit_table(config, workdir)
  if table:
    out["units"] = table
  readout = factor_readout(config, workdir)
  if readout:
    out["factor_readout_r2"] = readout
  return out


# ----------------------------------------------------------------------------- per-unit analysis


def unit_table(config: ml_collections.ConfigDict, workdir: str) -> list[dict] | None:
  """Per swept unit: how much its sweep changes the image, and which true factor it moves.

  Computed once from the sweep blocks and cached in `report/unit_factors.csv` (redone
  when the sweep's index.csv is newer). Rows sorted by `image_change`, largest first.

  Each row: unit; image_change (mean |last - first step| over pixels and up to
  `report.change_samples` start samples, image in [0, 1]); r_follow (mean change of the unit's own re-classified
  activation per unit of set value: 1 = the image carries the unit's change fully);
  and when the generator has `decode_factors` (the built-in world): top_factor,
  top_delta (its mean signed change first -> last step, as a fraction of the factor's
  range; hues circular), second_factor, second_delta, class_change (mean total
  variation between the class weights of the first and last step).
  None if there is no sweep.
  """
  sweep_index = os.path.join(workdir, "sweep", "index.csv")
  if not os.path.exists(sweep_index):
    return None
  path = os.path.join(workdir, REPORT_DIR, UNIT_TABLE)
  if os.path.exists(path) and os.path.getmtime(path) >= os.path.getmtime(sweep_index):
    with open(path) as f:
      return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]
  rows = _analyse_units(config, workdir)
  with io.atomic_file(path, "w") as f:
    wr = csv.DictWriter(f, fieldnames=list(rows[0]))
    wr.writeheader()
    wr.writerows(rows)
  return rows


def _parse(v: str) -> Any:
  for t in (int, float):
    try:
      return t(v)
    except ValueError:
      pass
  return v


def _analyse_units(config, workdir) -> list[dict]:
  from lis_jax import sweeps
  G, _ = pipeline.load_models(config, workdir)
  c = report_config(config)
  truth = hasattr(G, "decode_factors")
  rows = []
  for blk in sweeps.iter_blocks(workdir):
    w = blk["w"]  # [U, S, T, w_dim]
    u_n, s_n, t_n, _ = w.shape
    some = _spread(blk["cls"], c.change_samples)  # rendering all start samples can be costly
    ends = w[:, some][:, :, [0, -1]].reshape(-1, w.shape[-1])  # [U * S' * 2, w_dim]
    img = render(G, ends, c.batch_size).reshape(u_n, some.size, 2, -1)
    change = np.abs(img[:, :, 1] - img[:, :, 0]).mean((1, 2)) / 2  # [U], image in [0, 1]
    dv = blk["values"][:, -1] - blk["values"][:, 0]  # [U]
    r_follow = ((blk["r_prime_unit"][:, :, -1] - blk["r_prime_unit"][:, :, 0]).mean(1)
                / np.where(dv == 0, 1, dv)) if "r_prime_unit" in blk else np.full(u_n, np.nan)
    if truth:
      deltas, names, class_tv = factor_deltas(G, w)  # [U, F], F names, [U]
    for i, unit in enumerate(blk["units"]):
      row = {"unit": int(unit), "image_change": float(change[i]), "r_follow": float(r_follow[i])}
      if truth:
        order = np.argsort(-np.abs(deltas[i]))
        row.update(top_factor=names[order[0]], top_delta=float(deltas[i, order[0]]),
                   second_factor=names[order[1]], second_delta=float(deltas[i, order[1]]),
                   class_change=float(class_tv[i]))
      rows.append(row)
  rows.sort(key=lambda r: -r["image_change"])
  return rows


def factor_deltas(G, w: np.ndarray):
  """Mean change of each true factor first -> last step, per unit, as a fraction of its range."""
  u_n, s_n, t_n, d = w.shape
  ends = jnp.asarray(w[:, :, [0, -1]].reshape(-1, d))
  factors, cw = _decode(G, pipeline.broadcast_ws(ends, G.num_ws))
  names = list(factors)
  ranges = getattr(G, "factor_ranges", {})
  circular = set(getattr(G, "circular_factors", ()))
  out = []
  for n in names:
    f = np.asarray(factors[n]).reshape(u_n, s_n, 2)
    delta = f[..., 1] - f[..., 0]
    lo, hi = ranges.get(n, (0.0, 1.0))
    if n in circular:
      delta = (delta - lo + (hi - lo) / 2) % (hi - lo) - (hi - lo) / 2
    out.append((delta / (hi - lo)).mean(1))
  cw = np.asarray(cw).reshape(u_n, s_n, 2, -1)
  class_tv = 0.5 * np.abs(cw[:, :, 1] - cw[:, :, 0]).sum(-1).mean(1)
  return np.stack(out, -1), names, class_tv


@jax.jit
def _decode(G, ws):
  return G.decode_factors(ws)


@jax.jit
def _synth(G, w):
  return G.synthesis(pipeline.broadcast_ws(w, G.num_ws))


def render(G, w: np.ndarray, batch_size: int = 256) -> np.ndarray:
  """w [N, w_dim] -> images [N, H, W, 3] float32 in [0, 1] (one w broadcast over the ws)."""
  out = []
  for s in range(0, w.shape[0], batch_size):
    chunk = w[s:s + batch_size]
    pad = batch_size - chunk.shape[0] if w.shape[0] > batch_size else 0
    x = np.asarray(_synth(G, jnp.asarray(np.pad(chunk, ((0, pad), (0, 0))))))[:chunk.shape[0]]
    out.append(np.clip((x + 1) / 2, 0, 1))
  return np.concatenate(out)


# ----------------------------------------------------------------------------- sections


def link_section(config, workdir) -> str | None:
  """Held-out fit of the link w = link(r): R^2, MSE, cycle consistency."""
  path = os.path.join(workdir, "link", "metrics.json")
  if not os.path.exists(path):
    return None
  m = io.read_json(path)
  t, tr = m["test"], m["train"]
  rows = [("held-out R^2 (mean over w dims)", f"{t['r2']:.4f}"),
          ("held-out R^2 (variance weighted)", f"{t.get('r2_variance_weighted', float('nan')):.4f}"),
          ("held-out MSE", f"{t['mse']:.5f}"), ("train R^2", f"{tr['r2']:.4f}"),
          ("train MSE", f"{tr['mse']:.5f}"),
          ("pairs (train / held-out)", f"{m.get('n_train')} / {m.get('n_test')}")]
  if "cycle" in m:
    cyc = m["cycle"]
    rows.append(("cycle r -> w -> image -> r': mean correlation per sample",
                 f"{cyc['corr_per_sample_mean']:.4f} (n={cyc['n']})"))
  r2 = np.asarray(t.get("r2_per_dim", []))
  extra = (f"<p>Per w dimension, held-out R^2 ranges from {r2.min():.3f} to {r2.max():.3f} "
           f"(median {np.median(r2):.3f}).</p>" if r2.size else "")
  if r2.size:
    from lis_jax import plots
    png = plots.save(plots.r2_histogram(r2), os.path.join(workdir, REPORT_DIR), "link_r2")
    extra += plots.img_tag(png, "Held-out R^2 of each w dimension", "link_r2")
  return (f"<h2>Linking network ({html.escape(str(m.get('kind')))})</h2>"
          f"<p>w = link(r), fitted on the paired data, evaluated on held-out pairs.</p>"
          + _table(["metric", "value"], rows) + extra)


def sweep_section(config, workdir) -> str | None:
  """Strips of the units whose sweeps change the image most and least."""
  table = unit_table(config, workdir)
  if not table:
    return None
  from lis_jax import sweeps
  c = report_config(config)
  G, _ = pipeline.load_models(config, workdir)
  top = table[:c.n_top]
  bottom = table[-c.n_bottom:] if len(table) > c.n_top else []
  wanted = {r["unit"]: r for r in top + bottom}
  strips: dict[int, np.ndarray] = {}
  values: dict[int, np.ndarray] = {}
  for blk in sweeps.iter_blocks(workdir):
    for i, u in enumerate(blk["units"]):
      if int(u) in wanted:
        w = blk["w"][i, _spread(blk["cls"], c.strip_samples)]  # [S', T, w_dim]
        img = render(G, w.reshape(-1, w.shape[-1]), c.batch_size).reshape(*w.shape[:2], *_hw3(G))
        strips[int(u)] = np.concatenate([np.concatenate(list(s), 1) for s in img], 0)  # [S'H, TW, 3]
        values[int(u)] = blk["values"][i]
  def block(rows, title):
    if not rows:
      return ""
    items = []
    for r in rows:
      u = r["unit"]
      label = f"unit {u}: image change {r['image_change']:.3f}"
      if "top_factor" in r:
        label += f"; moves {r['top_factor']} ({r['top_delta']:+.2f} of range)"
      v = values[u]
      items.append(f"<figure><img src='{_png_uri(strips[u], c.image_scale)}'><figcaption>"
                   f"{html.escape(label)}; r_{u} from {v[0]:.2f} to {v[-1]:.2f} "
                   f"(left to right), rows: start samples</figcaption></figure>")
    return f"<h3>{title}</h3>" + "\n".join(items)
  fig = _labelled_grid([(f"unit {r['unit']}", strips[r["unit"]]) for r in top + bottom])
  _save_png(os.path.join(workdir, REPORT_DIR, "sweeps.png"), fig)
  n_units = len(table)
  return (f"<h2>Unit sweeps</h2><p>{n_units} units swept: each unit's activation is set to "
          f"{len(next(iter(values.values())))} values over its observed range, mapped to w by the "
          f"link and rendered. Units are ranked by how much their sweep changes the image.</p>"
          + block(top, f"Most effective {len(top)} units") + block(bottom, f"Least effective {len(bottom)} units"))


def unit_factor_section(config, workdir) -> str | None:
  """Unit -> ground-truth factor table (only for generators that know their factors)."""
  table = unit_table(config, workdir)
  if not table or "top_factor" not in table[0]:
    return None
  c = report_config(config)
  cols = ["unit", "image change", "moves most", "change (of range)", "next", "change",
          "class change", "r' follows"]
  def cells(r):
    return (r["unit"], f"{r['image_change']:.3f}", r["top_factor"], f"{r['top_delta']:+.3f}",
            r["second_factor"], f"{r['second_delta']:+.3f}", f"{r['class_change']:.3f}",
            f"{r['r_follow']:.2f}")
  shown = _table(cols, [cells(r) for r in table[:c.table_rows]])
  rest = table[c.table_rows:]
  fold = (f"<details><summary>all {len(table)} units</summary>"
          + _table(cols, [cells(r) for r in rest]) + "</details>") if rest else ""
  # Which unit moves each factor most: a check of the method against the truth.
  best: dict[str, tuple[int, float]] = {}
  for r in table:
    f, d = r["top_factor"], r["top_delta"]
    if f not in best or abs(d) > abs(best[f][1]):
      best[f] = (r["unit"], d)
  counts: dict[str, int] = {}
  for r in table:
    counts[r["top_factor"]] = counts.get(r["top_factor"], 0) + 1
  per_factor = _table(["factor", "units moving it most", "strongest unit", "its change"],
                      [(f, counts[f], best[f][0], f"{best[f][1]:+.3f}")
                       for f in sorted(best, key=lambda f: -abs(best[f][1]))])
  return ("<h2>Units and the ground truth</h2><p>For each swept unit, the known factor of the "
          "world that its sweep moves most (first vs last step, decoded from the sweep's w by "
          "the generator's own truth; change as a fraction of the factor's range, mean over "
          "start samples). <i>class change</i>: how far the object's class (its shape "
          "template) moves (total variation, 0..1). <i>r' follows</i>: change of the unit's own "
          "activation when the generated images are re-classified, per unit of set value.</p>"
          + shown + fold + "<h3>Per factor</h3>" + per_factor)


def factor_readout(config, workdir) -> dict[str, float] | None:
  """Held-out R^2 of a linear read-out of each true factor from r (the link's split).

  Says which factors the classifier's representation carries at all: those it does not
  carry cannot be reached by the link either. None without paired data, a link split
  or a generator that knows its factors.
  """
  split = os.path.join(workdir, "link", "split.npz")
  if not os.path.exists(split):
    return None
  G, _ = pipeline.load_models(config, workdir)
  if not hasattr(G, "decode_factors"):
    return None
  from lis_jax import paired_data
  data = paired_data.load(workdir)
  with np.load(split) as f:
    train, test = f["train"], f["test"]
  factors, _ = _decode(G, pipeline.broadcast_ws(jnp.asarray(data["w"]), G.num_ws))
  y = np.stack([np.asarray(v, np.float64) for v in factors.values()], -1)  # [N, F]
  x = np.concatenate([data["r"].astype(np.float64), np.ones((len(y), 1))], -1)
  coef = np.linalg.lstsq(x[train], y[train], rcond=None)[0]
  res = ((y[test] - x[test] @ coef) ** 2).sum(0)
  tot = ((y[test] - y[test].mean(0)) ** 2).sum(0)
  return {n: float(1 - res[i] / max(tot[i], 1e-12)) for i, n in enumerate(factors)}


def factor_readout_section(config, workdir) -> str | None:
  """Which true factors the representation r carries (linear read-out, held-out R^2)."""
  r2 = factor_readout(config, workdir)
  if r2 is None:
    return None
  rows = [(n, f"{v:.3f}") for n, v in sorted(r2.items(), key=lambda kv: -kv[1])]
  return ("<h2>What r carries</h2><p>Held-out R^2 of a linear read-out of each true factor "
          "from the classifier's representation r (least squares on the link's train pairs, "
          "scored on its held-out pairs). Factors that r does not carry cannot be "
          "reached through the link, which bounds its R^2.</p>" + _table(["factor", "R^2"], rows))


def counterfactual_section(config, workdir) -> str | None:
  """Success rate of the counterfactual searches and before/after pairs."""
  path = os.path.join(workdir, "counterfactual", "results.npz")
  if not os.path.exists(path):
    return None
  c = report_config(config)
  G, _ = pipeline.load_models(config, workdir)
  names = getattr(G, "class_names", None)
  name = (lambda k: f"{names[k]} ({k})") if names else str
  with np.load(path) as f:
    res = {k: f[k] for k in f.files}
  ok = res["success"].astype(bool)
  n_fail = min(int((~ok).sum()), max(c.n_counterfactuals // 4, 1)) if ok.any() else c.n_counterfactuals
  # One search per origin class in turn, each origin's nearest-numbered target first, so
  # the pairs shown cover many origins and targets.
  offset = (res["target"] - res["origin"]) % (int(res["target"].max()) + 1)
  by_offset = np.lexsort((res["origin"], offset))
  pick = lambda mask: _round_robin(by_offset[mask[by_offset]], res["origin"])
  show = np.concatenate([pick(ok)[:c.n_counterfactuals - n_fail], pick(~ok)[:n_fail]])
  before = render(G, res["w_before"][show], c.batch_size)
  after = render(G, res["w_after"][show], c.batch_size)
  rows, fig = [], []
  for j, i in enumerate(show):
    o, t = int(res["origin"][i]), int(res["target"][i])
    pair = np.concatenate([before[j], after[j]], 1)
    fig.append((f"{names[o] if names else o} > {names[t] if names else t}"
                + ("" if ok[i] else "\n(failed)"), pair))
    rows.append((f"<img src='{_png_uri(pair, c.image_scale)}'>", html.escape(name(o)),
                 html.escape(name(t)), f"{res['probs_before'][i, o]:.3f}",
                 f"{res['probs_after'][i, t]:.3f}", int(res["steps"][i]),
                 "yes" if ok[i] else "no"))
  _save_png(os.path.join(workdir, REPORT_DIR, "counterfactuals.png"), _labelled_grid(fig))
  steps = res["steps"][ok]
  stats = (f"median {np.median(steps):.0f} steps to success" if ok.any() else "no success")
  return ("<h2>Counterfactuals</h2>"
          f"<p><b>Success rate: {ok.mean():.3f}</b> ({int(ok.sum())} of {ok.size} searches; {stats}). "
          "A search shifts the representation r until the classifier, applied to the image "
          "generated from link(relu(r - shift)), predicts the target class.</p>"
          + _table(["before | after", "origin", "target", "p(origin) before", "p(target) after",
                    "steps", "success"], rows, escape=False))


def _spread(cls: np.ndarray, n: int) -> np.ndarray:
  """Indices of up to n start samples, of as many different classes as possible."""
  first = [int(np.flatnonzero(cls == k)[0]) for k in np.unique(cls)]
  pick = [first[int(i)] for i in np.linspace(0, len(first) - 1, min(n, len(first)))]
  rest = [i for i in range(cls.size) if i not in pick]
  return np.asarray(sorted(pick + rest[:max(0, n - len(pick))]), np.int64)


def _round_robin(idx: np.ndarray, key: np.ndarray) -> np.ndarray:
  """idx reordered so that consecutive entries cycle through the values of key[idx] (order kept within a value)."""
  groups = [list(idx[key[idx] == k]) for k in np.unique(key[idx])]
  out = []
  while any(groups):
    out += [g.pop(0) for g in groups if g]
  return np.asarray(out, np.int64)


# ----------------------------------------------------------------------------- html helpers


def _hw3(G) -> tuple[int, int, int]:
  return (G.resolution, G.resolution, 3)


def _to_uint8(img: np.ndarray, scale: int = 1) -> np.ndarray:
  x = np.asarray(np.clip(img, 0, 1) * 255 + 0.5, np.uint8)
  return x.repeat(scale, 0).repeat(scale, 1) if scale > 1 else x


def _png_bytes(img: np.ndarray, scale: int = 1) -> bytes:
  buf = _io.BytesIO()
  Image.fromarray(_to_uint8(img, scale)).save(buf, "PNG")
  return buf.getvalue()


def _png_uri(img: np.ndarray, scale: int = 1) -> str:
  return "data:image/png;base64," + base64.b64encode(_png_bytes(img, scale)).decode()


def _save_png(path: str, img: np.ndarray) -> None:
  with io.atomic_file(path, "wb") as f:
    f.write(_png_bytes(img))


def _labelled_grid(items: list[tuple[str, np.ndarray]], label_w: int = 110, pad: int = 4) -> np.ndarray:
  """Stacks images vertically with a text label on the left: [sum H, label_w + max W, 3] in [0, 1]."""
  width = max(im.shape[1] for _, im in items)
  rows = []
  for label, im in items:
    canvas = Image.new("RGB", (label_w + width, im.shape[0] + pad), "white")
    canvas.paste(Image.fromarray(_to_uint8(im)), (label_w, 0))
    ImageDraw.Draw(canvas).text((4, im.shape[0] // 2 - 6), label, fill="black")
    rows.append(np.asarray(canvas, np.float32) / 255)
  return np.concatenate(rows, 0)


def _table(cols, rows, escape: bool = True) -> str:
  esc = html.escape if escape else (lambda s: s)
  head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
  body = "".join("<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in r) + "</tr>" for r in rows)
  return f"<table><tr>{head}</tr>{body}</table>"


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0; display: block; max-width: 100%; overflow-x: auto; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; font-size: 0.9em; }}
img {{ image-rendering: pixelated; max-width: 100%; height: auto; }}
figure.plot img {{ image-rendering: auto; }}
figure {{ margin: 0.6em 0; max-width: 100%; }} figcaption {{ font-size: 0.85em; color: #555; }}
section {{ border-top: 2px solid #ddd; padding-top: 0.5em; }}
.card {{ max-width: 100%; overflow-x: auto; }}
nav.toc {{ background: #f6f6f6; padding: 0.4em 1em; }} nav.toc li {{ margin: 0.15em 0; }}
</style></head>
<body><h1>{title}</h1><p>workdir: <code>{workdir}</code></p>
{toc}
{body}
</body></html>
"""
