"""Null directions with the units' geometry.

A unit's sweep sets one coordinate of the classifier representation r to a range of
values and maps r to w with the link: in w it moves along the link's column for that
unit, inside the subspace w's data occupy. A null sweep must move w the same way, or a
unit stands out merely for moving where random directions never go. So the nulls here
are drawn in r-space and pushed through the same link:

  quantify   `rspace_ends`: from each start sample's own r, a shift L_k d_k with d_k a
             uniformly random unit vector in r-space and L_k one of the units' swept
             ranges (max - min of the unit's values) drawn at random: a unit sweep is
             the shift (max_u - min_u) e_u, a null sweep the same length along a random
             direction, so the two differ only in the direction.
  boundary   `boundary_ends`: a counterfactual path is w(t) = link(relu(r - t s)); its
             null path from the same r is link(relu(r - t_c |s| d)) with d random, t_c
             the path's crossing: the same shift norm, the same relu and link, only the
             direction differs.

`isotropic_w_ends` is the earlier null (random directions in w, lengths matched in w),
kept behind a switch (`null_space = 'w'`) to show both side by side.
All functions take a PRNG key; the same key gives the same draws.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

SPACES = ("r", "w")


def unit_directions(key: jax.Array, n: int, dim: int) -> np.ndarray:
  """[n, dim] uniformly random unit vectors (float64)."""
  d = np.asarray(jax.random.normal(key, (n, dim)), np.float64)
  return d / np.linalg.norm(d, axis=-1, keepdims=True)


def rspace_shifts(key: jax.Array, ranges: np.ndarray, draws: int, dim: int) -> np.ndarray:
  """[draws, dim] r-space shifts L_k d_k: d_k random unit vectors, L_k drawn from `ranges` [U]."""
  kd, kl = jax.random.split(key)
  d = unit_directions(kd, draws, dim)
  pick = np.asarray(jax.random.randint(kl, (draws,), 0, len(ranges)))
  return np.asarray(ranges, np.float64)[pick][:, None] * d


def rspace_ends(link: Callable, r_start: np.ndarray, ranges: np.ndarray, draws: int, key: jax.Array
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Start and end points of null sweeps in r-space, pushed through the link.

  Args:
    link: r [..., D] -> w [..., w_dim].
    r_start: [S, D] the start samples' representations.
    ranges: [U] the units' swept ranges |values[-1] - values[0]|.
    draws: R null directions, each applied to every start sample.
    key: PRNG key.
  Returns:
    w_start [S, w_dim] = link(r_start), ends [R, S, w_dim] = link(r_start + shift_k),
    lengths [R] the shifts' r-space norms (the units' are their ranges).
  """
  r_start = np.asarray(r_start, np.float32)
  shifts = rspace_shifts(key, ranges, draws, r_start.shape[-1]).astype(np.float32)  # [R, D]
  w_start = np.asarray(link(jnp.asarray(r_start)), np.float32)
  ends = np.asarray(link(jnp.asarray(r_start[None] + shifts[:, None])), np.float32)
  return w_start, ends, np.linalg.norm(shifts, axis=-1)


def isotropic_w_ends(w_start: np.ndarray, lengths: np.ndarray, draws: int, key: jax.Array
                     ) -> tuple[np.ndarray, np.ndarray]:
  """The earlier null: ends [R, S, w_dim] = w_start + l_k d_k with d_k isotropic in w and
  l_k drawn from the units' w-space sweep lengths [U]; and those lengths [R]."""
  kd, kl = jax.random.split(key)
  d = unit_directions(kd, draws, w_start.shape[-1])
  length = np.asarray(lengths, np.float64)[np.asarray(jax.random.randint(kl, (draws,), 0, len(lengths)))]
  return (w_start[None] + length[:, None, None] * d[:, None]).astype(np.float32), length


def boundary_ends(link: Callable, r: np.ndarray, shift: np.ndarray, t_cross: np.ndarray,
                  key: jax.Array, search_ids: np.ndarray, draws: int) -> np.ndarray:
  """Null path ends in r-space: link(relu(r - t_c |s| d)) for R random unit vectors d.

  Args:
    link: r -> w. r, shift: [B, D] the searches' start and shift; t_cross: [B] the t
      the real path is measured at.
    key, search_ids: [B] (each search's directions come from fold_in(key, id), so a
      resumed or re-batched run draws the same ones); draws: R per search.
  Returns:
    [B, R, w_dim].
  """
  r = np.asarray(r, np.float32)
  dim = r.shape[-1]
  d = np.stack([unit_directions(jax.random.fold_in(key, int(i)), draws, dim) for i in search_ids])
  norm = (np.asarray(t_cross, np.float64) * np.linalg.norm(np.asarray(shift, np.float64), axis=-1))
  rr = np.maximum(r[:, None] - (norm[:, None, None] * d).astype(np.float32), 0.0)  # [B, R, D]
  return np.asarray(link(jnp.asarray(rr)), np.float32)
