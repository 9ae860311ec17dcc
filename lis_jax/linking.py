"""The linking network w = link(r): fits, metrics, save and load (the stage: stages/link.py).

Linear links (`ols`, `ridge`, `elasticnet`) fit w = r A + b with an unpenalised intercept,
with the objectives of scikit-learn's LinearRegression, Ridge and ElasticNet:
  ols:        ||Y - X A - b||^2
  ridge:      ||Y - X A - b||^2 + alpha ||A||^2
  elasticnet: 1/(2n) ||Y - X A - b||^2 + alpha l1_ratio |A|_1 + alpha (1 - l1_ratio)/2 ||A||^2
(all outputs at once; they decouple). `mlp` is an MLP trained with optax (Adam, MSE).

Outputs: WORKSPACE.md, section `link/`.
"""
from __future__ import annotations

import contextlib
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lis_jax import io
from lis_jax import errors, generators

LINEAR_KINDS = ("ols", "ridge", "elasticnet")
KINDS = LINEAR_KINDS + ("mlp",)


class Link(flax.struct.PyTreeNode):
  """A fitted link r -> w; a pytree (params are leaves), so jit/grad see through it.

  params: linear kinds {'A': [D, w_dim], 'b': [w_dim]}; mlp {'layers': [{'w', 'b'}, ...]}.
  kind: one of KINDS.
  """
  params: Any
  kind: str = flax.struct.field(pytree_node=False, default="ols")

  def __call__(self, r: jax.Array) -> jax.Array:
    """r [..., D] -> w [..., w_dim]."""
    if self.kind in LINEAR_KINDS:
      return r @ self.params["A"] + self.params["b"]
    return mlp_apply(self.params, r)


# ----------------------------------------------------------------------------- linear fits

# OLS drops the directions of the centred train r whose singular value is below RCOND x the
# largest (they are treated as carrying no variance; the minimum-norm solution is taken).
# A constant, unlike LAPACK's default eps x max(N, D), which in float32 grows with N to
# 3e-3 at N = 25000 and dropped 126 of 512 real directions (issue 20). The paired r are
# float32: a direction under ~1e-7 of the largest is float32 rounding of r itself, and 1e-6
# keeps everything 10x above that floor (a spectrum down to 1e-4 keeps every direction).
RCOND = 1e-6
# A's entries move by about cond x the relative perturbation of r. r computed on another
# device count differs by float32 summation order, ~1e-7 relative (measured: 1 vs 4 devices
# of configs/tiny.py, tests/test_multiprocess.py); above a condition number of 1e4 that
# is > 1e-3 relative in A: its entries are not identifiable (predictions still are).
COND_IDENTIFIABLE = 1e4


def _x64(enabled: bool):
  return jax.enable_x64(True) if enabled else contextlib.nullcontext()


def fit_linear(r: np.ndarray, w: np.ndarray, kind: str = "ols", alpha: float = 1.0,
               l1_ratio: float = 0.5, float64: bool = False, solver: str = "lstsq",
               jitter: float = 1e-6, max_iter: int = 5000, tol: float = 1e-7,
               rcond: float = RCOND) -> dict[str, np.ndarray]:
  """Fits w = r A + b; the params of `fit_linear_info` (same arguments)."""
  return fit_linear_info(r, w, kind, alpha, l1_ratio, float64, solver, jitter, max_iter, tol,
                         rcond)[0]


