"""W-space projection of images, batched and jitted (StyleGAN-XL's `run_inversion.project`).

    res = project(G, clf, P, targets, key=key, config=default_config())
    res.w [N, w_dim], res.lpips [N], res.psnr [N], res.pred_photo [N], res.pred_recon [N], ...

Per image, as the reference (autonomousvision/stylegan-xl, run_inversion.py `project`,
with the w noise ramp of the StyleGAN2/3 projectors it derives from):
- **Class-conditional start.** The classifier's softmax p on the photo picks the classes
  (the reference samples 10000 classes from p with a DeiT; here the top `class_top_k`
  classes of the pipeline's classifier, p renormalised over them, so the start is
  deterministic: the expectation of the reference's estimate). w_avg = sum_c p_c m_c, with
  m_c the mean of `G.mapping(z, c, psi=1)[:, 0]` over `w_avg_samples` seeded z;
  w_std = sqrt(E ||w - w_avg||^2) over the same mixture (the projectors' w_std).
- **Adam** (betas 0.9, 0.999) on one w per image, broadcast over all ws, from w_avg; the
  learning rate is `initial_learning_rate * ramp(t)`, t = step / num_steps, ramp: cosine
  down over the last `lr_rampdown_length`, linear up over the first `lr_rampup_length`.
- **Noise ramp.** The synthesised w is w + n * w_std * initial_noise_factor *
  max(0, 1 - t / noise_ramp_length)^2, n standard normal (fresh each step, per image).
- **Loss** `lpips_weight * LPIPS(synth, photo) + mse_weight * mean((synth - photo)^2)`
  (images in [-1, 1]; resized by area to 256 px when larger, as the reference).
  Synthesis is noise-free (our generators have no per-layer noise inputs).
Batched: many images at once, each with its own step count and its own early stop (the
loss has not improved by `plateau_rel_tol` (relative) for `plateau_patience` steps, counted
once the noise ramp has ended); the
steps run as jitted `lax.scan` chunks of `chunk_steps`, and a batch ends when all its
images are done. Results per image: the final w, LPIPS and PSNR of the noise-free
reconstruction, the steps run, and the classifier's prediction on photo and reconstruction.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lis_jax.generators.base import broadcast_ws

ADAM_B1, ADAM_B2 = 0.9, 0.999  # torch.optim.Adam defaults (the reference's)
LPIPS_MAX_RES = 256  # the reference downsamples larger images to 256 px (area) for VGG


def default_config() -> ml_collections.ConfigDict:
  """The only home of the inversion's defaults (the reference's values where it has them)."""
  c = ml_collections.ConfigDict()
  c.num_steps = 1000               # reference: 1000 Adam steps
  c.w_avg_samples = 10000          # reference: 10000 z samples for w_avg / w_std (per class here)
  c.class_top_k = 5                # classes of the start mixture (reference: sampled from p)
  c.initial_learning_rate = 0.1    # reference
  c.adam_eps = 1e-8                # reference (torch.optim.Adam's default)
  c.lr_rampdown_length = 0.25      # reference
  c.lr_rampup_length = 0.05        # reference
  c.initial_noise_factor = 0.05    # StyleGAN2/3 projector
  c.noise_ramp_length = 0.75       # StyleGAN2/3 projector
  c.lpips_weight = 1.0
  c.mse_weight = 1.0               # MSE in [-1, 1] units, as pivotal tuning adds it
  c.plateau_patience = 100         # early stop: steps without relative improvement ...
  c.plateau_rel_tol = 1e-4         # ... of the loss by more than this fraction
  c.chunk_steps = 25               # steps per jitted call (progress / early-stop granularity)
  c.batch_size = 16                # images optimised together (restarts count as images)
  c.restarts = 1                   # starts per image, the lowest final loss kept (reference: 1)
  c.restart_spread = 1.0           # restart r >= 1 starts at w_avg + spread * w_std * u, u a
                                   # random unit direction
  c.refine_steps = 0               # Levenberg-Marquardt steps after Adam (0: the reference;
                                   # with restarts: on the kept run only)
  c.refine_damping = 1e-3          # LM's initial damping (times the mean curvature)
  c.refine_directions = 16         # w directions per vectorised Gauss-Newton product
  return c


@dataclasses.dataclass
class Projection:
  """Per-image results of `project` (numpy, row i = targets[i]).

  w [N, w_dim]; loss, lpips, psnr [N] float32 (PSNR in dB for a peak-to-peak of 2, i.e.
  images in [-1, 1], the same as [0, 1] images with peak 1); steps [N] int32 Adam steps
  run; pred_photo, pred_recon [N] int32 classifier argmax; match [N] bool.
  """
  w: np.ndarray
  loss: np.ndarray
  lpips: np.ndarray
  psnr: np.ndarray
  steps: np.ndarray
  pred_photo: np.ndarray
  pred_recon: np.ndarray
  match: np.ndarray

  def __getitem__(self, idx) -> "Projection":
    return Projection(**{f.name: getattr(self, f.name)[idx] for f in dataclasses.fields(self)})


@dataclasses.dataclass(frozen=True)
class _Schedule:
  """The static numbers of the optimisation (hashable: a jit static argument)."""
  lr: float
  rampdown: float
  rampup: float
  noise_factor: float
  noise_ramp: float
  lpips_weight: float
  mse_weight: float
  eps: float
  patience: int
  rel_tol: float
  chunk: int

  @classmethod
  def of(cls, c: ml_collections.ConfigDict) -> "_Schedule":
    return cls(float(c.initial_learning_rate), float(c.lr_rampdown_length),
               float(c.lr_rampup_length), float(c.initial_noise_factor),
               float(c.noise_ramp_length), float(c.lpips_weight), float(c.mse_weight),
               float(c.adam_eps), int(c.plateau_patience), float(c.plateau_rel_tol), int(c.chunk_steps))


def learning_rate(step, num_steps, s: _Schedule):
  """The reference's schedule at `step` of `num_steps` (arrays broadcast)."""
  t = step / jnp.maximum(num_steps, 1)
  ramp = jnp.minimum(1.0, (1.0 - t) / s.rampdown)
  ramp = 0.5 - 0.5 * jnp.cos(ramp * jnp.pi)
  return s.lr * ramp * jnp.minimum(1.0, t / s.rampup)


