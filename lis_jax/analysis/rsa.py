"""Semantic order of two representations of the same items: RSA, linear CKA, neighbours.

Representational similarity analysis (Kriegeskorte et al. 2008): each space gives a
dissimilarity matrix over the same N items (rows of X and Y); the spaces share a
"semantic order" to the extent that the two matrices' upper triangles are rank
correlated (Spearman). The null permutes the items of one matrix (rows and columns
together: a Mantel test), so it keeps each matrix's structure and breaks only the
pairing. Linear CKA (Kornblith et al. 2019) compares the spaces directly:
  CKA(X, Y) = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)   (Xc, Yc column-centred);
1 for spaces equal up to rotation and isotropic scaling, ~0 for independent ones.
All functions are pure numpy on [N, D] arrays (rows = items).
"""
from __future__ import annotations

import numpy as np

METRICS = ("correlation", "euclidean")


def dissimilarity(x: np.ndarray, metric: str = "correlation") -> np.ndarray:
  """Representational dissimilarity matrix.

  Args:
    x: [N, D] items in rows.
    metric: 'correlation' (1 - Pearson correlation of two rows, RSA's usual choice) or
      'euclidean'.
  Returns:
    [N, N] symmetric, zero diagonal (float64).
  """
  x = np.asarray(x, np.float64)
  if metric == "correlation":
    xc = x - x.mean(1, keepdims=True)
    norm = np.linalg.norm(xc, axis=1, keepdims=True)
    xn = xc / np.where(norm > 0, norm, 1.0)
    d = 1.0 - xn @ xn.T
  elif metric == "euclidean":
    sq = (x * x).sum(1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None] - 2 * x @ x.T, 0.0))
  else:
    raise ValueError(f"metric={metric!r}; known: {', '.join(METRICS)}")
  d = (d + d.T) / 2
  np.fill_diagonal(d, 0.0)
  return d


def upper(d: np.ndarray) -> np.ndarray:
  """[N, N] -> [N (N - 1) / 2] entries above the diagonal (row-major, as scipy's squareform)."""
  i, j = np.triu_indices(d.shape[0], k=1)
  return d[i, j]


def ranks(x: np.ndarray) -> np.ndarray:
  """Ranks 1..n of a 1-D array, ties get their average rank (scipy's rankdata 'average')."""
  x = np.asarray(x)
  order = np.argsort(x, kind="stable")
  sx = x[order]
  new = np.concatenate([[True], sx[1:] != sx[:-1]])
  group = np.cumsum(new) - 1  # [n] tie-group id in sorted order
  starts = np.flatnonzero(new)
  ends = np.concatenate([starts[1:], [x.size]])
  avg = (starts + ends + 1) / 2.0  # mean of ranks start+1..end
  out = np.empty(x.size)
  out[order] = avg[group]
  return out


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Pearson correlation of a [n] with each row of b [..., n]."""
  a = a - a.mean()
  b = b - b.mean(-1, keepdims=True)
  den = np.linalg.norm(a) * np.linalg.norm(b, axis=-1)
  return np.where(den > 0, (b @ a) / np.where(den > 0, den, 1.0), np.nan)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
  """Spearman's rank correlation of two 1-D arrays (NaN if either is constant)."""
  return float(_pearson(ranks(a), ranks(b)))


def rsa(dx: np.ndarray, dy: np.ndarray, *, n_perm: int = 1000, rng: np.random.Generator) -> dict:
  """Spearman correlation of two dissimilarity matrices' upper triangles, with a permutation null.

  Args:
    dx, dy: [N, N] dissimilarity matrices of the same N items.
    n_perm: item permutations of dy for the null.
    rng: numpy Generator (the caller seeds it).
  Returns:
    {'spearman', 'null_mean', 'null_sd', 'null_q95' (95th percentile), 'p' (one-sided:
     (1 + #{null >= observed}) / (1 + n_perm)), 'n_items', 'n_perm'}.
  """
  n = dx.shape[0]
  rx = ranks(upper(dx))
  # The upper triangle of a permuted dy holds the same values, so its ranks are the
  # ranks of dy's upper triangle, permuted: rank once, permute the rank matrix.
  rank_mat = np.zeros((n, n))
  i, j = np.triu_indices(n, k=1)
  rank_mat[i, j] = ranks(upper(dy))
  rank_mat = rank_mat + rank_mat.T
  obs = float(_pearson(rx, rank_mat[i, j]))
  null = np.empty(n_perm)
  for k in range(n_perm):
    p = rng.permutation(n)
    null[k] = _pearson(rx, rank_mat[p][:, p][i, j])
  return {"spearman": obs, "null_mean": float(null.mean()), "null_sd": float(null.std()),
          "null_q95": float(np.quantile(null, 0.95)),
          "p": float((1 + np.sum(null >= obs)) / (1 + n_perm)), "n_items": int(n), "n_perm": int(n_perm)}


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
  """Linear CKA of [N, Dx] and [N, Dy] (rows = the same items); 1 = same up to rotation and scale."""
  xc = np.asarray(x, np.float64) - np.mean(x, 0)
  yc = np.asarray(y, np.float64) - np.mean(y, 0)
  num = np.linalg.norm(yc.T @ xc) ** 2
  den = np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)
  return float(num / den) if den > 0 else float("nan")


def neighbours(x: np.ndarray, k: int, metric: str = "euclidean") -> np.ndarray:
  """[N, k] indices of each item's k nearest other items (ties: lower index first)."""
  d = dissimilarity(x, metric)
  np.fill_diagonal(d, np.inf)
  return np.argsort(d, axis=1, kind="stable")[:, :k]


def knn_class_agreement(x: np.ndarray, cls: np.ndarray, k: int = 1, metric: str = "euclidean") -> float:
  """Mean over items of the fraction of their k nearest neighbours that share their class."""
  nb = neighbours(x, k, metric)
  return float(np.mean(np.asarray(cls)[nb] == np.asarray(cls)[:, None]))


def knn_overlap(x: np.ndarray, y: np.ndarray, k: int = 5, metric: str = "euclidean") -> float:
  """Mean over items of |kNN in x & kNN in y| / k: do the two spaces keep the same neighbours?"""
  a, b = neighbours(x, k, metric), neighbours(y, k, metric)
  return float(np.mean([np.intersect1d(a[i], b[i]).size / k for i in range(a.shape[0])]))


def compare(x: np.ndarray, y: np.ndarray, cls: np.ndarray, *, metric: str = "correlation", k: int = 5,
            n_perm: int = 1000, rng: np.random.Generator) -> dict:
  """Everything above for two spaces over the same items.

  Args:
    x, y: [N, Dx], [N, Dy]; cls: [N] class of each item.
    metric: dissimilarity for RSA; k: neighbours; n_perm: null permutations.
  Returns:
    rsa (see `rsa`), cka, knn_class_x, knn_class_y (k-NN class agreement in each space,
    euclidean), knn_overlap, chance_class (agreement expected from class frequencies).
  """
  out = {"rsa": rsa(dissimilarity(x, metric), dissimilarity(y, metric), n_perm=n_perm, rng=rng),
         "cka": linear_cka(x, y), "knn_class_x": knn_class_agreement(x, cls, k),
         "knn_class_y": knn_class_agreement(y, cls, k), "knn_overlap": knn_overlap(x, y, k)}
  _, counts = np.unique(cls, return_counts=True)
  n = counts.sum()
  out["chance_class"] = float(np.sum(counts * (counts - 1)) / (n * (n - 1))) if n > 1 else float("nan")
  return out
