"""Stage `invariances`: what the classifier does not see, with a conditional INN.

After Rombach, Esser, Ommer (ECCV 2020), adapted to Linking in Style: a conditional
normalizing flow v = f(w; r) (`lis_jax.flows`) models p(w | r) on the paired data, so
  - fresh v' for one r give latents w' = f^-1(v'; r) whose images the classifier should
    not tell apart: re-classified, their r' is compared with r (cosine, prediction
    agreement), against the closed-form baseline w | r ~ N(link(r), Sigma) (the same v')
    and against random w of the same class;
  - mixing: v of image A with r of image B, w = f^-1(f(w_A; r_A); r_B);
  - concepts: every true factor (a GroundTruthWorld generator) and every part metric of
    `quantify` (when it ran) is read out linearly from r (what the classifier carries)
    and from v (what it leaves open), held-out R^2 on the link's split;
  - validation on a ground-truth world: per factor, its spread across samples that share
    an r (std over samples / std over the data) against 1 - R^2 of reading it from r
    (Spearman): factors r does not carry should vary most.

Outputs (`workdir/invariances/`, every file atomic; WORKSPACE.md):
  config.json          the fingerprint (the runner)
  train_state/         resumable training checkpoint (params, optimizer, epoch, losses)
  flow/                the trained flow (flows.save; its Gaussian base is rebuilt from
                       link/ and baseline.npz)
  baseline.npz         chol [w_dim, w_dim] of the baseline's residual covariance
  block_<b:05d>.npz    sampled conditions b*B..: rows [B], cls [B], r [B, D], pred [B],
                       for m in flow, baseline, random: w_<m> [B, S, w_dim],
                       r_<m> [B, S, D], pred_<m> [B, S]; existence = done
  mixing.npz           rows_a [M], rows_b [M], w_mix [M, M, w_dim] (v of a row, r of a
                       column), r_mix [M, M, D], pred_mix [M, M]
  summary.json         NLLs, r-consistency, mixing, concepts, spread vs 1 - R^2
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lis_jax import blocks
from lis_jax import distribute
from lis_jax import flows
from lis_jax import images
from lis_jax import io
from lis_jax import memory
from lis_jax import page
from lis_jax import errors, generators
from lis_jax.generators.base import GroundTruthWorld
from lis_jax.analysis.readout import decode_factors, readout_r2
from lis_jax.quantify import measuring
from lis_jax import validate as V
from lis_jax.stages.base import Stage

NAME = "invariances"
METHODS = ("flow", "baseline", "random")  # how the samples that share an r are drawn


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # The flow (flows.ConditionalFlow).
  c.n_blocks = 8  # coupling blocks (ActNorm, mixing, affine coupling)
  c.hidden = 256  # width of the coupling MLPs
  c.depth = 2  # hidden layers per coupling MLP
  c.embed_dim = 64  # embedding of r seen by every coupling
  c.embed_hidden = 256  # hidden width of the embedding MLP
  c.clamp = 2.0  # bound of a coupling's log-scale
  c.learned_mixing = True  # learned LU mixing after each fixed permutation (else permutation only)
  c.refine_baseline = True  # model the Gaussian baseline's whitened residual (start at the baseline)
  # Training (Adam, warmup + cosine decay, on the mean NLL of the link's train pairs).
  c.epochs = 30
  c.batch_size = 256
  c.learning_rate = 1e-3
  c.warmup_steps = 100
  c.weight_decay = 0.0
  c.clip_norm = 10.0  # global gradient-norm clip
  c.save_every = 5  # epochs between resumable checkpoints
  # Sampling and analysis.
  c.n_conditions = 64  # held-out r (round robin over classes) whose samples are rendered
  c.samples_per_condition = 8  # samples sharing each r
  c.temperature = 1.0  # v' ~ N(0, temperature^2 I)
  c.conditions_per_block = 16  # resume granularity of the sampling
  c.n_mix = 6  # mixing grid: v of n_mix images x r of n_mix others
  c.part_metric_train = 1000  # when quantify ran: train pairs segmented and measured for the
  c.part_metric_test = 300  # ... part-metric read-outs, and held-out pairs (0: no part metrics)
  c.part_metric_alpha = 0.1  # ridge penalty of those read-outs (readout_r2; fewer rows than units)
  c.render_batch_size = 128  # images per jitted call (rounded up to the device count)
  c.grid_rows = 6  # report: conditions shown (rows), each with its samples
  return c


@dataclasses.dataclass(frozen=True)
class InvariancesResult:
  """The stage's outputs: the trained flow (with its base), the baseline, summary.json,
  the sample blocks (dicts as in the module docstring, concatenated) and mixing.npz.

  The link is the link stage's: `flow` and `baseline` are loaded without it (their
  base's `link` is None); `with_link(ctx.result("link").link)` gives the usable pair."""
  flow: flows.Flow
  baseline: flows.GaussianBaseline
  summary: dict
  samples: dict
  mixing: dict

  def with_link(self, link) -> tuple[flows.Flow, flows.GaussianBaseline]:
    """(flow, baseline) that sample and score: the stored ones with the link in their base."""
    baseline = self.baseline.replace(link=link)
    return (self.flow.replace(base=baseline) if self.flow.base is not None else self.flow), baseline


