"""A conditional normalizing flow p(w | r) (a conditional INN) and its Gaussian baseline.

After Rombach, Esser, Ommer, "Making Sense of CNNs: Interpreting Deep Representations and
Their Invariances with INNs" (ECCV 2020): an invertible network v = f(w; r) maps a latent w
to a residual v ~ N(0, I) given the classifier's representation r. What r fixes is in the
conditioning; what r leaves open (the classifier's invariances) is in v. Sampling fresh v
for one r gives latents w' = f^-1(v; r) the classifier should not tell apart.

The flow (`ConditionalFlow`, Flax linen) is `n_blocks` blocks, each
  ActNorm (per-dimension affine, data-dependent init: the first batch leaves it with zero
    mean and unit variance)
  -> Mixing (a fixed seeded permutation, then a learned invertible linear map
    W = L (U + diag(exp(s))) in LU form, initialised to the identity; Glow's 1x1 conv)
  -> AffineCoupling (the second half of the dimensions is scaled and shifted by an MLP of
    the first half and of an embedding of r; scales soft-clamped by `clamp * tanh(./clamp)`;
    the last layer starts at zero, so a fresh coupling is the identity)
The embedding of r is an ActNorm (data-dependent standardisation) and a 2-layer MLP,
shared by all blocks. Every layer has an exact log-determinant; forward and inverse are
exact (up to float rounding).

The baseline (`GaussianBaseline`) is the closed form w | r ~ N(link(r), Sigma), Sigma the
residual covariance of the fitted link; it has the same interface (forward / inverse /
nll / sample), so both can be compared by the same code.

NLLs are in nats per sample (summed over the w dimensions).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import shutil
from typing import Any, Callable, Mapping

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lis_jax import io

LOG_2PI = float(np.log(2 * np.pi))


# ----------------------------------------------------------------------------- layers


class ActNorm(nn.Module):
  """y = (x - loc) * exp(log_scale) per feature; data-dependent init from the first batch.

  `init` must run the forward direction on a representative batch (it sets loc to the
  batch mean and log_scale to -log std, floored by `eps`). Returns (y, logdet [N]).
  """
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array, reverse: bool = False) -> tuple[jax.Array, jax.Array]:
    loc = self.param("loc", lambda _: jnp.mean(x, 0))                                    # [D]
    log_scale = self.param("log_scale", lambda _: -0.5 * jnp.log(jnp.var(x, 0) + self.eps))  # [D]
    ld = jnp.broadcast_to(jnp.sum(log_scale), x.shape[:-1])                              # [N]
    if reverse:
      return x * jnp.exp(-log_scale) + loc, -ld
    return (x - loc) * jnp.exp(log_scale), ld


class Mixing(nn.Module):
  """y = x[:, perm] @ W, perm fixed (seeded), W = L (U + diag(exp(log_s))) learned (or I).

  L is unit lower triangular, U strictly upper triangular; both start at zero and log_s at
  zero, so a fresh layer is the permutation alone. log|det W| = sum(log_s).
  """
  perm_seed: int
  learned: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, reverse: bool = False) -> tuple[jax.Array, jax.Array]:
    d = x.shape[-1]
    perm = np.random.default_rng(self.perm_seed).permutation(d)
    inv_perm = np.argsort(perm)
    zero_ld = jnp.zeros(x.shape[:-1], x.dtype)
    if not self.learned:
      return (x[..., inv_perm], zero_ld) if reverse else (x[..., perm], zero_ld)
    lower = self.param("lower", nn.initializers.zeros, (d, d))
    upper = self.param("upper", nn.initializers.zeros, (d, d))
    log_s = self.param("log_s", nn.initializers.zeros, (d,))
    L = jnp.tril(lower, -1) + jnp.eye(d, dtype=x.dtype)                     # [D, D]
    U = jnp.triu(upper, 1) + jnp.diag(jnp.exp(log_s))                       # [D, D]
    ld = jnp.broadcast_to(jnp.sum(log_s), x.shape[:-1])
    if not reverse:
      return x[..., perm] @ L @ U, ld
    y = x.reshape(-1, d)                                                    # [N, D]
    a = jax.scipy.linalg.solve_triangular(U, y.T, trans=1, lower=False)     # a U = y
    b = jax.scipy.linalg.solve_triangular(L, a, trans=1, lower=True, unit_diagonal=True)
    return b.T.reshape(x.shape)[..., inv_perm], -ld


class AffineCoupling(nn.Module):
  """(x1, x2) -> (x1, x2 * exp(s) + t), (s, t) = MLP([x1, emb]); s soft-clamped to (-clamp, clamp)."""
  hidden: int
  depth: int
  clamp: float

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array, reverse: bool = False) -> tuple[jax.Array, jax.Array]:
    d1 = x.shape[-1] // 2
    x1, x2 = x[..., :d1], x[..., d1:]
    h = jnp.concatenate([x1, emb], -1)
    for i in range(self.depth):
      h = nn.gelu(nn.Dense(self.hidden, name=f"dense_{i}")(h))
    out = nn.Dense(2 * x2.shape[-1], kernel_init=nn.initializers.zeros, name="out")(h)
    raw_s, t = jnp.split(out, 2, -1)
    s = self.clamp * jnp.tanh(raw_s / self.clamp)                           # [N, D - d1]
    if reverse:
      return jnp.concatenate([x1, (x2 - t) * jnp.exp(-s)], -1), -jnp.sum(s, -1)
    return jnp.concatenate([x1, x2 * jnp.exp(s) + t], -1), jnp.sum(s, -1)


class ConditionalFlow(nn.Module):
  """v = f(w; r) and its inverse; `__call__(x, r, reverse)` -> (y [N, w_dim], logdet [N]).

  Forward (reverse=False): x = w, y = v, logdet = log|det dv/dw|.
  Inverse (reverse=True): x = v, y = w, logdet = log|det dw/dv| (= minus the forward one).
  Initialise with `init_params` (data-dependent: runs the forward direction on a batch).
  """
  n_blocks: int = 8
  hidden: int = 256          # width of the coupling MLPs
  depth: int = 2             # hidden layers per coupling MLP
  embed_dim: int = 64        # size of the embedding of r every coupling sees
  embed_hidden: int = 256    # hidden width of the embedding MLP
  clamp: float = 2.0         # |log scale| bound of a coupling
  learned_mixing: bool = True
  perm_seed: int = 0         # seed of the fixed permutations (block k uses perm_seed + k)

  def embed(self, r: jax.Array) -> jax.Array:
    h, _ = ActNorm(name="r_norm")(r)
    h = nn.gelu(nn.Dense(self.embed_hidden, name="embed_0")(h))
    return nn.Dense(self.embed_dim, name="embed_1")(h)                      # [N, embed_dim]

  @nn.compact
  def __call__(self, x: jax.Array, r: jax.Array, reverse: bool = False) -> tuple[jax.Array, jax.Array]:
    emb = self.embed(r)
    logdet = jnp.zeros(x.shape[:-1], x.dtype)
    blocks = range(self.n_blocks - 1, -1, -1) if reverse else range(self.n_blocks)
    for k in blocks:
      layers = [
          lambda h, rev, k=k: ActNorm(name=f"actnorm_{k}")(h, rev),
          lambda h, rev, k=k: Mixing(self.perm_seed + k, self.learned_mixing, name=f"mixing_{k}")(h, rev),
          lambda h, rev, k=k: AffineCoupling(self.hidden, self.depth, self.clamp,
                                             name=f"coupling_{k}")(h, emb, rev),
      ]
      for layer in (layers[::-1] if reverse else layers):
        x, ld = layer(x, reverse)
        logdet = logdet + ld
    return x, logdet


# ----------------------------------------------------------------------------- fitted models


def _spec_tuple(spec: Mapping[str, Any]) -> tuple:
  return tuple(sorted(dict(spec).items()))


def module_spec(module: ConditionalFlow) -> tuple:
  """The architecture fields of `module` as the sorted (name, value) tuple `Flow.spec` holds."""
  return _spec_tuple({f.name: getattr(module, f.name) for f in dataclasses.fields(module)
                      if f.name not in ("parent", "name")})


class Flow(flax.struct.PyTreeNode):
  """A trained conditional flow: a pytree (params are leaves; the architecture is static).

  params: the `ConditionalFlow` params.
  spec: the `ConditionalFlow` fields as a sorted tuple of (name, value) (`module_spec`).
  base: None, or a `GaussianBaseline` the flow refines: then v = f(u; r) with
    u = chol^-1 (w - link(r)) the baseline's whitened residual, and log-dets add up. A
    flow with fresh (identity) couplings is then the baseline itself, so training starts
    from the closed form and only has to learn what it misses.
  """
  params: Any
  spec: tuple = flax.struct.field(pytree_node=False, default=())
  base: Any = None

  @property
  def module(self) -> ConditionalFlow:
    return ConditionalFlow(**dict(self.spec))

  def forward(self, w: jax.Array, r: jax.Array) -> tuple[jax.Array, jax.Array]:
    """w [N, w_dim], r [N, D] -> v [N, w_dim], log|det dv/dw| [N]."""
    ld0 = 0.0
    if self.base is not None:
      w, ld0 = self.base.forward(w, r)
    v, ld = self.module.apply({"params": self.params}, w, r)
    return v, ld + ld0

  def inverse(self, v: jax.Array, r: jax.Array) -> jax.Array:
    """v [N, w_dim], r [N, D] -> w [N, w_dim]."""
    w = self.module.apply({"params": self.params}, v, r, reverse=True)[0]
    return w if self.base is None else self.base.inverse(w, r)

  def nll(self, w: jax.Array, r: jax.Array) -> jax.Array:
    """-log p(w | r) [N] in nats."""
    v, logdet = self.forward(w, r)
    return 0.5 * jnp.sum(v * v, -1) + 0.5 * w.shape[-1] * LOG_2PI - logdet

  def sample(self, r: jax.Array, key: jax.Array, temperature: float = 1.0) -> jax.Array:
    """One w' = f^-1(v'; r) per row of r [N, D], v' ~ N(0, temperature^2 I) -> [N, w_dim]."""
    v = temperature * jax.random.normal(key, (r.shape[0], self.w_dim), r.dtype)
    return self.inverse(v, r)

  @property
  def w_dim(self) -> int:
    return int(self.params["actnorm_0"]["loc"].shape[0])


