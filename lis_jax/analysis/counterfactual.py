"""What a shift of the classifier's representation does to the generated image: shared by
the counterfactual stage (its search and its image-domain check), the boundary stage (its
crossing search) and the photos stage (counterfactuals from inverted photos).

The reference's search, for a representation r of an origin-class image: find a shift s
by SGD on
  loss(s) = -logit_target(r - s) + w_origin * logit_origin(r - s) - w_cos * cos(link(r), link(r - s))
stopping once the classifier applied to G.synthesis(link(relu(r - s))) predicts the
target (`search`; many searches in one jitted `lax.while_loop`).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from lis_jax import generators
from lis_jax import images


def image_logits(G: Any, clf: Any, link: Any, r_shifted: jax.Array) -> jax.Array:
  """The classifier's logits [B, C] on the image generated from link(relu(r_shifted)) [B, D]."""
  ws = generators.broadcast_ws(link(jax.nn.relu(r_shifted)), G.num_ws)
  return clf(clf.preprocess(G.synthesis(ws)))


def _pick(x: jax.Array, idx: jax.Array) -> jax.Array:
  """x [B, C], idx [B] -> x[b, idx[b]] [B]."""
  return jnp.take_along_axis(x, idx[:, None], axis=1)[:, 0]


def _cos(a: jax.Array, b: jax.Array) -> jax.Array:
  """Row-wise cosine similarity of [B, K] arrays (torch's eps convention)."""
  den = jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1), 1e-8)
  return (a * b).sum(-1) / den


def search_loss(G: Any, clf: Any, link: Any, r: jax.Array, shift: jax.Array, origin: jax.Array,
                target: jax.Array, *, w_origin: float, w_cos: float, mode: str) -> jax.Array:
  """Per-search loss [B] (see the module docstring); r, shift [B, D], origin/target [B]."""
  r_shifted = r - shift
  logits = clf.head(r_shifted) if mode == "reference" else image_logits(G, clf, link, r_shifted)
  cos = _cos(link(r), link(r_shifted))
  return -_pick(logits, target) + w_origin * _pick(logits, origin) - w_cos * cos


def _on_rows(fn: Any, rows: jax.Array, n: int) -> jax.Array:
  """fn(rows) [k, ...] scattered into zeros [n, ...] at `rows` [k]."""
  out = fn(rows)
  return jnp.zeros((n,) + out.shape[1:], out.dtype).at[rows].set(out)