def load(workdir: str) -> InvariancesResult:
  out_dir = os.path.join(workdir, NAME)
  summary = io.read_json(errors.require(os.path.join(out_dir, "summary.json"), NAME))
  baseline = _load_baseline(out_dir, None)   # the link stage's link: InvariancesResult.with_link
  flow = flows.load(os.path.join(out_dir, "flow"), base=baseline if summary["refine_baseline"] else None)
  mixing = io.load_npz(os.path.join(out_dir, "mixing.npz"), finite=False)
  return InvariancesResult(flow=flow, baseline=baseline, summary=summary,
                           samples=_concat_blocks(out_dir, summary["n_blocks"]), mixing=mixing)


# ----------------------------------------------------------------------------- analysis (pure)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Cosine similarity along the last axis (float64); 0 where a vector is zero."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
  return np.where(den > 0, (a * b).sum(-1) / np.maximum(den, 1e-300), 0.0)


def r_consistency(r: np.ndarray, r_prime: np.ndarray, pred: np.ndarray, pred_prime: np.ndarray) -> dict:
  """How well samples keep their condition's representation.

  Args:
    r: [C, D] conditions; r_prime: [C, S, D] re-classified samples; pred: [C] the
      classifier's prediction for r; pred_prime: [C, S] for the samples.
  Returns:
    median_cos, mean_cos of cos(r', r); agreement: fraction of samples predicted as r.
  """
  cos = cosine(r_prime, np.asarray(r)[:, None])
  return {"median_cos": float(np.median(cos)), "mean_cos": float(cos.mean()),
          "agreement": float((np.asarray(pred_prime) == np.asarray(pred)[:, None]).mean())}


def factor_std(x: np.ndarray, axis: int, periods: np.ndarray | None = None) -> np.ndarray:
  """Std of x [..., F] along `axis`; columns with a finite period in `periods` [F] (circular
  factors such as hue) get the circular std, period / (2 pi) sqrt(-2 ln |mean e^{i theta}|)."""
  x = np.asarray(x, np.float64)
  out = x.std(axis)
  if periods is not None:
    circ = np.isfinite(periods)
    theta = 2 * np.pi * x[..., circ] / periods[circ]
    length = np.abs(np.exp(1j * theta).mean(axis))
    out[..., circ] = periods[circ] / (2 * np.pi) * np.sqrt(-2 * np.log(np.clip(length, 1e-12, 1.0)))
  return out


def sampling_spread(values: np.ndarray, scale: np.ndarray, periods: np.ndarray | None = None) -> np.ndarray:
  """values [C, S, F] of F quantities for S samples sharing each of C conditions ->
  [F] mean over conditions of their std over samples (`factor_std`), divided by `scale` [F]."""
  return factor_std(values, 1, periods).mean(0) / np.maximum(np.asarray(scale, np.float64), 1e-12)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
  import scipy.stats  # noqa: PLC0415  (local: ~1 s to import, which every command would pay)
  return float(scipy.stats.spearmanr(a, b).statistic)


