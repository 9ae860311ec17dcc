"""Semantic order of two representations of the same items: RSA, linear CKA, neighbours.

Representational similarity analysis (Kriegeskorte et al. 2008): each space gives a
dissimilarity matrix over the same N items (rows of X and Y); the spaces share a
"semantic order" to the extent that the two matrices' upper triangles are rank
correlated (Spearman). The null permutes the items of one matrix (rows and columns
together: a Mantel test), so it keeps each matrix's structure and breaks only the
pairing. Linear CKA (Kornblith et al. 2019) compares the spaces directly:
  CKA(X, Y) = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)   (Xc, Yc column-centred);
1 for spaces equal up to rotation and isotropic scaling. That (biased) estimator is far
from 0 for independent spaces with few items and many dimensions (0.78 for independent
isotropic data at configs/linear.py's sizes); `debiased_cka` uses the unbiased HSIC
estimator (Song et al. 2012; Nguyen et al. 2021) and is ~0 for independent spaces.

Classes: pooled over classes, two spaces that both cluster by class agree on the class
structure alone, which an item permutation across classes breaks; so the nulls that
keep class membership (`within_class_permutation`) and RSA partialled on class
(`partial_rsa`: the Spearman partial correlation given the same-class indicator) ask
whether the spaces agree beyond their classes.
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
  return _pearson_centred(_centre_a(a), _centre_b(b))


# The permutation loops below hold one side of a correlation fixed: its centring and norm
# are computed once (`_centre_a` / `_centre_b`), by the same operations `_pearson` runs, so
# every null value is the same to the bit as before (the norms differ: `np.linalg.norm(a)`
# is a BLAS dot, the row norms of b a sum of squares).
def _centre_a(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """_pearson's a side: (a - mean [n], its norm)."""
  a = a - a.mean()
  return a, np.linalg.norm(a)


