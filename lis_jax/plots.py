"""The report's plots (matplotlib, Agg backend: no display needed).

Every function returns a matplotlib Figure; `save(fig, out_dir, name)` writes it as
`name.png` and `name.svg` beside the page and returns the PNG bytes, and `img_tag`
embeds those bytes in the page. Figures are at most FIG_WIDTH inches wide at DPI, so
they fit a 1280 px window (the page also scales images down to its width).
"""
from __future__ import annotations

import base64
import html
import io as _io
import os
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.layout_engine import PlaceHolderLayoutEngine  # noqa: E402
import numpy as np  # noqa: E402

FIG_WIDTH = 10.0  # inches: 1000 px at DPI
DPI = 100
PART_COLOURS = ("#e41a1c", "#377eb8", "#e6ab02", "#4daf4a", "#984ea3", "#00a0a0", "#ff7f00", "#888888")


def save(fig, out_dir: str, name: str) -> bytes:
  """Writes out_dir/name.png and name.svg (atomically) and closes the figure; returns the PNG bytes."""
  from lis_jax import io
  os.makedirs(out_dir, exist_ok=True)
  bbox = tight_bbox(fig)
  buf = _io.BytesIO()
  fig.savefig(buf, format="png", dpi=DPI, bbox_inches=bbox)
  png = buf.getvalue()
  svg = _io.StringIO()
  # No date and fixed element ids: the same figure gives the same file (resumed runs).
  with matplotlib.rc_context({"svg.hashsalt": "lis_jax"}):
    fig.savefig(svg, format="svg", bbox_inches=bbox, metadata={"Date": None})
  plt.close(fig)
  with io.atomic_file(os.path.join(out_dir, f"{name}.png"), "wb") as f:
    f.write(png)
  with io.atomic_file(os.path.join(out_dir, f"{name}.svg"), "w") as f:
    f.write(svg.getvalue())
  return png


def tight_bbox(fig):
  """The area `savefig(..., bbox_inches="tight")` saves (inches), found once for both files.

  As matplotlib's savefig does it for a PNG at DPI: one layout pass (a draw with rendering
  disabled), the artists' tight box, padded by rcParams['savefig.pad_inches']. savefig with
  "tight" repeats that pass per file, so the figure would be laid out twice more; given the
  box, each file is one draw. The PNG is byte-identical to the "tight" one; the SVG's size
  differs from its "tight" one by the two renderers' text metrics (measured on the demo's
  report: at most 0.52%, inside the box's padding: nothing is cut).

  A figure laid out by `fig.tight_layout()` keeps a do-nothing layout engine, for which
  savefig would also lay the figure out before each file: it is dropped here (the layout
  is done; nothing is added to the figure after this).
  """
  if isinstance(fig.get_layout_engine(), PlaceHolderLayoutEngine):
    fig.set_layout_engine(None)
  fig.set_dpi(DPI)
  fig.draw_without_rendering()
  return fig.get_tightbbox().padded(matplotlib.rcParams["savefig.pad_inches"])


def img_tag(png: bytes, alt: str, name: str = "") -> str:
  """<figure> with the PNG inline (the page stays one file) and links to the saved files."""
  uri = "data:image/png;base64," + base64.b64encode(png).decode()
  links = (f' <a href="{html.escape(name)}.png">png</a> <a href="{html.escape(name)}.svg">svg</a>'
           if name else "")
  return (f'<figure class="plot"><img src="{uri}" alt="{html.escape(alt)}">'
          f"<figcaption>{html.escape(alt)}{links}</figcaption></figure>")