def fit_linear_info(r: np.ndarray, w: np.ndarray, kind: str = "ols", alpha: float = 1.0,
                    l1_ratio: float = 0.5, float64: bool = False, solver: str = "lstsq",
                    jitter: float = 1e-6, max_iter: int = 5000, tol: float = 1e-7,
                    rcond: float = RCOND) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Fits w = r A + b and says how well determined the fit is.

  OLS and ridge are solved in float64 on the host whatever `float64` says, on centred r
  and w, without forming a Gram matrix: OLS by LAPACK's gelsd (a QR, then an SVD; as
  scikit-learn's LinearRegression) with singular values below rcond x the largest dropped;
  ridge by a Householder QR of [r_c | w_c] and an SVD of its D x D factor,
  A = V diag(s / (s^2 + alpha)) U^T w_c. The `cholesky` solver forms the Gram matrix in
  float64. Elastic net iterates on a float64 Gram matrix, in float32 unless `float64`.

  Args:
    r: [N, D] inputs (classifier representations).
    w: [N, w_dim] targets.
    kind: 'ols', 'ridge' or 'elasticnet' (objectives in the module docstring).
    alpha: penalty strength (ridge, elasticnet); ignored by ols.
    l1_ratio: elasticnet's share of the L1 penalty in [0, 1].
    float64: elasticnet only: iterate in float64 (inside a `jax.enable_x64` context; the
      global flag is left alone). False: float32.
    solver: ols and ridge: 'lstsq' (QR + SVD, stable for rank-deficient r) or 'cholesky'
      (normal equations in float64 with, for ols, a relative `jitter` on the diagonal;
      faster for N >> D, squares the condition number).
    jitter: cholesky only: added diagonal, relative to the mean eigenvalue of r^T r.
    max_iter, tol: elasticnet only: FISTA iterations cap, and the stopping threshold on
      the largest coefficient change relative to the largest coefficient.
    rcond: ols (and ridge with alpha 0), lstsq: singular values below rcond x the largest
      are dropped (RCOND).
  Returns:
    ({'A': [D, w_dim], 'b': [w_dim]} numpy, float64 if `float64` else float32,
     info: see `fit_diagnostics`).
  """
  if kind not in LINEAR_KINDS:
    raise errors.PipelineError(f"link kind {kind!r} is not linear ({', '.join(LINEAR_KINDS)})")
  if r.ndim != 2 or w.ndim != 2 or r.shape[0] != w.shape[0]:
    raise errors.PipelineError(f"fit_linear: r {r.shape} and w {w.shape} must be [N, D] and [N, w_dim]")
  if solver not in ("lstsq", "cholesky"):
    raise errors.PipelineError(f"unknown solver {solver!r} (lstsq, cholesky)")
  xc = np.array(r, np.float64, order="F")                  # copies, centred in place
  yc = np.array(w, np.float64, order="F")
  errors.check_finite("link fit inputs r", xc)
  errors.check_finite("link fit targets w", yc)
  xm, ym = xc.mean(0), yc.mean(0)
  xc -= xm
  yc -= ym
  if kind == "elasticnet" or solver == "cholesky":
    gram = xc.T @ xc                                       # [D, D], float64 accumulation
    s = np.sqrt(np.clip(np.linalg.eigvalsh(gram)[::-1], 0.0, None))
    if kind == "elasticnet":
      n = xc.shape[0]
      with _x64(float64):
        dt = jnp.float64 if float64 else jnp.float32
        A = np.asarray(_elasticnet_fista(jnp.asarray(gram / n, dt), jnp.asarray(xc.T @ yc / n, dt),
                                         jnp.asarray(s[0] ** 2 / n, dt), alpha, l1_ratio, max_iter,
                                         tol), np.float64)
    else:
      A = _ridge_cholesky(gram, xc.T @ yc, alpha if kind == "ridge" else 0.0,
                          jitter if kind == "ols" else 0.0)
  elif kind == "ols":                                      # LAPACK gelsd: QR, then an SVD
    import scipy.linalg  # noqa: PLC0415  (local: spares every command's start-up)
    A, _, _, s = scipy.linalg.lstsq(xc, yc, cond=rcond, lapack_driver="gelsd",
                                    overwrite_a=True, overwrite_b=True, check_finite=False)
  else:
    s, vt, uty = _centred_svd(xc, yc)
    if alpha > 0:
      f = s / (s * s + alpha)
    else:                                                  # no penalty: ols's cutoff
      keep = s > rcond * s[0] if s.size else s > 0
      f = np.where(keep, 1.0 / np.where(keep, s, 1.0), 0.0)
    A = vt.T @ (f[:, None] * uty)                          # [D, w_dim]
  dtype = np.float64 if float64 else np.float32
  b = ym - xm @ A
  info = fit_diagnostics(s, r.shape[0], r.shape[1], kind, alpha, rcond)
  return {"A": np.asarray(A, dtype), "b": np.asarray(b, dtype)}, info


def _centred_svd(xc: np.ndarray, yc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Thin SVD xc = U diag(s) V^T of centred float64 xc [N, D], and U^T yc.

  Returns s [m] (descending), vt [m, D], uty [m, k], m = min(N, D). For N >= D + k the
  QR of [xc | yc] gives R (D x D, same singular values as xc) and Q^T yc without Q.
  """
  import scipy.linalg  # noqa: PLC0415  (local: spares every command's start-up)
  n, d = xc.shape
  if n >= d + yc.shape[1]:
    aug = np.empty((n, d + yc.shape[1]), order="F")        # LAPACK's order: no copy
    aug[:, :d], aug[:, d:] = xc, yc
    r_aug = scipy.linalg.qr(aug, mode="r", overwrite_a=True, check_finite=False)[0]
    u, s, vt = scipy.linalg.svd(r_aug[:d, :d], full_matrices=False, check_finite=False,
                                lapack_driver="gesdd")
    return s, vt, u.T @ r_aug[:d, d:]
  u, s, vt = scipy.linalg.svd(xc, full_matrices=False, check_finite=False, lapack_driver="gesdd")
  return s, vt, u.T @ yc