def flow_nll(module: ConditionalFlow, params: Any, w: jax.Array, r: jax.Array) -> jax.Array:
  """-log p(w | r) = |v|^2 / 2 + d log(2 pi) / 2 - log|det dv/dw|, per sample [N]."""
  v, logdet = module.apply({"params": params}, w, r)
  return 0.5 * jnp.sum(v * v, -1) + 0.5 * w.shape[-1] * LOG_2PI - logdet


def init_params(module: ConditionalFlow, key: jax.Array, w: jax.Array, r: jax.Array) -> Any:
  """Params of `module`, with ActNorms initialised from the batch (w [N, w_dim], r [N, D])."""
  return _jitted_init(module_spec(module))(key, jnp.asarray(w, jnp.float32),
                                           jnp.asarray(r, jnp.float32))["params"]


@functools.lru_cache(maxsize=8)
def _jitted_init(spec: tuple):
  return jax.jit(ConditionalFlow(**dict(spec)).init)


@jax.jit
def _base_forward(base, w, r):
  return base.forward(w, r)


class GaussianBaseline(flax.struct.PyTreeNode):
  """w | r ~ N(link(r), Sigma): the closed-form baseline, with the `Flow` interface.

  link: a callable pytree r [N, D] -> w [N, w_dim] (e.g. `linking.Link`).
  chol: [w_dim, w_dim] lower Cholesky factor of Sigma. v = chol^-1 (w - link(r)).
  """
  link: Any
  chol: jax.Array

  def forward(self, w: jax.Array, r: jax.Array) -> tuple[jax.Array, jax.Array]:
    """w [N, w_dim], r [N, D] -> whitened residual v [N, w_dim], log|det dv/dw| [N]."""
    res = w - self.link(r)
    v = jax.scipy.linalg.solve_triangular(self.chol, res.T, lower=True).T
    ld = -jnp.sum(jnp.log(jnp.diag(self.chol)))
    return v, jnp.broadcast_to(ld, w.shape[:-1])

  def inverse(self, v: jax.Array, r: jax.Array) -> jax.Array:
    return self.link(r) + v @ self.chol.T

  def nll(self, w: jax.Array, r: jax.Array) -> jax.Array:
    """-log N(w; link(r), Sigma) [N] in nats."""
    v, ld = self.forward(w, r)
    return 0.5 * jnp.sum(v * v, -1) + 0.5 * w.shape[-1] * LOG_2PI - ld

  def sample(self, r: jax.Array, key: jax.Array, temperature: float = 1.0) -> jax.Array:
    v = temperature * jax.random.normal(key, (r.shape[0], self.chol.shape[0]), r.dtype)
    return self.inverse(v, r)


