"""Stage `link`: fits the linking network w = link(r) on the paired data.

A held-out split of the pairs gives MSE / R^2; `cycle_samples` held-out r go round
r -> w -> image -> r'. On a generator that knows its factors (`GroundTruthWorld`), a
linear read-out of each true factor from r says which factors r carries at all.
The fitting library is `lis_jax.linking`; outputs: WORKSPACE.md, `link/`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lis_jax import page
from lis_jax import io
from lis_jax import linking
from lis_jax import errors
from lis_jax.generators.base import GroundTruthWorld
from lis_jax import validate as V
from lis_jax.analysis.readout import decode_factors, readout_r2
from lis_jax.stages.base import Stage

NAME = "link"


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.kind = "ols"  # ols | ridge | elasticnet | mlp
  c.alpha = 1.0  # ridge / elasticnet penalty (scikit-learn's meaning)
  c.l1_ratio = 0.5  # elasticnet L1 share
  c.float64 = False  # solve the linear fit in float64
  c.solver = "lstsq"  # ols: lstsq (SVD) | cholesky (normal equations + jitter)
  c.jitter = 1e-6  # cholesky diagonal, relative to the mean eigenvalue
  c.max_iter = 5000  # elasticnet FISTA iterations cap
  c.tol = 1e-7  # elasticnet relative coefficient change to stop at
  c.hidden = (1024,)  # mlp hidden widths
  c.epochs = 30  # mlp
  c.batch_size = 256  # mlp
  c.learning_rate = 1e-3  # mlp Adam
  c.holdout_fraction = 0.1  # held-out pairs for MSE / R^2
  c.cycle_samples = 256  # held-out samples for r -> w -> image -> r' (0: skip)
  return c


# Values a run accepts (lis_jax/validate.py's rule kinds), checked before anything runs.
RULES = {
    "alpha": V.nonneg_float(), "l1_ratio": V.unit_closed(), "jitter": V.nonneg_float(),
    "max_iter": V.pos_int(), "tol": V.pos_float(), "epochs": V.pos_int(), "batch_size": V.pos_int(),
    "learning_rate": V.pos_float(), "holdout_fraction": V.unit_open(),
    "cycle_samples": V.nonneg_int(),
}


@dataclasses.dataclass(frozen=True)
class LinkResult:
  """The fitted link and its evaluation.

  link: the `linking.Link` (a pytree). metrics: metrics.json (test/train regression
  metrics, optional cycle). train, test: [N_train], [N_test] paired-data rows.
  factor_readout: {factor: held-out R^2 of a linear read-out from r}, or None when the
  generator does not know its factors.
  """
  link: linking.Link
  metrics: dict
  train: np.ndarray
  test: np.ndarray
  factor_readout: dict | None


def load(workdir: str) -> LinkResult:
  out_dir = os.path.join(workdir, NAME)
  metrics = io.read_json_checked(errors.require(os.path.join(out_dir, "metrics.json"), NAME))
  f = io.load_npz(os.path.join(out_dir, "split.npz"), keys=("train", "test"))
  train, test = f["train"], f["test"]
  readout = os.path.join(out_dir, "factor_readout.json")
  return LinkResult(link=load_model(out_dir), metrics=metrics, train=train, test=test,
                    factor_readout=io.read_json(readout) if os.path.exists(readout) else None)


def load_model(out_dir: str) -> linking.Link:
  """The fitted link, checked against its params_sha256; io.CorruptFileError if it is
  missing, unrestorable or changed (the runner then runs this stage again to refit it)."""
  model = os.path.join(out_dir, "model")
  try:
    return linking.load(model, verify=True)
  except io.CheckpointError as e:
    raise io.CorruptFileError(model, " ".join(str(e).split())[:300]) from None


def _complete(out_dir: str) -> bool:
  """metrics.json, split.npz and a model that passes its checksum are all there."""
  if not os.path.exists(os.path.join(out_dir, "metrics.json")):
    return False
  try:
    io.load_npz(os.path.join(out_dir, "split.npz"))
    load_model(out_dir)
    return True
  except io.CorruptFileError as e:
    print(f"[{NAME}] {e}; recomputing the link", flush=True)
    return False


def split(n: int, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(train, test) sorted row ids: a seeded permutation, its first part held out."""
  perm = np.random.default_rng(seed).permutation(n)
  n_test = int(round(n * holdout_fraction))
  if n - n_test < 2 or n_test < 1:
    raise errors.PipelineError(f"{n} paired samples cannot be split with holdout_fraction="
                                 f"{holdout_fraction}")
  return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def factor_readout(G: GroundTruthWorld, w: np.ndarray, r: np.ndarray, train: np.ndarray,
                   test: np.ndarray) -> dict[str, float]:
  """Held-out R^2 of a least-squares read-out of each true factor of w [N, w_dim] from r [N, D].

  Says which factors the classifier's representation carries at all: those it does not
  carry cannot be reached by the link either.
  """
  factors, _ = decode_factors(G, jnp.asarray(w))
  y = np.stack([np.asarray(v, np.float64) for v in factors.values()], -1)  # [N, F]
  r2 = readout_r2(r, y, train, test)   # least squares with an intercept
  return {n: float(r2[i]) for i, n in enumerate(factors)}