def pick_conditions(rows: np.ndarray, cls: np.ndarray, n: int) -> np.ndarray:
  """Up to n of `rows`, cycling through the classes cls[rows] (order kept within a class)."""
  groups = [list(rows[cls[rows] == k]) for k in np.unique(cls[rows])]
  out: list[int] = []
  while any(groups) and len(out) < n:
    out += [g.pop(0) for g in groups if g][: n - len(out)]
  return np.asarray(out, np.int64)


# ----------------------------------------------------------------------------- jitted work


@jax.jit
def _reclassify(G, clf, w):
  """w [B, w_dim] -> r' [B, D], pred [B] of the classifier on G's image of w."""
  img = G.synthesis(generators.broadcast_ws(w, G.num_ws))
  r = clf.features(clf.preprocess(img))
  return r, jnp.argmax(clf.head(r), -1).astype(jnp.int32)


@jax.jit
def _predict(clf, r):
  return jnp.argmax(clf.head(r), -1).astype(jnp.int32)


@jax.jit
def _forward(model, w, r):
  return model.forward(w, r)[0]


@jax.jit
def _inverse(model, v, r):
  return model.inverse(v, r)


@jax.jit
def _nll(model, w, r):
  return model.nll(w, r)


def map_sharded(fn: Callable[..., Any], rows: tuple, batch_size: int, mesh, *args: Any) -> Any:
  """fn(*args, *batch) over the tuple of [N, ...] arrays `rows` (`memory.map_chunks`:
  fixed-size padded batches, one compile), each batch split over the mesh's devices and
  `args` (models) replicated."""
  args = distribute.replicate(args, mesh)
  # At most batch_size rows per call: fewer when the memory budget holds fewer (memory.map_chunks).
  return memory.map_chunks(functools.partial(_unpacked, fn=fn), tuple(rows),
                           distribute.round_up(batch_size, mesh), *args,
                           budget=memory.default_budget(), call=f"{NAME} {getattr(fn, '__name__', 'call')}",
                           setting="invariances.render_batch_size", stage=NAME,
                           multiple=distribute.round_up(1, mesh),
                           place=lambda x: distribute.shard_batch(x, mesh))


def _unpacked(*a, fn):
  """fn(*args, *rows) from map_chunks' fn(*args, rows) (map_chunks waits for each sharded
  chunk whose call has collectives on XLA:CPU before it sends the next)."""
  return fn(*a[:-1], *a[-1])


# ----------------------------------------------------------------------------- stage


def _flow_module(c) -> flows.ConditionalFlow:
  return flows.ConditionalFlow(n_blocks=c.n_blocks, hidden=c.hidden, depth=c.depth,
                               embed_dim=c.embed_dim, embed_hidden=c.embed_hidden, clamp=c.clamp,
                               learned_mixing=c.learned_mixing)


def _train_spec(c) -> flows.TrainSpec:
  return flows.TrainSpec(epochs=c.epochs, batch_size=c.batch_size, learning_rate=c.learning_rate,
                         warmup_steps=c.warmup_steps, weight_decay=c.weight_decay,
                         clip_norm=c.clip_norm, save_every=c.save_every)


def _load_baseline(out_dir: str, link) -> flows.GaussianBaseline:
  f = io.load_npz(errors.require(os.path.join(out_dir, "baseline.npz"), NAME))
  return flows.GaussianBaseline(link=link, chol=jnp.asarray(f["chol"]))


def _baseline(ctx, out_dir: str, data, lk) -> flows.GaussianBaseline:
  path = os.path.join(out_dir, "baseline.npz")
  if not io.npz_ok(path):   # absent or damaged: (re)computed
    base = flows.fit_baseline(lk.link, data.r[lk.train], data.w[lk.train])
    io.save_npz(path, chol=np.asarray(base.chol))
  return _load_baseline(out_dir, lk.link)