def fit_baseline(link: Any, r: np.ndarray, w: np.ndarray, jitter: float = 1e-6) -> GaussianBaseline:
  """Sigma = mean of (w - link(r))(w - link(r))^T over the given (training) pairs.

  Args:
    link: the fitted link (r [N, D] -> w [N, w_dim]).
    r: [N, D], w: [N, w_dim] training pairs.
    jitter: added to Sigma's diagonal, relative to its mean eigenvalue (keeps it positive
      definite when the residuals do not span every direction).
  """
  res = np.asarray(w, np.float64) - np.asarray(link(jnp.asarray(r, jnp.float32)), np.float64)
  sigma = res.T @ res / res.shape[0]                                        # [w_dim, w_dim]
  sigma += jitter * np.trace(sigma) / sigma.shape[0] * np.eye(sigma.shape[0])
  return GaussianBaseline(link=link, chol=jnp.asarray(np.linalg.cholesky(sigma), jnp.float32))


# ----------------------------------------------------------------------------- plausibility

# A held-out NLL more than this many nats per w dimension above the r-blind reference
# (a diagonal Gaussian of w fitted on the training pairs, `reference_nll`) is implausible:
# a model that ignored r would do that well, so a density e^2 ~ 7x lower per dimension
# means a singular covariance or a diverged flow, not a weak fit. Measured on synthetic
# data (tests/test_flows.py): like the small config (129 link unknowns, 108
# pairs, which gave 6.7e12), w_dim 16: baseline 1.3e13 vs a reference of 24.1; 150 pairs,
# r_dim 64, w_dim 64 (overfitted): 433 vs 98; well-determined fits stay below their
# reference (600 pairs, r_dim 8, w_dim 4: 3.1 vs 5.4; 300, 20, 8: 5.8 vs 12.5).
# The demo (README): flow -32.9 and baseline -28.3 against a reference of about 42.3
# (w_dim 64, its 5400 training / 600 held-out pairs): far below the threshold.
IMPLAUSIBLE_NATS_PER_DIM = 2.0