def run(ctx) -> None:
  """Fits the link on a train split of the paired data, writes `workdir/link/`."""
  c = ctx.cfg(NAME)
  out_dir = ctx.out_dir(NAME)
  metrics_path = os.path.join(out_dir, "metrics.json")
  if _complete(out_dir):
    print(f"[link] {out_dir} is complete; nothing to do")
    return
  data = ctx.result("paired_data")
  for k in ("r", "w"):
    errors.check_finite(f"paired data {k}", getattr(data, k))
  train, test = split(data.r.shape[0], c.holdout_fraction, ctx.seed(f"{NAME}.split"))
  link = linking.fit(c, data.r[train], data.w[train], ctx.key(NAME))
  predict = jax.jit(lambda link, r: link(r))
  metrics = {"kind": link.kind, "n_train": int(train.size), "n_test": int(test.size),
             "test": linking.regression_metrics(data.w[test], predict(link, data.r[test])),
             "train": linking.regression_metrics(data.w[train], predict(link, data.r[train]))}
  if c.cycle_samples > 0:
    rows = test[: c.cycle_samples]
    r_cyc = jax.jit(linking.cycle)(ctx.G, ctx.clf, link, data.r[rows])
    metrics["cycle"] = {"n": int(rows.size), **linking.cycle_metrics(data.r[rows], r_cyc)}
  if isinstance(ctx.G, GroundTruthWorld):
    io.write_json(os.path.join(out_dir, "factor_readout.json"),
                  factor_readout(ctx.G, data.w, data.r, train, test))
  with contextlib.suppress(FileNotFoundError):
    os.remove(metrics_path)   # written last: its existence says the rest is there
  io.save_npz(os.path.join(out_dir, "split.npz"), train=train, test=test)
  linking.save(os.path.join(out_dir, "model"), link, {"n_train": int(train.size)})
  io.write_json(metrics_path, metrics)
  t = metrics["test"]
  print(f"[link] {link.kind}: held-out MSE {t['mse']:.4g}, R^2 {t['r2']:.4f}"
        + (f", cycle corr {metrics['cycle']['corr_per_sample_mean']:.3f}" if "cycle" in metrics else ""))


def section(ctx) -> str | None:
  """Held-out fit of the link: R^2, MSE, cycle consistency; what r carries."""
  if not os.path.exists(os.path.join(ctx.out_dir(NAME), "metrics.json")):
    return None
  res = ctx.result(NAME)
  m = res.metrics
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
    png = plots.save(plots.r2_histogram(r2), ctx.out_dir("report"), "link_r2")
    extra += plots.img_tag(png, "Held-out R^2 of each w dimension", "link_r2")
  out = (f"<h2>Linking network ({page.escape(str(m.get('kind')))})</h2>"
         f"<p>w = link(r), fitted on the paired data, evaluated on held-out pairs.</p>"
         + page.table(["metric", "value"], rows) + extra)
  if res.factor_readout:
    ro = [(n, f"{v:.3f}") for n, v in sorted(res.factor_readout.items(), key=lambda kv: -kv[1])]
    out += ("<h2>What r carries</h2><p>Held-out R^2 of a linear read-out of each true factor "
            "from the classifier's representation r (least squares on the link's train pairs, "
            "scored on its held-out pairs). Factors that r does not carry cannot be "
            "reached through the link, which bounds its R^2.</p>" + page.table(["factor", "R^2"], ro))
  return out


def summary(ctx) -> dict | None:
  """The link's headline numbers for report/summary.json."""
  if not os.path.exists(os.path.join(ctx.out_dir(NAME), "metrics.json")):
    return None
  m = ctx.result(NAME).metrics
  out = {"kind": m.get("kind"), "heldout_r2": m["test"]["r2"], "heldout_mse": m["test"]["mse"],
         "n_train": m.get("n_train"), "n_test": m.get("n_test")}
  if "cycle" in m:
    out["cycle_corr"] = m["cycle"]["corr_per_sample_mean"]
  if ctx.result(NAME).factor_readout:
    out["factor_readout_r2"] = ctx.result(NAME).factor_readout
  return out


STAGE = Stage(name=NAME, requires=("paired_data",), default_config=default_config, run=run,
              load=load, uses=("seed",), section=section, summary=summary,
              rules=RULES)