def noise_scale(step, num_steps, w_std, s: _Schedule):
  """w_std * initial_noise_factor * max(0, 1 - t / noise_ramp_length)^2."""
  t = step / jnp.maximum(num_steps, 1)
  return w_std * s.noise_factor * jnp.maximum(0.0, 1.0 - t / s.noise_ramp) ** 2


# ----------------------------------------------------------------------------- start point


def class_w_stats(G, classes: Sequence[int], n_samples: int, key: jax.Array,
                  batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
  """Per class c: m_c = mean of mapping(z, c, psi=1)[:, 0] and s_c = mean ||w - m_c||^2.

  The same `n_samples` z (drawn from `key`) for every class. Returns ([K, w_dim], [K]).
  """
  z = jax.random.normal(key, (n_samples, G.z_dim), jnp.float32)
  means, sq = [], []
  for c in classes:
    ws = []
    for s in range(0, n_samples, batch):
      zb = z[s:s + batch]
      ws.append(np.asarray(_map_w(G, zb, jnp.full((zb.shape[0],), c, jnp.int32)), np.float64))
    w = np.concatenate(ws)
    m = w.mean(0)
    means.append(m)
    sq.append(((w - m) ** 2).sum(1).mean())
  return np.asarray(means, np.float32), np.asarray(sq, np.float32)


@jax.jit
def _map_w(G, z, c):
  return G.mapping(z, c, psi=1.0)[:, 0]


def start_points(probs: np.ndarray, top_k: int, stats: Callable[[list[int]], tuple]
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Per image the start w_avg [N, w_dim] and w_std [N] of its top-k class mixture.

  Args:
    probs: [N, C] classifier softmax on the photos.
    top_k: classes kept per image (p renormalised over them).
    stats: classes -> (m [K, w_dim], s [K]) as `class_w_stats`.
  """
  k = min(top_k, probs.shape[1])
  top = np.argsort(-probs, axis=1)[:, :k]                                   # [N, k]
  classes = sorted(set(top.ravel().tolist()))
  m, s = stats(classes)
  idx = np.searchsorted(classes, top)                                       # [N, k]
  p = np.take_along_axis(probs, top, 1).astype(np.float64)
  p /= p.sum(1, keepdims=True)
  w_avg = np.einsum("nk,nkd->nd", p, m[idx].astype(np.float64))            # [N, w_dim]
  spread = s[idx] + ((m[idx] - w_avg[:, None]) ** 2).sum(-1)                # [N, k]
  w_std = np.sqrt((p * spread).sum(1))
  return w_avg.astype(np.float32), w_std.astype(np.float32)


# ----------------------------------------------------------------------------- optimisation


def _downsample(img):
  """[N, H, W, 3] -> area-resized to LPIPS_MAX_RES when larger (H a multiple of it)."""
  h = img.shape[1]
  if h <= LPIPS_MAX_RES:
    return img
  f = h // LPIPS_MAX_RES
  n, _, w, c = img.shape
  return img.reshape(n, h // f, f, w // f, f, c).mean((2, 4))


def _synth(G, w):
  return G.synthesis(broadcast_ws(w, G.num_ws))


def _loss(G, P, w, target, target_feats, s: _Schedule):
  """Per-image loss [N] of w [N, w_dim] against the target [N, H, W, 3]."""
  x = _downsample(_synth(G, w))
  mse = jnp.mean((x - target) ** 2, axis=(1, 2, 3))
  loss = s.mse_weight * mse
  if s.lpips_weight:
    loss = loss + s.lpips_weight * P.distance(P.features(x), target_feats)
  return loss


def _init_state(w_avg, num_steps):
  n = w_avg.shape[0]
  zeros = jnp.zeros_like(w_avg)
  return dict(w=w_avg, m=zeros, v=zeros, step=jnp.zeros((n,), jnp.int32),
              best=jnp.full((n,), jnp.inf, jnp.float32), since=jnp.zeros((n,), jnp.int32),
              loss=jnp.full((n,), jnp.inf, jnp.float32), done=num_steps <= 0)


@functools.partial(jax.jit, static_argnames=("s",))
def _run_chunk(G, P, state, target, target_feats, num_steps, w_std, key, s: _Schedule):
  """`s.chunk` masked Adam steps on every image not done; returns the new state."""
  loss_fn = lambda w, noise: _loss(G, P, w + noise, target, target_feats, s)

  def body(st, _):
    step = st["step"]
    active = ~st["done"]
    keys = jax.vmap(lambda k, t: jax.random.fold_in(k, t))(key, step)
    n = jax.vmap(lambda k: jax.random.normal(k, st["w"].shape[1:]))(keys)
    noise = n * noise_scale(step, num_steps, w_std, s)[:, None]
    losses, vjp = jax.vjp(lambda w: loss_fn(w, noise), st["w"])
    g = vjp(jnp.ones_like(losses))[0]
    t = (step + 1).astype(jnp.float32)[:, None]
    m = ADAM_B1 * st["m"] + (1 - ADAM_B1) * g
    v = ADAM_B2 * st["v"] + (1 - ADAM_B2) * g * g
    lr = learning_rate(step, num_steps, s)[:, None]
    upd = lr * (m / (1 - ADAM_B1 ** t)) / (jnp.sqrt(v / (1 - ADAM_B2 ** t)) + s.eps)
    a = active[:, None]
    improved = losses < st["best"] * (1 - s.rel_tol)
    quiet = step >= s.noise_ramp * num_steps   # plateaus count once the noise is off
    since = jnp.where(improved | ~quiet, 0, st["since"] + 1)
    new_step = step + 1
    done = st["done"] | (active & ((new_step >= num_steps) | (since >= s.patience)))
    new = dict(w=jnp.where(a, st["w"] - upd, st["w"]), m=jnp.where(a, m, st["m"]),
               v=jnp.where(a, v, st["v"]), step=jnp.where(active, new_step, step),
               best=jnp.where(active, jnp.minimum(st["best"], losses), st["best"]),
               since=jnp.where(active, since, st["since"]),
               loss=jnp.where(active, losses, st["loss"]), done=done)
    return new, None

  state, _ = jax.lax.scan(body, state, None, length=s.chunk)
  return state


# ----------------------------------------------------------------------------- refinement


def refine(G, P, w, target, target_feats, active, config) -> tuple[jax.Array, jax.Array]:
  """`config.refine_steps` Levenberg-Marquardt steps from w [B, w_dim] (rows not `active`
  [B] are left as they are) -> (w, loss [B]).

  Each step solves (J^T J + lam * mean(diag J^T J) I) d = -J^T r for the pixel residual
  r = synth(w) - target of each image (J: its Jacobian in w, built from vector products
  with reverse mode only, so generators whose ops define only a VJP work too) and keeps
  w + d when it lowers the full noise-free loss (LPIPS and MSE as weighted in `config`);
  lam is divided by 3 on success and multiplied by 4 otherwise, per image. Adam ends
  where the loss is flat in the directions the image hardly shows; Gauss-Newton steps
  are scaled by the curvature and converge there too.
  """
  s = _Schedule.of(config)
  lam = jnp.full(w.shape[:1], float(config.refine_damping), jnp.float32)
  loss = _loss(G, P, w, target, target_feats, s)
  for _ in range(int(config.refine_steps)):
    w, loss, lam = _lm_step(G, P, w, loss, lam, target, target_feats, active, s,
                            int(config.refine_directions))
  return w, loss


def gauss_newton(G, w, target, directions: int) -> tuple[jax.Array, jax.Array]:
  """J^T J [B, w_dim, w_dim] and J^T r [B, w_dim] of r = synth(w) - target per image.

  J v comes from differentiating the (linear) VJP, so only reverse mode is needed;
  `directions` columns of J^T J are computed together."""
  x, f_vjp = jax.vjp(lambda v: _synth(G, v), w)
  jt = lambda u: f_vjp(u)[0]                    # [B, H, W, 3] -> [B, w_dim]
  _, jt_vjp = jax.vjp(jt, jnp.zeros_like(x))
  col = lambda e: jt(jt_vjp(jnp.broadcast_to(e, w.shape))[0])   # [w_dim] -> [B, w_dim]
  eye = jnp.eye(w.shape[1], dtype=w.dtype)
  cols = jax.lax.map(col, eye, batch_size=min(directions, w.shape[1]))  # [w_dim, B, w_dim]
  return jnp.transpose(cols, (1, 2, 0)), jt(x - target)


@functools.partial(jax.jit, static_argnames=("s", "directions"))
def _lm_step(G, P, w, loss, lam, target, target_feats, active, s: _Schedule, directions: int):
  jtj, jtr = gauss_newton(G, w, target, directions)
  jtj = 0.5 * (jtj + jnp.swapaxes(jtj, 1, 2))
  scale = jnp.maximum(jnp.trace(jtj, axis1=1, axis2=2) / w.shape[1], 1e-12)
  eye = jnp.eye(w.shape[1], dtype=w.dtype)
  a = jtj + (lam * scale)[:, None, None] * eye
  d = -jnp.linalg.solve(a, jtr[..., None])[..., 0]
  cand = w + d
  new_loss = _loss(G, P, cand, target, target_feats, s)
  ok = active & jnp.isfinite(new_loss) & (new_loss < loss)
  return (jnp.where(ok[:, None], cand, w), jnp.where(ok, new_loss, loss),
          jnp.where(ok, lam / 3, jnp.minimum(lam * 4, 1e6)))


@jax.jit
def _evaluate(G, clf, P, w, target):
  """Noise-free reconstruction of w [N, w_dim] -> (lpips, psnr, pred_photo, pred_recon)."""
  x = _synth(G, w)
  xd, td = _downsample(x), _downsample(target)
  lp = P(xd, td)
  mse = jnp.mean((jnp.clip(x, -1, 1) - target) ** 2, axis=(1, 2, 3))
  psnr = 10 * jnp.log10(4.0 / jnp.maximum(mse, 1e-12))
  pred_photo = jnp.argmax(clf(clf.preprocess(target)), -1)
  pred_recon = jnp.argmax(clf(clf.preprocess(x)), -1)
  return lp, psnr, pred_photo.astype(jnp.int32), pred_recon.astype(jnp.int32)


@jax.jit
def _probs(clf, target):
  return jax.nn.softmax(clf(clf.preprocess(target)), -1)


@jax.jit
def _target_features(P, target):
  return P.features(_downsample(target))


def project_batch(G, clf, P, targets: np.ndarray, num_steps: np.ndarray, keys: jax.Array,
                  config: ml_collections.ConfigDict, stats: Callable,
                  progress: Optional[Callable[[int], None]] = None,
                  start_dirs: Optional[np.ndarray] = None) -> Projection:
  """One batch: targets [B, H, W, 3] in [-1, 1] (H = G.resolution), num_steps [B] int
  (0: skip, e.g. padding rows), keys [B] the PRNG key of each image's noise. `stats` as
  in `start_points`; `progress(k)` is called with the number of images finished;
  start_dirs [B, w_dim]: the start is w_avg + restart_spread * w_std * start_dirs."""
  s = _Schedule.of(config)
  target = jnp.asarray(targets, jnp.float32)
  num_steps = jnp.asarray(num_steps, jnp.int32)
  w_avg, w_std = start_points(np.asarray(_probs(clf, target)), config.class_top_k, stats)
  if start_dirs is not None:
    w_avg = w_avg + float(config.restart_spread) * w_std[:, None] * start_dirs
  feats = _target_features(P, target)
  state = _init_state(jnp.asarray(w_avg), num_steps)
  reported = int(np.sum(np.asarray(state["done"])))
  while not bool(np.all(np.asarray(state["done"]))):
    state = _run_chunk(G, P, state, target, feats, num_steps, jnp.asarray(w_std), keys, s)
    done = int(np.sum(np.asarray(state["done"])))
    if progress is not None and done > reported:
      progress(done - reported)
    reported = done
  w, loss = state["w"], state["loss"]
  if int(config.refine_steps) > 0:
    w, loss = refine(G, P, w, target, feats, num_steps > 0, config)
  lp, psnr, pp, pr = (np.asarray(a) for a in _evaluate(G, clf, P, w, target))
  return Projection(w=np.asarray(w), loss=np.asarray(loss), lpips=lp,
                    psnr=psnr, steps=np.asarray(state["step"]), pred_photo=pp,
                    pred_recon=pr, match=pp == pr)


def project(G, clf, P, targets: np.ndarray, *, key: jax.Array,
            config: Optional[ml_collections.ConfigDict] = None,
            num_steps: Any = None, progress: Optional[Callable[[int], None]] = None,
            stats_key: Optional[jax.Array] = None, keys: Optional[jax.Array] = None,
            stats: Optional["StatsCache"] = None,
            start_dirs: Optional[np.ndarray] = None) -> Projection:
  """Projects images into W, `config.batch_size` at a time (padded: one compile).

  Args:
    G: a generator (`Generator` protocol); clf: a classifier (class start, predictions);
    P: an `lpips.LPIPS` (loss and metric).
    targets: [N, H, W, 3] float in [-1, 1], H = W = G.resolution.
    key: PRNG key: image i's noise uses `fold_in(fold_in(key, 0), i)`, whatever its batch.
    config: `default_config()` or an override of it.
    num_steps: int or [N] ints (default config.num_steps).
    progress: called with the number of images finished, as they finish.
    stats_key: PRNG key of the z samples for w_avg / w_std (default `fold_in(key, 1)`).
    keys: [N] per-image noise keys, replacing the ones derived from `key`.
    stats: a `StatsCache` to share class statistics across calls (replaces stats_key).
    start_dirs: [N, w_dim] start offsets (in units of restart_spread * w_std); used by
      `config.restarts` > 1, which runs every image from that many starts.
  Returns:
    a `Projection` with N rows.
  """
  config = config or default_config()
  targets = np.asarray(targets, np.float32)
  n = targets.shape[0]
  if targets.ndim != 4 or targets.shape[1:] != (G.resolution, G.resolution, 3):
    raise ValueError(f"targets must be [N, {G.resolution}, {G.resolution}, 3], got {targets.shape}")
  steps = np.broadcast_to(np.asarray(config.num_steps if num_steps is None else num_steps,
                                     np.int32), (n,))
  stats_key = jax.random.fold_in(key, 1) if stats_key is None else stats_key
  stats = stats or StatsCache(G, int(config.w_avg_samples), stats_key)
  bs = int(config.batch_size)
  if keys is None:
    noise_key = jax.random.fold_in(key, 0)
    keys = jax.vmap(lambda i: jax.random.fold_in(noise_key, i))(jnp.arange(n))
  n_restarts = int(config.restarts)
  if n_restarts > 1:   # Adam from every start; the refinement only on the kept run
    coarse = config.copy_and_resolve_references()
    coarse.refine_steps = 0
    res = _best_of_restarts(G, clf, P, targets, steps, keys, coarse, stats, progress, n_restarts)
    return _refined(G, clf, P, targets, res, steps > 0, config)
  out = []
  for s0 in range(0, n, bs):
    m = min(bs, n - s0)
    rows = np.minimum(np.arange(s0, s0 + bs), s0 + m - 1)   # pads repeat the last row ...
    nb = np.where(np.arange(s0, s0 + bs) < s0 + m, steps[rows], 0)  # ... and run no steps
    dirs = None if start_dirs is None else start_dirs[rows]
    res = project_batch(G, clf, P, targets[rows], nb, keys[rows], config, stats, progress, dirs)
    out.append(res[:m])
  return Projection(**{f.name: np.concatenate([getattr(r, f.name) for r in out])
                       for f in dataclasses.fields(Projection)})


def _refined(G, clf, P, targets, res: Projection, active, config) -> Projection:
  """`res` after `config.refine_steps` LM steps (`refine`), batch by batch (padded)."""
  if int(config.refine_steps) < 1:
    return res
  n = targets.shape[0]
  bs = min(int(config.batch_size), n)   # the restarts' batch can exceed the photos
  out = []
  for s0 in range(0, n, bs):
    m = min(bs, n - s0)
    rows = np.minimum(np.arange(s0, s0 + bs), s0 + m - 1)
    act = jnp.asarray(np.where(np.arange(s0, s0 + bs) < s0 + m, active[rows], False))
    target = jnp.asarray(targets[rows])
    w, loss = refine(G, P, jnp.asarray(res.w[rows]), target, _target_features(P, target), act,
                     config)
    lp, psnr, pp, pr = (np.asarray(a) for a in _evaluate(G, clf, P, w, target))
    out.append(Projection(w=np.asarray(w), loss=np.asarray(loss), lpips=lp, psnr=psnr,
                          steps=res.steps[rows], pred_photo=pp, pred_recon=pr,
                          match=pp == pr)[:m])
  return Projection(**{f.name: np.concatenate([getattr(r, f.name) for r in out])
                       for f in dataclasses.fields(Projection)})


RESTART_KEY = 0x7FFFFFFF  # fold_in(image key, this): the restarts' root (never a step index)


def _best_of_restarts(G, clf, P, targets, steps, keys, config, stats, progress, n_restarts):
  """Each image from `n_restarts` starts (restart 0: w_avg, as the reference); the run with
  the lowest final loss is kept. Row i * R + r is image i's restart r."""
  n, w_dim = targets.shape[0], G.w_dim
  roots = jax.vmap(lambda k: jax.random.fold_in(k, RESTART_KEY))(keys)
  r_keys, dirs = [], []
  for r in range(n_restarts):
    r_keys.append(keys if r == 0 else jax.vmap(lambda k: jax.random.fold_in(k, 2 * r))(roots))
    u = np.asarray(jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 2 * r + 1),
                                                        (w_dim,)))(roots))
    dirs.append(np.zeros_like(u) if r == 0 else u / np.linalg.norm(u, axis=1, keepdims=True))
  rep = lambda a: np.repeat(a, n_restarts, axis=0)
  all_keys = jnp.stack(r_keys, axis=1).reshape((n * n_restarts,))
  counted = [0, 0]

  def rows_done(k):   # report whole images: restarts finish at different times
    counted[0] += k
    if progress is not None and counted[0] // n_restarts > counted[1]:
      progress(counted[0] // n_restarts - counted[1])
      counted[1] = counted[0] // n_restarts

  single = config.copy_and_resolve_references()
  single.restarts = 1
  res = project(G, clf, P, rep(targets), key=jax.random.key(0), config=single,
                num_steps=rep(steps), progress=rows_done, keys=all_keys, stats=stats,
                start_dirs=np.stack(dirs, axis=1).reshape(n * n_restarts, w_dim))
  best = np.argmin(res.loss.reshape(n, n_restarts), axis=1) + np.arange(n) * n_restarts
  return res[best]


class StatsCache:
  """Class w statistics computed once per class (`class_w_stats`), shared by batches."""

  def __init__(self, G, n_samples: int, key: jax.Array):
    self.G, self.n, self.key, self.cache = G, n_samples, key, {}

  def __call__(self, classes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    todo = [c for c in classes if c not in self.cache]
    if todo:
      m, s = class_w_stats(self.G, todo, self.n, self.key)
      self.cache.update({c: (m[i], s[i]) for i, c in enumerate(todo)})
    return (np.stack([self.cache[c][0] for c in classes]),
            np.array([self.cache[c][1] for c in classes], np.float32))