def reference_nll(w_train: np.ndarray, w_test: np.ndarray, eps: float = 1e-6) -> float:
  """Mean held-out NLL (nats per sample) of w under N(mean, diag(var)) of the training w.

  The r-blind yardstick of `fit_warnings`: well defined from 2 training pairs on,
  whatever w_dim. w_train: [N, w_dim], w_test: [M, w_dim].
  """
  w_train, w_test = np.asarray(w_train, np.float64), np.asarray(w_test, np.float64)
  mu, var = w_train.mean(0), w_train.var(0)
  var = var + eps * max(float(var.mean()), 1e-12)
  z = (w_test - mu) ** 2 / var
  const = 0.5 * np.sum(np.log(var)) + 0.5 * w_train.shape[1] * LOG_2PI
  return float(np.mean(0.5 * z.sum(-1)) + const)


def fit_warnings(n_train: int, r_dim: int, w_dim: int, nll: Mapping[str, float],
                 reference: float | None = None) -> list[str]:
  """One-line warnings for fits of w | r whose numbers cannot be trusted, each saying
  what to change.

  Underdetermined: the link has r_dim + 1 unknowns per w dimension (with its intercept):
  with as many or more than the n_train training pairs it interpolates them, so the
  baseline's residual covariance (rank <= n_train - r_dim - 1) is singular; the flow is
  fitted to n_train points in w_dim dimensions. Implausible: a held-out NLL that is not
  finite or exceeds `reference` (`reference_nll`) by IMPLAUSIBLE_NATS_PER_DIM * w_dim.
  Args:
    nll: model name ('flow', 'baseline') -> mean held-out NLL in nats per sample.
  """
  out = []
  unknowns = r_dim + 1
  more = "add training pairs (paired_data.n_per_class, or more classes)"
  if unknowns >= n_train:
    out.append(f"the link has {unknowns} unknowns per w dimension but {n_train} training "
               f"pairs: it is underdetermined and fits them exactly; {more} (at least "
               f"{2 * unknowns} pairs), or use link.kind='ridge'")
  elif n_train - unknowns < w_dim:
    out.append(f"the baseline's {w_dim}x{w_dim} residual covariance has rank at most "
               f"{n_train - unknowns} ({n_train} training pairs less {unknowns} link unknowns): "
               f"it is singular; {more} (at least {unknowns + 2 * w_dim} pairs)")
  if n_train <= w_dim:
    out.append(f"the flow is trained on {n_train} pairs in {w_dim} dimensions: "
               f"underdetermined; {more}")
  for name, v in sorted(nll.items()):
    if not np.isfinite(v):
      out.append(f"held-out NLL of the {name} is {v}: the fit failed; {more}, or lower the "
                 f"learning rate")
    elif reference is not None and v > reference + IMPLAUSIBLE_NATS_PER_DIM * w_dim:
      out.append(f"held-out NLL of the {name} is {v:.4g} nats, implausibly above {reference:.4g} "
                 f"for a Gaussian that ignores r: the fit is degenerate (overfitted or "
                 f"singular); {more}")
  return out