def r2_histogram(r2: np.ndarray, title: str = "held-out R^2 per w dimension"):
  """Histogram of per-dimension R^2 [w_dim] with its mean and median marked."""
  fig, ax = plt.subplots(figsize=(6, 3))
  ax.hist(r2, bins=min(30, max(5, r2.size // 2)), color="#377eb8", edgecolor="white")
  ax.axvline(np.mean(r2), color="k", ls="--", label=f"mean {np.mean(r2):.3f}")
  ax.axvline(np.median(r2), color="#e41a1c", ls=":", label=f"median {np.median(r2):.3f}")
  ax.set_xlabel("R^2")
  ax.set_ylabel("w dimensions")
  ax.set_title(title)
  ax.legend(frameon=False)
  return fig


def cluster_order(x: np.ndarray) -> np.ndarray:
  """Row order of x [N, F] by average-linkage hierarchical clustering (correlation distance)."""
  from scipy.cluster import hierarchy
  if x.shape[0] < 3 or x.shape[1] < 2:   # one column: no correlation distance at all
    return np.arange(x.shape[0])
  z = np.nan_to_num(x)
  z = z + 1e-9 * np.arange(z.shape[1])  # constant rows have no correlation distance
  return hierarchy.leaves_list(hierarchy.linkage(z, "average", metric="correlation"))


def selectivity_heatmap(effect: np.ndarray, units: Sequence[int], concepts: Sequence[str],
                        selective: np.ndarray | None = None, max_units: int = 64):
  """Units x concepts heatmap of effect (mean change / null rms), rows and columns clustered.

  Args:
    effect: [U, C]; units: [U] ids; concepts: C names; selective: [U, C] bool (dots).
    max_units: the units with the largest max |effect| are shown (all if fewer).
  """
  eff = np.nan_to_num(np.asarray(effect, np.float64), posinf=0.0, neginf=0.0)
  keep = np.argsort(-np.abs(eff).max(1), kind="stable")[:max_units]
  eff = eff[keep]
  rows = cluster_order(eff)
  cols = cluster_order(eff.T)
  e = eff[rows][:, cols]
  lim = max(np.quantile(np.abs(e), 0.98), 1e-9)
  h = min(0.14 * e.shape[0] + 1.5, 12)
  fig, ax = plt.subplots(figsize=(FIG_WIDTH, h))
  im = ax.imshow(e, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
  if selective is not None:
    s = np.asarray(selective, bool)[keep][rows][:, cols]
    yy, xx = np.nonzero(s)
    ax.scatter(xx, yy, s=4, c="k", marker=".", label="selective")
  ax.set_xticks(range(len(cols)))
  ax.set_xticklabels([concepts[c] for c in cols], rotation=90, fontsize=6)
  ax.set_yticks(range(len(rows)))
  ax.set_yticklabels([str(units[keep[r]]) for r in rows], fontsize=5)
  ax.set_ylabel("unit")
  fig.colorbar(im, ax=ax, label="effect (mean change / null rms)", fraction=0.03)
  ax.set_title(f"selectivity of {len(rows)} units (clustered); dots: selective")
  return fig


def unit_bars(unit: int, parts: Sequence[str], metrics: Sequence[str], mean: np.ndarray,
              low: np.ndarray, high: np.ndarray, selective: np.ndarray):
  """Per-metric bar charts of one unit's part changes with their intervals.

  As the reference notebook's `visualize_unit`: one panel per metric, one bar per part
  (its mean change over the sweep), here with the bootstrap interval as an error bar and
  selective concepts outlined in black. mean, low, high, selective: [P, M].
  """
  m_n = len(metrics)
  cols = min(m_n, 7)
  rows = -(-m_n // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(FIG_WIDTH, 1.9 * rows), squeeze=False)
  x = np.arange(len(parts))
  for k in range(rows * cols):
    ax = axes.flat[k]
    if k >= m_n:
      ax.axis("off")
      continue
    mu = np.nan_to_num(mean[:, k])
    err = np.stack([np.nan_to_num(mu - low[:, k]), np.nan_to_num(high[:, k] - mu)]).clip(0)
    ax.bar(x, mu, yerr=err, color=[PART_COLOURS[p % len(PART_COLOURS)] for p in range(len(parts))],
           edgecolor=["k" if s else "none" for s in selective[:, k]], linewidth=1.5, capsize=2)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_title(metrics[k], fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels(parts, fontsize=6, rotation=45)
    ax.tick_params(labelsize=6)
  fig.suptitle(f"unit {unit}: change of each part's measures over the sweep (95% interval; "
               "outlined: selective)", fontsize=9)
  fig.tight_layout()
  return fig


def superposition_histogram(n_groups: np.ndarray, entropy: np.ndarray, labels: Sequence[str]):
  """Two panels: units per number of (part, family) groups, and the |effect| entropy by label."""
  fig, (a, b) = plt.subplots(1, 2, figsize=(FIG_WIDTH, 3))
  vals, counts = np.unique(n_groups, return_counts=True)
  a.bar(vals, counts, color="#377eb8")
  a.set_xlabel("selective (part, measure family) groups")
  a.set_ylabel("units")
  a.set_title("concepts per unit (0: none, 1: single-concept, 2+: superposed)", fontsize=9)
  labels = np.asarray(labels)
  for lab, col in (("single-concept", "#4daf4a"), ("superposed", "#e41a1c"), ("none", "#999999")):
    e = entropy[(labels == lab) & np.isfinite(entropy)]
    if e.size:
      b.hist(e, bins=15, range=(0, 1), alpha=0.6, color=col, label=f"{lab} ({e.size})")
  b.set_xlabel("normalised entropy of |effect| over concepts")
  b.set_ylabel("units")
  b.legend(frameon=False, fontsize=7)
  fig.tight_layout()
  return fig


def rsa_matrices(mats: Mapping[str, np.ndarray], cls: np.ndarray, title: str):
  """Dissimilarity matrices side by side, items sorted by class (class borders drawn)."""
  order = np.argsort(cls, kind="stable")
  n = len(mats)
  fig, axes = plt.subplots(1, n, figsize=(min(3.3 * n, FIG_WIDTH), 3.3), squeeze=False)
  edges = np.flatnonzero(np.diff(np.asarray(cls)[order])) + 0.5
  for ax, (name, d) in zip(axes[0], mats.items()):
    ax.imshow(d[order][:, order], cmap="viridis", interpolation="nearest")
    for e in edges:
      ax.axhline(e, color="w", lw=0.4)
      ax.axvline(e, color="w", lw=0.4)
    ax.set_title(name, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  return fig


def _panel_grid(n: int, per_row: int, row_height: float, pad: float = 0.0):
  """A figure of n panels, per_row to a row (the unused ones blanked): (fig, [n axes])."""
  cols = min(n, per_row)
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(FIG_WIDTH, row_height * rows + pad), squeeze=False)
  for ax in axes.flat[n:]:
    ax.axis("off")
  return fig, list(axes.flat[:n])


def boundary_bars(pair_labels: Sequence[str], tops: Sequence[Sequence[Mapping]], per_row: int = 4):
  """Per pair, horizontal bars of its top concepts' effects (mean change / null rms) with intervals.

  tops: per pair, dicts with part, metric, mean, ci_low, ci_high, selective and null_rms
  (bars are divided by it, so concepts of different units share an axis; 1 if absent).
  """
  fig, panels = _panel_grid(len(pair_labels), per_row, 1.6, pad=0.4)
  for k, ax in enumerate(panels):
    lst = tops[k]
    y = np.arange(len(lst))[::-1]
    scale = np.array([c["null_rms"] if c.get("null_rms") else 1.0 for c in lst])  # effect units
    mean = np.array([c["mean"] for c in lst]) / scale
    lo = np.array([c["ci_low"] for c in lst]) / scale
    hi = np.array([c["ci_high"] for c in lst]) / scale
    err = np.stack([np.nan_to_num(mean - lo), np.nan_to_num(hi - mean)]).clip(0)
    ax.barh(y, np.nan_to_num(mean), xerr=err, capsize=2,
            color=["#e41a1c" if c["selective"] else "#bbbbbb" for c in lst])
    ax.axvline(0, color="k", lw=0.5)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{c['part']} {c['metric']}" for c in lst], fontsize=6)
    ax.tick_params(axis="x", labelsize=6)
    ax.set_title(pair_labels[k], fontsize=8)
  fig.suptitle("change across the boundary in units of the random-path null (effect = mean / null rms, "
               "95% interval; red: selective)", fontsize=9)
  fig.tight_layout()
  return fig


def image_strips(rows: Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]]):
  """Rows of images with a caption per image: (row label, [(caption, [H, W, 3] in [0, 1]), ...])."""
  n_rows = len(rows)
  n_cols = max(len(r[1]) for r in rows)
  size = min(1.3, FIG_WIDTH / n_cols)
  fig, axes = plt.subplots(n_rows, n_cols, figsize=(size * n_cols, size * n_rows + 0.3), squeeze=False)
  for i, (label, items) in enumerate(rows):
    for j in range(n_cols):
      ax = axes[i, j]
      ax.set_xticks([])
      ax.set_yticks([])
      if j >= len(items):
        ax.axis("off")
        continue
      cap, img = items[j]
      ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
      ax.set_title(cap, fontsize=6)
      if j == 0:
        ax.set_ylabel(label, fontsize=6)
  fig.tight_layout()
  return fig


def motion_strips(rows: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
                  parts: Sequence[str], gain: float = 3.0):
  """Sweep strips with one arrow per part and step: the part's motion to the next image.

  rows: (label, images [T, H, W, 3] in [0, 1], centroids [T-1, P, 2], displacements
  [T-1, P, 2]) per sweep; (x, y) pixels of the image, as `analysis.motion.part_motion`
  gives them. Image t carries the arrows of the step t -> t+1, from each part's centroid
  along `gain` x its mean displacement (NaN: the part is absent, no arrow).
  """
  n = max(len(rows), 1)
  t, h, w = rows[0][1].shape[:3] if rows else (1, 1, 1)
  fig, axes = plt.subplots(n, 1, figsize=(min(FIG_WIDTH, 1.3 * t), 1.3 * n + 0.4), squeeze=False)
  for ax, (label, img, cen, disp) in zip(axes[:, 0], rows):
    ax.imshow(np.clip(np.concatenate(list(img), axis=1), 0, 1), interpolation="nearest")
    for step in range(cen.shape[0]):
      for p in range(cen.shape[1]):
        c, d = cen[step, p], disp[step, p] * gain
        if np.isfinite(c).all() and np.isfinite(d).all():
          ax.annotate("", xy=(c[0] + d[0] + step * w, c[1] + d[1]), xytext=(c[0] + step * w, c[1]),
                      arrowprops=dict(arrowstyle="->", color=PART_COLOURS[p % len(PART_COLOURS)], lw=1.2))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_ylabel(label, fontsize=7)
  if rows:
    handles = [plt.Line2D([], [], color=PART_COLOURS[p % len(PART_COLOURS)], lw=1.5) for p in range(len(parts))]
    fig.legend(handles, list(parts), loc="lower center", ncol=len(parts), fontsize=7, frameon=False)
  fig.suptitle(f"part motion along the sweep (arrows x{gain:g}: to the next image)", fontsize=8)
  fig.tight_layout(rect=(0, 0.06, 1, 1))
  return fig


def path_probabilities(t: np.ndarray, curves: Mapping[str, Mapping[str, np.ndarray]]):
  """p(target) and p(origin) along the counterfactual paths, one panel per domain.

  t: [T] (t = 1 is the counterfactual; beyond it the path continues); curves: {panel title:
  {'p_target': [B, T], 'p_origin': [B, T]}}: the median over paths and the 25-75% band.
  """
  n = len(curves)
  fig, axes = plt.subplots(1, n, figsize=(min(4.2 * n, FIG_WIDTH), 2.8), squeeze=False)
  for ax, (title, c) in zip(axes[0], curves.items()):
    for key, col, lab in (("p_target", "#e41a1c", "p(target)"), ("p_origin", "#377eb8", "p(origin)")):
      q = np.quantile(np.asarray(c[key]), [0.25, 0.5, 0.75], axis=0)
      ax.fill_between(t, q[0], q[2], color=col, alpha=0.2, lw=0)
      ax.plot(t, q[1], color=col, label=lab)
    ax.axvline(1.0, color="k", ls="--", lw=0.8)
    ax.set_xlabel("t (1: the counterfactual)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(frameon=False, fontsize=7)
  axes[0, 0].set_ylabel("softmax probability")
  fig.tight_layout()
  return fig


def path_trajectories(panels: Sequence[Mapping]):
  """Paths in the first two PCs of their pair's classes (pc_traj_counterfactual.py), r and w.

  panels: dicts with title, cloud [N, 2], cloud_origin [N] bool (origin-class points; the
  rest are the target's), lines {label: [S, T, 2]} (one line per search; its t = 1 point
  marked with an x), xlabel, ylabel.
  """
  fig, axes = _panel_grid(len(panels), 4, 2.6)
  styles = (("#000000", "-"), ("#e6ab02", "--"), ("#4daf4a", ":"))
  for k, (ax, p) in enumerate(zip(axes, panels)):
    cloud, is_o = np.asarray(p["cloud"]), np.asarray(p["cloud_origin"], bool)
    ax.scatter(*cloud[is_o].T, s=3, c="#377eb8", alpha=0.3, lw=0, label="origin class")
    ax.scatter(*cloud[~is_o].T, s=3, c="#e41a1c", alpha=0.3, lw=0, label="target class")
    for (lab, lines), (col, ls) in zip(p["lines"].items(), styles):
      for j, line in enumerate(np.asarray(lines)):
        ax.plot(line[:, 0], line[:, 1], color=col, ls=ls, lw=1, label=lab if j == 0 else None)
        ax.plot(*line[0], "o", color=col, ms=3)
        if "one" in p:
          ax.plot(*line[p["one"]], "x", color=col, ms=5)
    ax.set_title(p["title"], fontsize=8)
    ax.set_xlabel(p.get("xlabel", "PC1"), fontsize=7)
    ax.set_ylabel(p.get("ylabel", "PC2"), fontsize=7)
    ax.tick_params(labelsize=6)
    if k == 0:
      ax.legend(frameon=False, fontsize=6)
  fig.tight_layout()
  return fig


def relevant_units(units: Sequence[int], counts: Sequence[int], expected: float, recurring: Sequence[bool],
                   title: str):
  """Bars: how often each unit is among a search's most shifted (transition_relevant_units.py),
  the chance level (uniformly random units) as a line; recurring units in red."""
  fig, ax = plt.subplots(figsize=(FIG_WIDTH, 2.6))
  x = np.arange(len(units))
  ax.bar(x, counts, color=["#e41a1c" if s else "#999999" for s in recurring])
  ax.axhline(expected, color="k", ls="--", lw=0.8, label=f"chance ({expected:.2g})")
  ax.set_xticks(x)
  ax.set_xticklabels([str(u) for u in units], fontsize=6, rotation=90)
  ax.set_xlabel("unit")
  ax.set_ylabel("searches")
  ax.set_title(title, fontsize=9)
  ax.legend(frameon=False, fontsize=7)
  fig.tight_layout()
  return fig


def transfer_rates(labels: Sequence[str], rate: np.ndarray, low: np.ndarray, high: np.ndarray,
                   rate_null: np.ndarray, null_low: np.ndarray, null_high: np.ndarray, called: np.ndarray):
  """Per pair, the transferred mean shift's success rate (interval) beside its null's."""
  n = len(labels)
  fig, ax = plt.subplots(figsize=(FIG_WIDTH, 2.8))
  x = np.arange(n)
  for xs, r, lo, hi, col, lab in ((x - 0.15, rate, low, high, "#e41a1c", "mean shift"),
                                  (x + 0.15, rate_null, null_low, null_high, "#999999", "random shift, same norm")):
    r = np.asarray(r, np.float64)
    err = np.stack([np.nan_to_num(r - lo), np.nan_to_num(hi - r)]).clip(0)
    ax.errorbar(xs, r, yerr=err, fmt="o", ms=3, color=col, capsize=1.5, lw=0.8, label=lab)
  for i in np.flatnonzero(np.asarray(called, bool)):
    ax.text(i, 1.04, "*", ha="center", fontsize=8)
  ax.set_xticks(x)
  ax.set_xticklabels(labels, fontsize=5 if n > 24 else 7, rotation=90)
  ax.set_ylim(-0.02, 1.1)
  ax.set_ylabel("classified as target")
  ax.legend(frameon=False, fontsize=7, ncol=2, loc="lower left", bbox_to_anchor=(0.0, 1.04))
  fig.tight_layout()
  return fig