def _centre_b(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """_pearson's b side: (b - row means [..., n], row norms [...])."""
  b = b - b.mean(-1, keepdims=True)
  return b, np.linalg.norm(b, axis=-1)


def _pearson_centred(a: tuple, b: tuple) -> np.ndarray:
  """_pearson from its centred sides (`_centre_a(a)`, `_centre_b(b)`)."""
  (a, norm_a), (b, norm_b) = a, b
  den = norm_a * norm_b
  return np.where(den > 0, (b @ a) / np.where(den > 0, den, 1.0), np.nan)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
  """Spearman's rank correlation of two 1-D arrays (NaN if either is constant)."""
  return float(_pearson(ranks(a), ranks(b)))


def within_class_permutation(cls: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """[N] a random permutation that moves items only within their class (cls [N])."""
  cls = np.asarray(cls)
  perm = np.arange(cls.size)
  for c in np.unique(cls):
    idx = np.flatnonzero(cls == c)
    perm[idx] = idx[rng.permutation(idx.size)]
  return perm


def _perm(n: int, cls, rng: np.random.Generator) -> np.ndarray:
  return rng.permutation(n) if cls is None else within_class_permutation(cls, rng)


def _null_summary(obs: float, null: np.ndarray, key: str) -> dict:
  return {key: obs, "null_mean": float(null.mean()), "null_sd": float(null.std()),
          "null_q95": float(np.quantile(null, 0.95)),
          "p": float((1 + np.sum(null >= obs)) / (1 + null.size)), "n_perm": int(null.size)}


def rsa(dx: np.ndarray, dy: np.ndarray, *, n_perm: int = 1000, rng: np.random.Generator,
        cls: np.ndarray | None = None) -> dict:
  """Spearman correlation of two dissimilarity matrices' upper triangles, with a permutation null.

  Args:
    dx, dy: [N, N] dissimilarity matrices of the same N items.
    n_perm: item permutations of dy for the null.
    rng: numpy Generator (the caller seeds it).
    cls: [N] classes: the null permutes items only within their class (None: all items).
  Returns:
    {'spearman', 'null_mean', 'null_sd', 'null_q95' (95th percentile), 'p' (one-sided:
     (1 + #{null >= observed}) / (1 + n_perm)), 'n_items', 'n_perm', 'null'
     ('within_class' or 'all_items')}.
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
  cx = _centre_a(rx)
  null = np.empty(n_perm)
  for k in range(n_perm):
    p = _perm(n, cls, rng)
    null[k] = _pearson_centred(cx, _centre_b(rank_mat[p[i], p[j]]))   # = rank_mat[p][:, p][i, j]
  return {**_null_summary(obs, null, "spearman"), "n_items": int(n),
          "null": "all_items" if cls is None else "within_class"}


def _partial(rx: np.ndarray, ry: np.ndarray, rz: np.ndarray) -> float:
  """Partial correlation of rx and ry given rz (1-D arrays; NaN if undefined)."""
  rxy, rxz, ryz = (float(_pearson(a, b)) for a, b in ((rx, ry), (rx, rz), (ry, rz)))
  den = np.sqrt((1 - rxz ** 2) * (1 - ryz ** 2))
  return float((rxy - rxz * ryz) / den) if den > 0 else float("nan")


def _partial_fixed(cx: tuple, rxz: float, cz: tuple, ry: np.ndarray) -> float:
  """`_partial(rx, ry, rz)` with rx's a side (cx = _centre_a(rx)), rz's b side
  (cz = _centre_b(rz)) and their correlation rxz computed once: the same value to the bit."""
  ry_c = ry - ry.mean()   # (_centre_a and _centre_b centre a 1-D array alike)
  rxy = float(_pearson_centred(cx, (ry_c, np.linalg.norm(ry_c, axis=-1))))
  ryz = float(_pearson_centred((ry_c, np.linalg.norm(ry_c)), cz))
  den = np.sqrt((1 - rxz ** 2) * (1 - ryz ** 2))
  return float((rxy - rxz * ryz) / den) if den > 0 else float("nan")


def partial_rsa(dx: np.ndarray, dy: np.ndarray, cls: np.ndarray, *, n_perm: int = 1000,
                rng: np.random.Generator) -> dict:
  """RSA partialled on class: the Spearman partial correlation of the two matrices' upper
  triangles given the same-class indicator (0 same class, 1 different), with a
  within-class permutation null.

  Args:
    dx, dy: [N, N] dissimilarities; cls: [N] classes.
  Returns:
    {'partial_spearman', 'null_mean', 'null_sd', 'null_q95', 'p', 'n_perm', 'n_items'}.
  """
  cls = np.asarray(cls)
  n = dx.shape[0]
  i, j = np.triu_indices(n, k=1)
  rx, ry = ranks(upper(dx)), ranks(upper(dy))
  rz = ranks((cls[i] != cls[j]).astype(np.float64))
  rank_mat = np.zeros((n, n))
  rank_mat[i, j] = ry
  rank_mat = rank_mat + rank_mat.T
  obs = _partial(rx, ry, rz)
  cx, cz = _centre_a(rx), _centre_b(rz)
  rxz = float(_pearson_centred(cx, _centre_b(rz)))
  null = np.empty(n_perm)
  for k in range(n_perm):
    p = within_class_permutation(cls, rng)
    null[k] = _partial_fixed(cx, rxz, cz, rank_mat[p[i], p[j]])   # = _partial(rx, ry permuted, rz)
  return {**_null_summary(obs, null, "partial_spearman"), "n_items": int(n)}


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
  """Linear CKA of [N, Dx] and [N, Dy] (rows = the same items); 1 = same up to rotation and scale."""
  xc = np.asarray(x, np.float64) - np.mean(x, 0)
  yc = np.asarray(y, np.float64) - np.mean(y, 0)
  num = np.linalg.norm(yc.T @ xc) ** 2
  den = np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)
  return float(num / den) if den > 0 else float("nan")


def _gram(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x @ x.T


def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:
  """Unbiased HSIC estimator (Song et al. 2012, eq. 5) of two [N, N] Gram matrices (N >= 4).

  With K~, L~ the Grams with zeroed diagonals:
  (tr(K~ L~) + 1'K~1 1'L~1 / ((N-1)(N-2)) - 2 / (N-2) 1'K~L~1) / (N (N-3)).
  """
  n = k.shape[0]
  kt, lt = k.copy(), l.copy()
  np.fill_diagonal(kt, 0.0)
  np.fill_diagonal(lt, 0.0)
  ks, ls = kt.sum(0), lt.sum(0)  # [N] column sums
  term = (np.sum(kt * lt) + ks.sum() * ls.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * ks @ ls)
  return float(term / (n * (n - 3)))


def debiased_cka(x: np.ndarray, y: np.ndarray) -> float:
  """Linear CKA with the unbiased HSIC: HSIC_u(K, L) / sqrt(HSIC_u(K, K) HSIC_u(L, L)),
  K = X X^T, L = Y Y^T ([N, Dx], [N, Dy], N >= 4). ~0 for independent spaces (it can go
  slightly negative), 1 for spaces equal up to rotation and isotropic scaling."""
  k, l = _gram(x), _gram(y)
  den = hsic_unbiased(k, k) * hsic_unbiased(l, l)
  return float(hsic_unbiased(k, l) / np.sqrt(den)) if den > 0 else float("nan")


def cka_test(x: np.ndarray, y: np.ndarray, *, n_perm: int = 1000, rng: np.random.Generator,
             cls: np.ndarray | None = None) -> dict:
  """Debiased linear CKA with a permutation null (items of y permuted; within their class
  when `cls` is given). Returns {'cka', 'null_mean', 'null_sd', 'null_q95', 'p', 'n_perm',
  'null'}."""
  k, l = _gram(x), _gram(y)
  kk = hsic_unbiased(k, k)
  ll = hsic_unbiased(l, l)
  den = np.sqrt(kk * ll) if kk * ll > 0 else np.nan
  obs = hsic_unbiased(k, l) / den
  n = k.shape[0]
  null = np.empty(n_perm)
  for b in range(n_perm):
    p = _perm(n, cls, rng)
    null[b] = hsic_unbiased(k, l[p][:, p]) / den
  return {**_null_summary(float(obs), null, "cka"), "null": "all_items" if cls is None else "within_class"}


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
    rsa (see `rsa`: all-items null), rsa_within_class (the same, the null permuting
    within classes), partial_rsa (partialled on class, `partial_rsa`), cka (biased,
    kept for comparison), cka_debiased (`cka_test`, within-class null), knn_class_x,
    knn_class_y (k-NN class agreement in each space, euclidean), knn_overlap,
    chance_class (agreement expected from class frequencies).
  """
  dx, dy = dissimilarity(x, metric), dissimilarity(y, metric)
  out = {"rsa": rsa(dx, dy, n_perm=n_perm, rng=rng),
         "rsa_within_class": rsa(dx, dy, n_perm=n_perm, rng=rng, cls=cls),
         "partial_rsa": partial_rsa(dx, dy, cls, n_perm=n_perm, rng=rng),
         "cka": linear_cka(x, y), "cka_debiased": cka_test(x, y, n_perm=n_perm, rng=rng, cls=cls),
         "knn_class_x": knn_class_agreement(x, cls, k),
         "knn_class_y": knn_class_agreement(y, cls, k), "knn_overlap": knn_overlap(x, y, k)}
  _, counts = np.unique(cls, return_counts=True)
  n = counts.sum()
  out["chance_class"] = float(np.sum(counts * (counts - 1)) / (n * (n - 1))) if n > 1 else float("nan")
  return out