def _flow(ctx, out_dir: str, data, lk, base) -> flows.Flow:
  """The trained flow: loaded when done, else trained (resuming from train_state/)."""
  c = ctx.cfg(NAME)
  base = base if c.refine_baseline else None
  ckpt = os.path.join(out_dir, "flow")
  flow = flows.load_or_none(ckpt, base=base, log=lambda s: print(f"[{NAME}] {s}", flush=True))
  if flow is not None:   # None: not trained yet, or damaged (removed: trained again)
    return flow
  flow, losses = flows.train(
      _flow_module(c), data.w[lk.train], data.r[lk.train], ctx.key(f"{NAME}.train"), _train_spec(c),
      base=base, state_dir=os.path.join(out_dir, "train_state"),
      after_save=lambda epoch: errors.maybe_interrupt(f"{NAME}.train", epoch),
      log=lambda s: print(f"[{NAME}] {s}", flush=True))
  flows.save(ckpt, flow, {"train_losses": losses})
  return flow


def _sample_block(ctx, models: dict, data, conds: np.ndarray, pool: dict) -> dict:
  """Samples, renders and re-classifies S latents for each condition row in `conds`."""
  c = ctx.cfg(NAME)
  S, d = c.samples_per_condition, data.w.shape[1]
  r = data.r[conds]                                                            # [B, D]
  rr = np.repeat(r, S, 0)                                                      # [B * S, D]
  v = np.concatenate([np.asarray(jax.random.normal(ctx.key(f"{NAME}.sample", int(row)), (S, d)))
                      for row in conds]) * c.temperature                      # [B * S, w_dim]
  out = {"rows": conds, "cls": data.cls[conds], "r": r,
         "pred": np.asarray(_predict(ctx.clf, jnp.asarray(r)))}
  for m in METHODS:
    if m == "random":   # S random paired-data latents of the condition's class
      w = np.concatenate([pool[int(data.cls[row])][np.asarray(jax.random.choice(
          ctx.key(f"{NAME}.random", int(row)), len(pool[int(data.cls[row])]), (S,)))] for row in conds])
    else:
      w = map_sharded(_inverse, (v, rr), c.render_batch_size, ctx.mesh, models[m])
    rp, pred = map_sharded(_reclassify, (w,), c.render_batch_size, ctx.mesh, ctx.G, ctx.clf)
    out.update({f"w_{m}": w.reshape(len(conds), S, d), f"r_{m}": rp.reshape(len(conds), S, -1),
                f"pred_{m}": pred.reshape(len(conds), S)})
  return out


def _concat_blocks(out_dir: str, n_blocks: int) -> dict:
  store = blocks.BlockStore(out_dir)
  parts = [store.read(b) for b in range(n_blocks)]
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _mixing(ctx, out_dir: str, flow, data, conds: np.ndarray) -> dict:
  """v of conds[:M] (rows of the grid) with r of conds[M:2M] (columns)."""
  path = os.path.join(out_dir, "mixing.npz")
  if not io.npz_ok(path, finite=False):   # absent or damaged: (re)computed
    c = ctx.cfg(NAME)
    a, b = conds[:c.n_mix], conds[c.n_mix:2 * c.n_mix]
    v_a = map_sharded(_forward, (data.w[a], data.r[a]), c.render_batch_size, ctx.mesh, flow)   # [M, d]
    vv = np.repeat(v_a, len(b), 0)                                                        # [M * M, d]
    rb = np.tile(data.r[b], (len(a), 1))                                                  # [M * M, D]
    w = map_sharded(_inverse, (vv, rb), c.render_batch_size, ctx.mesh, flow)
    rp, pred = map_sharded(_reclassify, (w,), c.render_batch_size, ctx.mesh, ctx.G, ctx.clf)
    io.save_npz(path, rows_a=a, rows_b=b, w_mix=w.reshape(len(a), len(b), -1),
                r_mix=rp.reshape(len(a), len(b), -1), pred_mix=pred.reshape(len(a), len(b)))
  return io.load_npz(path, finite=False)


def _factor_values(G, w: np.ndarray) -> tuple[list[str], np.ndarray]:
  """The true factors of w [..., w_dim] on a ground-truth world: names, values [..., F]."""
  factors, _ = decode_factors(G, np.asarray(w, np.float32).reshape(-1, w.shape[-1]))
  names = list(factors)
  vals = np.stack([np.asarray(factors[n], np.float64) for n in names], -1)
  return names, vals.reshape(*w.shape[:-1], len(names))