def _ridge_cholesky(gram, cross, alpha, jitter):
  """Solves (gram + (alpha + jitter tr(gram)/D) I) A = cross in float64; A [D, w_dim]."""
  import scipy.linalg  # noqa: PLC0415  (local: spares every command's start-up)
  d = gram.shape[0]
  reg = alpha + jitter * np.trace(gram) / d
  try:
    chol = scipy.linalg.cho_factor(gram + reg * np.eye(d), check_finite=False)
  except np.linalg.LinAlgError:
    raise errors.PipelineError(
        "the Gram matrix of the paired r is singular: use link.solver=lstsq, a jitter > 0 or "
        "a ridge link with alpha > 0") from None
  return scipy.linalg.cho_solve(chol, cross, check_finite=False)


def fit_diagnostics(s: np.ndarray, n: int, d: int, kind: str, alpha: float = 0.0,
                    rcond: float = RCOND) -> dict[str, Any]:
  """How well a linear fit on N pairs of D inputs is determined.

  Args:
    s: singular values of the centred inputs, descending. n, d: N and D.
  Returns:
    n_train; unknowns (D + 1 per w dimension); underdetermined (unknowns >= n_train);
    rank (singular values above rcond x the largest; D - rank directions carry no
    variance); condition_number (largest / smallest kept singular value; the factor by
    which A amplifies a relative perturbation of r); rcond; identifiable (ols: rank D and
    condition_number < COND_IDENTIFIABLE; ridge/elasticnet with alpha > 0: the penalty
    makes A unique); warnings (sentences saying what to change; empty when none).
  """
  s = np.asarray(s, np.float64)
  rank = int((s > rcond * s[0]).sum()) if s.size and s[0] > 0 else 0
  cond = float(s[0] / s[rank - 1]) if rank else float("inf")
  unknowns = d + 1
  under = unknowns >= n
  penalised = kind != "ols" and alpha > 0
  identifiable = penalised or (rank == d and cond < COND_IDENTIFIABLE)
  warnings = []
  if under:
    warnings.append(
        f"the {kind} link is underdetermined: {unknowns} unknowns per w dimension ({d} r units "
        f"+ intercept) and {n} training pairs; it can interpolate its train pairs and its "
        f"held-out R^2 means little. Change: more than {unknowns} train pairs (raise "
        f"paired_data.n_per_class), fewer units, or link.kind=ridge with link.alpha > 0")
  if not identifiable:
    why = (f"rank {rank} of {d} at rcond {rcond:g}" if rank < d
           else f"condition number {cond:.3g} >= {COND_IDENTIFIABLE:g}")
    warnings.append(
        f"the {kind} link's coefficients A are not identifiable ({why}): they can move by more "
        f"than float noise between runs on other device counts; its predictions are (compare "
        f"those). Change: more paired data, or link.kind=ridge with link.alpha > 0")
  return {"n_train": int(n), "unknowns": unknowns, "underdetermined": bool(under),
          "rank": rank, "dims": int(d),
          "condition_number": cond if np.isfinite(cond) else None, "rcond": float(rcond),
          "identifiable": bool(identifiable), "warnings": warnings}


@jax.jit
def _elasticnet_fista(gram, cross, lmax, alpha, l1_ratio, max_iter, tol):
  """FISTA with gradient-based adaptive restart on the centred problem, in Gram form.

  gram [D, D] = r_c^T r_c / N, cross [D, w_dim] = r_c^T w_c / N, lmax: gram's largest
  eigenvalue; returns A [D, w_dim].
  """
  l2 = alpha * (1.0 - l1_ratio)
  step = 1.0 / (lmax + l2)
  thresh = step * alpha * l1_ratio

  def prox_step(v):
    g = gram @ v - cross + l2 * v
    u = v - step * g
    return jnp.sign(u) * jnp.maximum(jnp.abs(u) - thresh, 0.0)

  def body(state):
    a, v, t, it, _ = state
    a_new = prox_step(v)
    restart = jnp.sum((v - a_new) * (a_new - a)) > 0       # momentum points uphill: reset it
    t = jnp.where(restart, 1.0, t)
    t_new = (1 + jnp.sqrt(1 + 4 * t * t)) / 2
    v_new = a_new + ((t - 1) / t_new) * (a_new - a)
    change = jnp.max(jnp.abs(a_new - a)) / jnp.maximum(jnp.max(jnp.abs(a_new)), 1e-30)
    return a_new, v_new, t_new, it + 1, change

  def cond(state):
    return (state[3] < max_iter) & (state[4] > tol)

  a0 = jnp.zeros_like(cross)
  one = jnp.ones((), gram.dtype)
  init = (a0, a0, one, jnp.zeros((), jnp.int32), jnp.asarray(jnp.inf, gram.dtype))
  return jax.lax.while_loop(cond, body, init)[0]