def search(G: Any, clf: Any, link: Any, r: jax.Array, origin: jax.Array, target: jax.Array,
           shift0: jax.Array, active: jax.Array, *, lr: float, max_steps: int, check_every: int,
           w_origin: float, w_cos: float, mode: str, compact_rows: int = 0) -> dict[str, jax.Array]:
  """Runs B counterfactual searches at once (jit with the keyword-only args static).

  Args:
    G, clf, link: generator, classifier, link (pytrees).
    r: [B, D] start representations. origin, target: [B] class ids.
    shift0: [B, D] initial shifts (the reference: uniform in [0, 1)).
    active: [B] bool; False rows (batch padding) are finished from the start.
    lr: SGD learning rate. max_steps: per-search step cap.
    check_every: run the image-domain stopping check every this many steps.
    w_origin, w_cos: loss weights. mode: 'reference' or 'image'.
    compact_rows: once at most this many searches are still running, the expensive
      parts (the image check; in 'image' mode also the gradient) run on those rows only,
      in compiled branches of compact_rows, compact_rows / 4, ..., 1 rows (the smallest
      that fits). 0: always on all B rows. The results are the same either way.
  Returns:
    shift [B, D] (final), steps [B] (SGD steps taken), success [B] bool.
  """
  n = r.shape[0]
  all_rows = jnp.arange(n)

  def grad_rows(s, rows):   # searches are independent: row b gets its own gradient
    loss = lambda sub: search_loss(G, clf, link, r[rows], sub, origin[rows], target[rows],
                                   w_origin=w_origin, w_cos=w_cos, mode=mode).sum()
    return jax.grad(loss)(s[rows])

  def check_rows(s, rows):
    return image_logits(G, clf, link, r[rows] - s[rows]).argmax(-1) == target[rows]

  # Row counts the compacted branches run on: compact_rows, compact_rows / 4, ..., 1.
  levels = sorted({max(1, compact_rows // 4 ** i) for i in range(16)}) if compact_rows else []

  def on_running(fn, s, done, expensive):
    """fn(s, rows) for all rows, or only for the running ones when few are left."""
    if not (levels and expensive and levels[-1] < n):
      return fn(s, all_rows)
    running = jnp.argsort(done, stable=True)[:levels[-1]]      # running rows first
    branches = [functools.partial(_on_rows, lambda rows: fn(s, rows), running[:k], n) for k in levels]
    branches.append(lambda: fn(s, all_rows))
    level = jnp.searchsorted(jnp.asarray(levels), (~done).sum())   # smallest level that fits
    return jax.lax.switch(level, branches)

  def sgd(j, carry):
    s, steps, done, it = carry
    move = ~done & (it + j < max_steps)
    g = on_running(grad_rows, s, done, expensive=mode == "image")
    s = jnp.where(move[:, None], s - lr * g, s)
    return s, steps + move.astype(jnp.int32), done, it

  def body(state):
    s, steps, done, success, it = state
    s, steps, _, _ = jax.lax.fori_loop(0, check_every, sgd, (s, steps, done, it))
    hit = ~done & on_running(check_rows, s, done, expensive=True)
    return s, steps, done | hit, success | hit, it + check_every

  def cond(state):
    return (state[4] < max_steps) & ~jnp.all(state[2])

  init = (shift0, jnp.zeros((n,), jnp.int32), ~active, jnp.zeros((n,), bool), jnp.zeros((), jnp.int32))
  s, steps, _, success, _ = jax.lax.while_loop(cond, body, init)
  return {"shift": s, "steps": steps, "success": success}


def outcome(G: Any, clf: Any, link: Any, w_before: jax.Array, r: jax.Array, shift: jax.Array,
            *, top_units: int) -> dict[str, jax.Array]:
  """Images and class probabilities before/after, and the most shifted units.

  Args:
    w_before: [B, w_dim] the origin images' w. r, shift: [B, D].
  Returns:
    img_before, img_after uint8 [B, H, W, 3]; w_after [B, w_dim] = link(relu(r - shift));
    probs_before, probs_after [B, C]; top_units int32, top_shift [B, top_units] (by |shift|).
  """
  w_after = link(jax.nn.relu(r - shift))
  out = {"w_after": w_after}
  for name, w in (("before", w_before), ("after", w_after)):
    img = G.synthesis(generators.broadcast_ws(w, G.num_ws))
    out[f"img_{name}"] = images.to_uint8(img)
    out[f"probs_{name}"] = jax.nn.softmax(clf(clf.preprocess(img)), axis=-1)
  _, idx = jax.lax.top_k(jnp.abs(shift), top_units)
  out["top_units"] = idx.astype(jnp.int32)
  out["top_shift"] = jnp.take_along_axis(shift, idx, axis=1)
  return out


_search = jax.jit(search, static_argnames=("lr", "max_steps", "check_every", "w_origin", "w_cos", "mode",
                                          "compact_rows"))
_outcome = jax.jit(outcome, static_argnames=("top_units",))


@functools.partial(jax.jit, static_argnames=("top_units", "lr", "max_steps", "check_every", "w_origin",
                                             "w_cos", "mode", "compact_rows"))
def _search_outcome(G, clf, link, rows, *, top_units, **statics):
  """`search` then `outcome` on rows (r, origin, target, shift0, active, w_before): one
  chunk of a batch file's searches (memory.map_chunks' form)."""
  r, origin, target, shift0, active, w_before = rows
  res = search(G, clf, link, r, origin, target, shift0, active, **statics)
  return {**res, **outcome(G, clf, link, w_before, r, res["shift"], top_units=top_units)}


def initial_shift(key: jax.Array, search_ids: jax.Array, dim: int) -> jax.Array:
  """Uniform [0, 1) start shifts [B, dim], a pure function of (key, search id);
  key: the stage's stream key `ctx.key("counterfactual")`."""
  return jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i), (dim,)))(search_ids)