def _concepts(ctx, flow, base, data, lk) -> dict | None:
  """Held-out R^2 of each true factor read out from r, from the flow's v and from the
  baseline's v; None off a ground-truth world."""
  if not isinstance(ctx.G, GroundTruthWorld):
    return None
  c = ctx.cfg(NAME)
  names, y = _factor_values(ctx.G, data.w)                                      # [N, F]
  v_flow = map_sharded(_forward, (data.w, data.r), c.render_batch_size, ctx.mesh, flow)
  v_base = map_sharded(_forward, (data.w, data.r), c.render_batch_size, ctx.mesh, base)
  r2 = {src: readout_r2(x, y, lk.train, lk.test)
        for src, x in (("r", data.r), ("v_flow", v_flow), ("v_baseline", v_base))}
  return {n: {src: float(r2[src][i]) for src in r2} for i, n in enumerate(names)}


def _part_metric_values(ctx, data, rows: np.ndarray) -> tuple[list[str], np.ndarray]:
  """quantify's part metrics ('<part>.<metric>') of the images of paired-data `rows`,
  measured with quantify's segmenter (quantify is then required: `_requires_when`)."""
  seg = ctx.result("quantify").segmenter()
  qc = ctx.cfg("quantify")
  vals = measuring.measure_concepts(ctx.G, seg, data.w[rows], ctx.cfg(NAME).render_batch_size, qc,
                                    setting="invariances.render_batch_size")   # [n, P, M']
  names = [f"{p}.{k}" for p in measuring.measured_parts(seg) for k in measuring.concept_sources(qc)]
  return names, vals.reshape(len(rows), -1)


def _uses_part_metrics(c) -> bool:
  return c.part_metric_train > 0 and c.part_metric_test > 0


def _requires_when(c) -> tuple[str, ...]:
  """The part-metric read-outs measure with quantify's segmenter: quantify is required."""
  return ("quantify",) if _uses_part_metrics(c) else ()


def _spaced(rows: np.ndarray, n: int) -> np.ndarray:
  """Up to n of `rows`, evenly spaced (rows are in class order: every class is represented)."""
  return rows if n >= rows.size else rows[np.linspace(0, rows.size - 1, n).round().astype(int)]


def _part_concepts(ctx, flow, data, lk) -> dict | None:
  """Held-out R^2 of each part metric read out from r and from the flow's v."""
  c = ctx.cfg(NAME)
  if not _uses_part_metrics(c):
    return None
  train, test = _spaced(lk.train, c.part_metric_train), _spaced(lk.test, c.part_metric_test)
  rows = np.concatenate([train, test])
  names, y = _part_metric_values(ctx, data, rows)
  v = map_sharded(_forward, (data.w[rows], data.r[rows]), c.render_batch_size, ctx.mesh, flow)
  tr, te = np.arange(train.size), np.arange(train.size, rows.size)
  keep = y[tr].std(0) > 0          # a metric constant over the train images cannot be read out
  r2 = {src: readout_r2(x, y[:, keep], tr, te, c.part_metric_alpha)
        for src, x in (("r", data.r[rows]), ("v_flow", v))}
  kept = [n for n, k in zip(names, keep) if k]
  return {"n_train": int(train.size), "n_test": int(test.size), "alpha": float(c.part_metric_alpha),
          "r2": {n: {src: float(r2[src][i]) for src in r2} for i, n in enumerate(kept)}}


def _validation(ctx, samples: dict, data, concepts: dict) -> dict:
  """Per factor: spread under sampling (flow and baseline) vs 1 - R^2 from r; Spearman."""
  G = ctx.G
  names, y = _factor_values(G, data.w)
  periods = np.array([np.subtract(*G.factor_ranges[n][::-1]) if n in G.circular_factors else np.inf
                      for n in names])
  scale = factor_std(y, 0, periods)
  one_minus = np.array([1.0 - concepts[n]["r"] for n in names])
  out = {"one_minus_r2": dict(zip(names, one_minus.tolist()))}
  for m in ("flow", "baseline"):
    spread = sampling_spread(_factor_values(G, samples[f"w_{m}"])[1], scale, periods)
    out[f"spread_{m}"] = dict(zip(names, spread.tolist()))
    out[f"spearman_{m}"] = spearman(spread, one_minus)
  return out