def elasticnet_objective(r, w, A, b, alpha, l1_ratio) -> float:
  """scikit-learn's ElasticNet objective summed over outputs (float64, numpy)."""
  r, w, A, b = (np.asarray(v, np.float64) for v in (r, w, A, b))
  res = w - r @ A - b
  return float((res ** 2).sum() / (2 * r.shape[0]) + alpha * l1_ratio * np.abs(A).sum()
               + 0.5 * alpha * (1 - l1_ratio) * (A ** 2).sum())


# ----------------------------------------------------------------------------- MLP


def mlp_init(key: jax.Array, sizes: Sequence[int]) -> dict:
  """Params of an MLP with layer sizes `sizes` (input, hidden..., output), LeCun-normal."""
  layers = []
  for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
    k = jax.random.fold_in(key, i)
    layers.append({"w": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros((b,))})
  return {"layers": layers}


def mlp_apply(params: dict, r: jax.Array) -> jax.Array:
  """r [..., D] -> [..., w_dim]; ReLU between layers, linear output."""
  h = r
  for i, layer in enumerate(params["layers"]):
    h = h @ layer["w"] + layer["b"]
    if i < len(params["layers"]) - 1:
      h = jax.nn.relu(h)
  return h


def fit_mlp(r: np.ndarray, w: np.ndarray, key: jax.Array, hidden: Sequence[int] = (512,),
            epochs: int = 20, batch_size: int = 256, learning_rate: float = 1e-3) -> dict:
  """Trains an MLP link with Adam on the MSE.

  Args:
    r: [N, D] inputs. w: [N, w_dim] targets.
    key: PRNG key for initialisation and minibatch order.
    hidden: hidden layer widths. epochs, batch_size, learning_rate: Adam schedule.
  Returns:
    the MLP params (see `mlp_init`).
  """
  r = jnp.asarray(r, jnp.float32)
  w = jnp.asarray(w, jnp.float32)
  params = mlp_init(jax.random.fold_in(key, 0), [r.shape[1], *hidden, w.shape[1]])
  opt = optax.adam(learning_rate)
  opt_state = opt.init(params)
  batch_size = min(batch_size, r.shape[0])
  steps = r.shape[0] // batch_size

  @jax.jit
  def epoch(params, opt_state, perm):
    def step(carry, idx):
      params, opt_state = carry
      loss, g = jax.value_and_grad(lambda p: jnp.mean((mlp_apply(p, r[idx]) - w[idx]) ** 2))(params)
      updates, opt_state = opt.update(g, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss
    idx = perm[: steps * batch_size].reshape(steps, batch_size)
    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), idx)
    return params, opt_state, losses.mean()

  for e in range(epochs):
    perm = jax.random.permutation(jax.random.fold_in(key, e + 1), r.shape[0])
    params, opt_state, _ = epoch(params, opt_state, perm)
  return jax.tree_util.tree_map(np.asarray, params)


# ----------------------------------------------------------------------------- metrics


def regression_metrics(w_true: np.ndarray, w_pred: np.ndarray) -> dict[str, Any]:
  """MSE and R^2 overall and per output dimension.

  Returns:
    mse (mean over all entries), mse_per_dim [w_dim], r2_per_dim [w_dim]
    (1 - SS_res / SS_tot per dim), r2 (their mean: scikit-learn's 'uniform_average'),
    r2_variance_weighted (1 - sum SS_res / sum SS_tot).
  """
  t = np.asarray(w_true, np.float64)
  p = np.asarray(w_pred, np.float64)
  ss_res = ((t - p) ** 2).sum(0)
  ss_tot = ((t - t.mean(0)) ** 2).sum(0)
  r2 = 1.0 - ss_res / np.maximum(ss_tot, 1e-300)
  return {"mse": float(((t - p) ** 2).mean()), "mse_per_dim": ((t - p) ** 2).mean(0).tolist(),
          "r2": float(r2.mean()), "r2_per_dim": r2.tolist(),
          "r2_variance_weighted": float(1.0 - ss_res.sum() / ss_tot.sum())}


