"""The batch-and-pad map: a jitted function over many rows in fixed-size batches.

Every batch has the same shape (the last is padded by repeating its last row and the
padded results are dropped), so the function compiles once whatever the row count.
"""
from __future__ import annotations

import concurrent.futures
from typing import Any, Callable

import jax
import numpy as np

from lis_jax.distribute import pad_batch


def map_batches(fn: Callable[..., Any], rows: Any, batch_size: int, *args: Any,
                tail: Callable[[int], int] | None = None, workers: int = 1) -> Any:
  """fn(*args, batch) over `rows` in batches of exactly `batch_size` rows.

  Args:
    fn: a (jitted) function `fn(*args, batch) -> pytree of [B, ...]` arrays.
    rows: a pytree of [N, ...] arrays (the same N), split along axis 0.
    batch_size: rows per call; the last batch is padded to it.
    *args: passed unchanged before the batch (models, params).
    tail: the padded size of a last batch of m < batch_size rows (default: batch_size,
      one compile; `memory.tail_size` pads less where the padding's work costs more than
      a compile).
    workers: calls run at once, each from its own thread (`memory.calls_at_once`: 2 on
      a CPU for calls that exchange no data between devices); 1: one thread, every call
      dispatched asynchronously. The first batch runs alone (it compiles the call once).
      The results are the same: the same call on the same batches.
  Returns:
    the pytree of [N, ...] numpy results, in row order.
  """
  leaves = jax.tree_util.tree_leaves(rows)
  n = leaves[0].shape[0]
  starts = list(range(0, n, batch_size))

  def call(s: int) -> tuple[int, Any]:
    m = min(batch_size, n - s)
    size = batch_size if (tail is None or m == batch_size) else tail(m)
    batch = jax.tree_util.tree_map(lambda x: pad_batch(np.asarray(x)[s:s + m], size), rows)
    return m, fn(*args, batch)

  def host(out: tuple[int, Any]) -> Any:
    m, r = out
    return jax.tree_util.tree_map(lambda x: np.asarray(x)[:m], r)

  if workers > 1 and len(starts) > 1:
    res = [host(call(starts[0]))]
    pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="lis_jax-batch")
    try:
      res += list(pool.map(lambda s: host(call(s)), starts[1:]))
    finally:   # an error (or ^C): the batches not started are dropped, running ones finish
      pool.shutdown(wait=True, cancel_futures=True)
  else:
    res = [host(r) for r in [call(s) for s in starts]]   # dispatched asynchronously
  return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *res)