# ----------------------------------------------------------------------------- training


@dataclasses.dataclass(frozen=True)
class TrainSpec:
  """How the flow is trained (Adam with cosine decay on the mean NLL per sample)."""
  epochs: int = 100
  batch_size: int = 256
  learning_rate: float = 1e-3
  warmup_steps: int = 100
  weight_decay: float = 0.0
  clip_norm: float = 10.0      # global gradient norm clip
  save_every: int = 10         # epochs between resumable checkpoints (with a state_dir)


def optimizer(spec: TrainSpec, steps_per_epoch: int) -> optax.GradientTransformation:
  total = max(spec.epochs * steps_per_epoch, 1)
  warmup = min(spec.warmup_steps, total - 1)
  schedule = optax.warmup_cosine_decay_schedule(0.0, spec.learning_rate, warmup, total)
  return optax.chain(optax.clip_by_global_norm(spec.clip_norm),
                     optax.adamw(schedule, weight_decay=spec.weight_decay))


@functools.lru_cache(maxsize=8)
def _make_epoch(spec: tuple, train_spec: TrainSpec, steps: int, batch_size: int):
  """A jitted epoch: (params, opt_state, w [N, d], r [N, D], key) -> (params, opt_state, mean NLL).

  Cached on (architecture, training spec, batch shape) so repeated or resumed trainings
  reuse one compiled program.
  """
  module = ConditionalFlow(**dict(spec))
  opt = optimizer(train_spec, steps)

  def loss_fn(params, w, r):
    return jnp.mean(flow_nll(module, params, w, r))

  @jax.jit
  def epoch(params, opt_state, w, r, key):
    steps = w.shape[0] // batch_size
    idx = jax.random.permutation(key, w.shape[0])[: steps * batch_size].reshape(steps, batch_size)

    def step(carry, rows):
      params, opt_state = carry
      loss, g = jax.value_and_grad(loss_fn)(params, w[rows], r[rows])
      updates, opt_state = opt.update(g, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), idx)
    return params, opt_state, losses.mean()

  return epoch