def cycle(G: Any, clf: Any, link: Link, r: jax.Array) -> jax.Array:
  """r [N, D] -> w = link(r) -> image -> r' [N, D] (the classifier's view of it)."""
  ws = generators.broadcast_ws(link(r), G.num_ws)
  return clf.features(clf.preprocess(G.synthesis(ws)))


def cycle_metrics(r: np.ndarray, r_cycled: np.ndarray) -> dict[str, float]:
  """Correlation of r and r' = cycle(r).

  Returns:
    corr_per_sample_mean: mean over samples of the Pearson correlation across units;
    corr_per_unit_mean: mean over units (with variance) of the correlation across samples;
    mse: mean squared difference.
  """
  a = np.asarray(r, np.float64)
  b = np.asarray(r_cycled, np.float64)

  def corr(x, y, axis):
    x = x - x.mean(axis, keepdims=True)
    y = y - y.mean(axis, keepdims=True)
    den = np.sqrt((x ** 2).sum(axis) * (y ** 2).sum(axis))
    ok = den > 0
    return (x * y).sum(axis)[ok] / den[ok]

  per_unit = corr(a, b, 0)
  return {"corr_per_sample_mean": float(corr(a, b, 1).mean()),
          "corr_per_unit_mean": float(per_unit.mean()) if per_unit.size else float("nan"),
          "mse": float(((a - b) ** 2).mean())}


# ----------------------------------------------------------------------------- save / load


def save(out_dir: str, link: Link, meta: dict | None = None) -> None:
  """Writes `link` as a checkpoint (params Orbax + meta.json with kind 'link')."""
  io.save_checkpoint(out_dir, link.params, {"kind": "link", "link": link.kind, **(meta or {})})


def load(ckpt_dir: str, verify: bool = False) -> Link:
  """Reads a link saved by `save` (float32 params); `verify`: check its params_sha256."""
  params, meta = io.load_checkpoint(ckpt_dir, verify=verify)
  if meta.get("kind") != "link":
    raise io.CheckpointError(f"{ckpt_dir} is not a link checkpoint (kind {meta.get('kind')!r})")
  if meta["link"] == "mlp":
    params = {"layers": [params["layers"][k] for k in sorted(params["layers"], key=int)]} \
        if isinstance(params["layers"], dict) else params
  params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)
  return Link(params=params, kind=meta["link"])


# ----------------------------------------------------------------------------- fit from a config


def fit(c: ml_collections.ConfigDict, r: np.ndarray, w: np.ndarray, key: jax.Array) -> Link:
  """Fits the link named by `c.kind` (a `link` config section) on (r [N, D], w [N, w_dim]);
  prints the fit's warnings (`fit_info`)."""
  return fit_info(c, r, w, key)[0]


def fit_info(c: ml_collections.ConfigDict, r: np.ndarray, w: np.ndarray, key: jax.Array,
             log: bool = True) -> tuple[Link, dict[str, Any]]:
  """(the link named by `c.kind` fitted on (r [N, D], w [N, w_dim]), info).

  info: {'kind'} plus, for linear kinds, `fit_diagnostics`; `log`: print its warnings as
  `[link] warning: ...` lines. `c.rcond` (default RCOND) is the ols cutoff.
  """
  if c.kind not in KINDS:
    raise errors.PipelineError(f"config.link.kind={c.kind!r}; known: {', '.join(KINDS)}")
  info: dict[str, Any] = {"kind": c.kind}
  if c.kind == "mlp":
    params = fit_mlp(r, w, key, hidden=tuple(c.hidden), epochs=c.epochs,
                     batch_size=c.batch_size, learning_rate=c.learning_rate)
  else:
    params, diag = fit_linear_info(r, w, c.kind, alpha=c.alpha, l1_ratio=c.l1_ratio,
                                   float64=c.float64, solver=c.solver, jitter=c.jitter,
                                   max_iter=c.max_iter, tol=c.tol, rcond=c.get("rcond", RCOND))
    info.update(diag)
  for name, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if not np.all(np.isfinite(leaf)):
      raise errors.PipelineError(
          f"the {c.kind} link fit produced NaN/inf ({jax.tree_util.keystr(name)}); check the "
          f"paired data, or try a ridge link with alpha > 0")
  if log:
    for line in info.get("warnings", ()):
      print(f"[link] warning: {line}", flush=True)
  params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)
  return Link(params=params, kind=c.kind), info