def run(ctx) -> None:
  c = ctx.cfg(NAME)
  out_dir = ctx.out_dir(NAME)
  os.makedirs(out_dir, exist_ok=True)
  data, lk = ctx.result("paired_data"), ctx.result("link")
  base = _baseline(ctx, out_dir, data, lk)
  flow = _flow(ctx, out_dir, data, lk, base)
  models = {"flow": flow, "baseline": base}

  conds = pick_conditions(lk.test, data.cls, max(c.n_conditions, 2 * c.n_mix))
  if len(conds) < 2 * c.n_mix or len(conds) < c.n_conditions:
    raise errors.PipelineError(f"{NAME}: {len(lk.test)} held-out pairs cannot give n_conditions="
                                 f"{c.n_conditions} and 2 x n_mix={2 * c.n_mix} conditions")
  sampled = conds[:c.n_conditions]
  pool = {int(k): data.w[lk.train][data.cls[lk.train] == k] for k in np.unique(data.cls)}
  per = c.conditions_per_block
  n_blocks = -(-len(sampled) // per)
  store = blocks.BlockStore(out_dir)
  for b in store.todo(n_blocks):
    store.write(b, **_sample_block(ctx, models, data, sampled[b * per:(b + 1) * per], pool))
    errors.maybe_interrupt(NAME, b + 1)
    print(f"[{NAME}] sampled block {b + 1}/{n_blocks}", flush=True)
  samples = _concat_blocks(out_dir, n_blocks)
  mixing = _mixing(ctx, out_dir, flow, data, conds)
  io.write_json(os.path.join(out_dir, "summary.json"),
                _summarise(ctx, models, data, lk, samples, mixing, n_blocks))
  s = io.read_json(os.path.join(out_dir, "summary.json"))
  print(f"[{NAME}] held-out NLL flow {s['nll']['flow']:.3f} vs baseline {s['nll']['baseline']:.3f}; "
        f"median cos(r', r) flow {s['r_consistency']['flow']['median_cos']:.4f} vs baseline "
        f"{s['r_consistency']['baseline']['median_cos']:.4f}"
        + (f"; Spearman(spread, 1 - R^2) {s['validation']['spearman_flow']:.3f}" if s.get("validation") else ""),
        flush=True)


def _summarise(ctx, models, data, lk, samples, mixing, n_blocks) -> dict:
  c = ctx.cfg(NAME)
  test = lk.test
  nll = {m: float(np.mean(map_sharded(_nll, (data.w[test], data.r[test]), c.render_batch_size,
                                      ctx.mesh, models[m]))) for m in ("flow", "baseline")}
  nll.update(n_test=int(test.size), w_dim=int(data.w.shape[1]),
             reference=flows.reference_nll(data.w[lk.train], data.w[test]))
  warnings = flows.fit_warnings(int(np.size(lk.train)), int(data.r.shape[1]),
                                int(data.w.shape[1]), {m: nll[m] for m in ("flow", "baseline")},
                                nll["reference"])
  for w in warnings:
    print(f"[{NAME}] warning: {w}", flush=True)
  cons = {m: r_consistency(samples["r"], samples[f"r_{m}"], samples["pred"], samples[f"pred_{m}"])
          for m in METHODS}
  pred_a = np.asarray(_predict(ctx.clf, jnp.asarray(data.r[mixing["rows_a"]])))
  pred_b = np.asarray(_predict(ctx.clf, jnp.asarray(data.r[mixing["rows_b"]])))
  mix = {"agreement_with_r_image": float((mixing["pred_mix"] == pred_b[None, :]).mean()),
         "agreement_with_v_image": float((mixing["pred_mix"] == pred_a[:, None]).mean()),
         "median_cos_with_r_image": float(np.median(cosine(mixing["r_mix"], data.r[mixing["rows_b"]][None]))),
         "median_cos_with_v_image": float(np.median(cosine(mixing["r_mix"], data.r[mixing["rows_a"]][:, None])))}
  concepts = _concepts(ctx, models["flow"], models["baseline"], data, lk)
  out = {"nll": nll, "warnings": warnings, "r_consistency": cons, "mixing": mix, "concepts": concepts,
         "part_concepts": _part_concepts(ctx, models["flow"], data, lk),
         "n_blocks": n_blocks, "refine_baseline": bool(c.refine_baseline),
         "n_conditions": int(samples["rows"].size), "samples_per_condition": int(c.samples_per_condition)}
  if concepts is not None:
    out["validation"] = _validation(ctx, samples, data, concepts)
  return out


# ----------------------------------------------------------------------------- report section


def _grid(imgs: np.ndarray, pad: int = 2) -> np.ndarray:
  """uint8 imgs [R, C, H, W, 3] -> one uint8 image with white gaps of `pad` pixels."""
  R, C, H, W, _ = imgs.shape
  out = np.full((R * (H + pad) - pad, C * (W + pad) - pad, 3), 255, np.uint8)
  for i in range(R):
    for j in range(C):
      out[i * (H + pad):i * (H + pad) + H, j * (W + pad):j * (W + pad) + W] = imgs[i, j]
  return out


def _figure(img: np.ndarray, caption: str, scale: int) -> str:
  return f"<figure>{page.img(img, scale)}<figcaption>{caption}</figcaption></figure>"


def _f(x: float, digits: int = 3) -> str:
  return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def section(ctx) -> str | None:
  """Grids of samples sharing an r, the mixing grid, NLLs, r-consistency, concepts."""
  if not os.path.exists(os.path.join(ctx.out_dir(NAME), "summary.json")):
    return None
  res = ctx.result(NAME)
  s, smp, mix = res.summary, res.samples, res.mixing
  c = ctx.cfg(NAME)
  scale = ctx.cfg("report").image_scale
  render = lambda w: images.render(ctx.G, np.asarray(w).reshape(-1, np.shape(w)[-1]),
                                   ctx.cfg("report").batch_size).reshape(
      *np.shape(w)[:-1], ctx.G.resolution, ctx.G.resolution, 3)
  data = ctx.result("paired_data")
  k = min(c.grid_rows, smp["rows"].size)
  orig = render(data.w[smp["rows"][:k]])[:, None]                                       # [k, 1, H, W, 3]
  parts = ["<h2>Invariances: what the classifier does not see</h2>",
           "<p>A conditional normalizing flow v = f(w; r) models the latents w that share a "
           "representation r (after Rombach, Esser, Ommer 2020). Samples w' = f<sup>-1</sup>(v'; r) "
           "with fresh v' differ only in what r leaves open: the classifier's invariances.</p>"]
  for m, title in (("flow", "flow samples"), ("baseline", "Gaussian baseline samples")):
    grid = _grid(np.concatenate([orig, render(smp[f"w_{m}"][:k])], 1))
    parts.append(_figure(grid, f"{title}: each row one held-out r; first column its own image, "
                         f"then {smp[f'w_{m}'].shape[1]} samples sharing that r", scale))
  n = s["nll"]
  verdict = ("beats" if n["flow"] < n["baseline"] else "does <b>not</b> beat")
  parts.append(f"<h3>Likelihood</h3><p>Held-out negative log-likelihood of w given r (nats per "
               f"sample, {n['w_dim']} dims, {n['n_test']} held-out pairs): the flow {verdict} the "
               f"closed-form baseline N(link(r), &Sigma;).</p>"
               + page.table(["model", "held-out NLL", "per dim"],
                               [(m, _f(n[m]), _f(n[m] / n["w_dim"], 4)) for m in ("flow", "baseline")]))
  rc = s["r_consistency"]
  parts.append("<h3>Does the classifier see the samples as the same?</h3><p>Samples re-rendered "
               "and re-classified: cosine of their representation r' with the shared r, and the "
               "fraction predicted as r is. <i>random</i>: paired-data latents of the same class.</p>"
               + page.table(["samples", "median cos(r', r)", "mean cos(r', r)", "prediction agreement"],
                               [(m, _f(rc[m]["median_cos"], 4), _f(rc[m]["mean_cos"], 4),
                                 _f(rc[m]["agreement"])) for m in METHODS]))
  a_img = render(data.w[mix["rows_a"]])
  b_img = render(data.w[mix["rows_b"]])
  cells = render(mix["w_mix"])                                                          # [M, M, H, W, 3]
  top = np.concatenate([np.full_like(b_img[:1], 255), b_img], 0)[None]                       # [1, M + 1, ...]
  body = np.concatenate([a_img[:, None], cells], 1)
  mx = s["mixing"]
  parts.append("<h3>Mixing</h3>" + _figure(
      _grid(np.concatenate([top, body], 0)),
      "row i, column j: v of the image left of row i with r of the image above column j "
      f"(re-classified as the column's prediction: {_f(mx['agreement_with_r_image'])}; as the "
      f"row's: {_f(mx['agreement_with_v_image'])})", scale))
  if s.get("concepts"):
    val = s["validation"]
    rows = sorted(s["concepts"].items(), key=lambda kv: -kv[1]["r"])
    parts.append(
        "<h3>What r carries and what it leaves to v</h3><p>Held-out R^2 of a linear read-out of "
        "each true factor from r and from the flow's residual v (and the baseline's). "
        "<i>spread</i>: the factor's std across samples sharing an r over its std in the data. "
        f"Spearman(spread, 1 - R^2 from r): flow <b>{_f(val['spearman_flow'])}</b>, baseline "
        f"{_f(val['spearman_baseline'])}.</p>"
        + page.table(["factor", "R^2 from r", "R^2 from v (flow)", "R^2 from v (baseline)",
                         "spread (flow)", "spread (baseline)"],
                        [(f, _f(v["r"]), _f(v["v_flow"]), _f(v["v_baseline"]),
                          _f(val["spread_flow"][f]), _f(val["spread_baseline"][f])) for f, v in rows]))
  pc = s.get("part_concepts")
  if pc:
    rows = sorted(pc["r2"].items(), key=lambda kv: -kv[1]["r"])
    parts.append(
        f"<h3>Part metrics from r and from v</h3><p>quantify's part measures of {pc['n_train']} "
        f"train and {pc['n_test']} held-out paired images (its segmenter), read out from r and "
        f"from the flow's v by ridge regression (alpha {pc['alpha']} per train image, standardised "
        "inputs; held-out R^2).</p>"
        + page.table(["part metric", "R^2 from r", "R^2 from v (flow)"],
                        [(n, _f(v["r"]), _f(v["v_flow"])) for n, v in rows]))
  return "\n".join(parts)


def summary(ctx) -> dict | None:
  """Headline numbers for report/summary.json."""
  path = os.path.join(ctx.out_dir(NAME), "summary.json")
  if not os.path.exists(path):
    return None
  s = io.read_json(path)
  out = {"nll": s["nll"], "warnings": s.get("warnings", []), "r_consistency": s["r_consistency"],
         "mixing": s["mixing"]}
  if s.get("validation"):
    out["spearman_spread_vs_1_minus_r2"] = {m: s["validation"][f"spearman_{m}"] for m in ("flow", "baseline")}
  return out


# Values a run accepts (lis_jax/validate.py's rule kinds): every count and width >= 1.
RULES = {
    **{k: V.pos_int() for k in ("n_blocks", "hidden", "depth", "embed_dim", "embed_hidden", "epochs",
                                "batch_size", "save_every", "n_conditions", "samples_per_condition",
                                "conditions_per_block", "render_batch_size", "grid_rows")},
    "n_mix": V.int_at_least(2), "clamp": V.pos_float(), "learning_rate": V.pos_float(),
    "warmup_steps": V.nonneg_int(), "weight_decay": V.nonneg_float(), "clip_norm": V.pos_float(),
    "temperature": V.pos_float(), "part_metric_train": V.nonneg_int(),
    "part_metric_test": V.nonneg_int(), "part_metric_alpha": V.pos_float(),
}

STAGE = Stage(name=NAME, requires=("paired_data", "link"), default_config=default_config, run=run,
              load=load, uses=("seed",), section=section, summary=summary,
              ignores=("render_batch_size", "grid_rows"), requires_when=_requires_when, rules=RULES)