def train(module: ConditionalFlow, w: np.ndarray, r: np.ndarray, key: jax.Array, spec: TrainSpec,
          base: GaussianBaseline | None = None, state_dir: str | None = None,
          after_save: Callable[[int], None] | None = None,
          log: Callable[[str], None] | None = None) -> tuple[Flow, list[float]]:
  """Trains `module` on pairs (w [N, w_dim], r [N, D]) by minimising the mean NLL of w.

  With `base`, the module models the baseline's whitened residual (see `Flow`); the
  reported losses are still NLLs of w.

  Deterministic in `key`: the ActNorms are initialised on `batch_size` rows drawn with
  fold_in(key, 0) (a representative batch: rows may come sorted by class), epoch e
  shuffles with fold_in(key, e + 1). With `state_dir`, params, optimizer state and the per-epoch
  losses are checkpointed (Orbax, atomically) every `spec.save_every` epochs and at the
  end; a later call with the same arguments resumes from the last checkpoint and returns
  exactly what an uninterrupted run returns. `after_save(epoch)` runs after each save
  (the kill-test hook).

  Returns:
    the trained Flow and the mean training NLL of every epoch.
  """
  w = jnp.asarray(w, jnp.float32)
  r = jnp.asarray(r, jnp.float32)
  offset = 0.0  # NLL of w = NLL of u - log|det du/dw|, a constant for a Gaussian base
  if base is not None:
    w, ld0 = _base_forward(base, w, r)
    offset = -float(ld0[0])
  batch_size = min(spec.batch_size, w.shape[0])
  steps = w.shape[0] // batch_size
  arch = module_spec(module)
  opt = optimizer(spec, steps)
  init_rows = jax.random.permutation(jax.random.fold_in(key, 0), w.shape[0])[:batch_size]
  params = init_params(module, jax.random.fold_in(key, 0), w[init_rows], r[init_rows])
  opt_state = opt.init(params)
  start, losses = 0, []
  if state_dir is not None and os.path.isdir(state_dir):
    params, opt_state, start, losses = load_state(state_dir, params, opt_state)
    losses = [x + offset for x in losses]
  epoch_fn = _make_epoch(arch, spec, steps, batch_size)
  for e in range(start, spec.epochs):
    params, opt_state, loss = epoch_fn(params, opt_state, w, r, jax.random.fold_in(key, e + 1))
    losses.append(float(loss) + offset)
    if log is not None:
      log(f"epoch {e + 1}/{spec.epochs}: train NLL {losses[-1]:.4f}")
    if state_dir is not None and ((e + 1) % spec.save_every == 0 or e + 1 == spec.epochs):
      save_state(state_dir, params, opt_state, e + 1, [x - offset for x in losses])
      if after_save is not None:
        after_save(e + 1)
  return Flow(params=jax.tree_util.tree_map(np.asarray, params), spec=arch, base=base), losses


def save_state(state_dir: str, params: Any, opt_state: Any, epoch: int, losses: list[float]) -> None:
  """Checkpoints a training state (params, optimizer state leaves, epoch, losses) atomically."""
  leaves = jax.tree_util.tree_leaves(opt_state)
  tree = {"params": params, "opt": {f"{i:05d}": leaf for i, leaf in enumerate(leaves)}}
  io.save_checkpoint(state_dir, tree, {"kind": "flow_train_state", "epoch": int(epoch),
                                       "losses": [float(x) for x in losses]})


def load_state(state_dir: str, params: Any, opt_state: Any) -> tuple[Any, Any, int, list[float]]:
  """Restores what `save_state` wrote, into the structure of the given fresh params / opt_state."""
  leaves, treedef = jax.tree_util.tree_flatten(opt_state)
  expected = {"params": params, "opt": {f"{i:05d}": leaf for i, leaf in enumerate(leaves)}}
  tree, meta = io.load_checkpoint(state_dir, expected=expected)
  if meta.get("kind") != "flow_train_state":
    raise io.CheckpointError(f"{state_dir} is not a flow training state (kind {meta.get('kind')!r})")
  restored = jax.tree_util.tree_unflatten(
      treedef, [jnp.asarray(tree["opt"][f"{i:05d}"], jnp.asarray(l).dtype) for i, l in enumerate(leaves)])
  params = jax.tree_util.tree_map(lambda a, ref: jnp.asarray(a, jnp.asarray(ref).dtype),
                                  tree["params"], params)
  return params, restored, int(meta["epoch"]), list(meta["losses"])


# ----------------------------------------------------------------------------- save / load


def save(out_dir: str, flow: Flow, meta: Mapping[str, Any] | None = None) -> None:
  """Writes a trained flow's own params (Orbax) + meta.json {kind: 'flow', spec, has_base, ...}.

  A base is not stored here (its link lives in its own checkpoint): `load` takes it back.
  """
  io.save_checkpoint(out_dir, flow.params, {"kind": "flow", "spec": dict(flow.spec),
                                            "has_base": flow.base is not None, **(meta or {})})


def load(ckpt_dir: str, base: GaussianBaseline | None = None) -> Flow:
  """Reads a flow written by `save`; `base` is required iff it was trained with one.

  Raises:
    io.CorruptFileError: the checkpoint is missing or damaged (meta.json truncated or not
      JSON, params missing, unreadable or not matching their checksum): recomputable, so
      the runner has the stage that owns it run again.
    io.CheckpointError: an intact checkpoint of something else, or with(out) a base other
      than `base` says.
  """
  params, meta = _read_saved(ckpt_dir)
  return _saved_flow(ckpt_dir, params, meta, base)


def _read_saved(ckpt_dir: str) -> tuple[Any, dict]:
  meta_path = os.path.join(ckpt_dir, io.META_FILE)
  try:
    return io.load_checkpoint(ckpt_dir, verify=True)
  except io.CheckpointError as e:
    raise io.CorruptFileError(meta_path, f"flow checkpoint missing or damaged ({e})") from None


def load_or_none(ckpt_dir: str, base: GaussianBaseline | None = None,
                 log: Callable[[str], None] = print) -> Flow | None:
  """The flow saved in `ckpt_dir`, or None when there is none or it is damaged.

  Damaged (see `load`): the directory is removed and one line logged, so the caller
  trains it again (a flow is recomputable from its stage's inputs).
  Raises:
    io.CheckpointError: as `load` (a different config, not damage).
  """
  if not os.path.lexists(ckpt_dir):
    return None
  try:
    params, meta = _read_saved(ckpt_dir)
  except io.CorruptFileError as e:
    if os.path.islink(ckpt_dir) or not os.path.isdir(ckpt_dir):
      raise   # not a directory this code wrote: left for the user
    log(f"[flows] {e}; recomputing it")
    shutil.rmtree(ckpt_dir)
    return None
  return _saved_flow(ckpt_dir, params, meta, base)


def _saved_flow(ckpt_dir: str, params: Any, meta: Mapping[str, Any],
                base: GaussianBaseline | None) -> Flow:
  if meta.get("kind") != "flow":
    raise io.CheckpointError(f"{ckpt_dir} is not a flow checkpoint (kind {meta.get('kind')!r})")
  if bool(meta.get("has_base")) != (base is not None):
    raise io.CheckpointError(f"{ckpt_dir}: the flow was trained {'with' if meta.get('has_base') else 'without'} "
                             f"a Gaussian base; load it {'with' if meta.get('has_base') else 'without'} one")
  params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)
  return Flow(params=params, spec=_spec_tuple(meta["spec"]), base=base)
