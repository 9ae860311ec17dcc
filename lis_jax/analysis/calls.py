"""Statistical calls: permutation p-values with a tail fit, false-discovery control, intervals.

Every "selective", "superposed", "significant" or "changes across the boundary" the
pipeline prints is made here, the same way:

  p-value     a permutation p against null draws that share the tested statistic's
              geometry (`lis_jax.analysis.nulls`): p = (1 + #{null >= x}) / (1 + R).
              Where fewer than `min_exceed` null draws reach x, that p is limited by
              the draws (it cannot go below 1 / (1 + R)), so the tail beyond x is
              estimated instead by a generalized Pareto distribution fitted to the
              `n_tail` largest null draws (Knijnenburg et al. 2009, Bioinformatics
              25:i161): p = (n_tail + 1) / (R + 1) * GPD.sf(x - t), t the threshold
              between the tail and the rest. The fit is Zhang & Stephens' (2009,
              Technometrics 51:316) estimator; its shape is clamped at 0 (no lighter
              than an exponential tail: a fitted bounded tail would give p = 0 beyond
              its end, which no finite null supports).
  family      the tests a table makes together (unit x concept; pair x concept; per
              class, unit x concept) are corrected together by Benjamini-Hochberg
              (q-values, `bh_qvalues`; Storey's pi0-adjusted variant in
              `storey_qvalues`): calling every test with q <= level controls the
              false-discovery rate at `level` for independent or positively dependent
              tests.
  size        `min_effect_pvalues`: a one-sided t-test across samples (e.g. a unit's
              start samples) that a change exceeds a smallest effect of interest
              (H0 |mu| <= delta0), for calls about the size of a change rather than its
              rank among null draws.
  fraction    a population fraction (units superposed, selective) is shown with its
              Clopper-Pearson interval (`proportion_ci`) next to the same fraction on
              null directions.

All functions are numpy (scipy for the GPD survival function and the beta quantiles);
NaN p-values (an undefined statistic) are left out of a family and stay NaN.
"""
from __future__ import annotations

import warnings

import numpy as np

# scipy.stats and scipy.special are imported inside the functions that use them: together they
# take ~1 s to import, which every command (`python -m lis_jax.main` imports every stage) would pay.

MIN_EXCEED = 10  # below this many null draws >= x, the tail fit replaces the count
MIN_TAIL = 10  # fewest tail draws a GPD is fitted to; fewer null draws: counts only


def bh_qvalues(p: np.ndarray) -> np.ndarray:
  """Benjamini-Hochberg q-values over one family: every finite entry of p (any shape).

  q_(i) = min_{j >= i} m p_(j) / j over the sorted p, capped at 1 (statsmodels'
  multipletests(method='fdr_bh')[1]). NaN entries are not tests: they stay NaN and do
  not count in m.
  """
  p = np.asarray(p, np.float64)
  q = np.full(p.shape, np.nan)
  ok = np.isfinite(p)
  x = p[ok]
  m = x.size
  if m == 0:
    return q
  order = np.argsort(x, kind="stable")
  ranked = x[order] * m / np.arange(1, m + 1)
  mono = np.minimum.accumulate(ranked[::-1])[::-1]
  out = np.empty(m)
  out[order] = np.minimum(mono, 1.0)
  q[ok] = out
  return q


def storey_pi0(p: np.ndarray, lam: float = 0.5) -> float:
  """Storey's estimate of the share of true nulls: #{p > lam} / ((1 - lam) m), at most 1."""
  x = np.asarray(p, np.float64)
  x = x[np.isfinite(x)]
  if x.size == 0:
    return 1.0
  return float(min(1.0, np.sum(x > lam) / ((1.0 - lam) * x.size)))


def storey_qvalues(p: np.ndarray, lam: float = 0.5) -> np.ndarray:
  """Storey's q-values: pi0 x the BH q-values (less conservative where many tests are non-null)."""
  return storey_pi0(p, lam) * bh_qvalues(p)


def gpd_fit(y: np.ndarray) -> tuple[float, float]:
  """Generalized Pareto fit to excesses y > 0 (Zhang & Stephens 2009).

  Args:
    y: [n] excesses over a threshold (n >= 2, some > 0).
  Returns:
    (shape xi, scale sigma) in scipy.stats.genpareto's parametrisation (c = xi), the
    shape clamped at 0 (then sigma = mean(y), the exponential MLE).
  """
  from scipy import special  # noqa: PLC0415
  x = np.sort(np.asarray(y, np.float64))
  n = x.size
  if n < 2 or x[-1] <= 0:
    return 0.0, float(max(np.mean(x), 1e-300)) if n else 1.0
  m = 20 + int(np.sqrt(n))
  x_star = x[max(int(np.floor(n / 4 + 0.5)) - 1, 0)]
  x_star = x_star if x_star > 0 else np.mean(x)
  j = np.arange(1, m + 1)
  b = 1.0 / x[-1] + (1.0 - np.sqrt(m / (j - 0.5))) / (3.0 * x_star)  # [m] candidate theta
  with np.errstate(divide="ignore", invalid="ignore"):
    k = -np.mean(np.log1p(-b[:, None] * x[None]), axis=1)  # [m]
    ll = n * (np.log(b / k) + k - 1.0)
  ok = np.isfinite(ll)
  if not ok.any():
    return 0.0, float(np.mean(x))
  ll = np.where(ok, ll, -np.inf)
  wts = np.exp(ll - special.logsumexp(ll))  # = 1 / sum_i exp(ll_i - ll_j), without overflow
  theta = float(np.sum(np.where(ok, b, 0.0) * wts))
  k_hat = -float(np.mean(np.log1p(-theta * x)))
  xi = -k_hat
  if not np.isfinite(xi) or xi <= 0 or theta == 0:
    return 0.0, float(np.mean(x))
  return xi, float(k_hat / theta)


def gpd_sf(y: np.ndarray, xi: float, sigma: float) -> np.ndarray:
  """scipy.stats.genpareto.sf(y, xi, scale=sigma) for y >= 0, xi >= 0, sigma > 0, to the bit:
  (1 + xi y / sigma)^(-1 / xi) (exp(-y / sigma) at xi = 0) by the special function
  genpareto's own sf calls, without the distribution's argument handling (0.14 ms a call,
  this 0.002 ms; the leave-one-out p-values make thousands of calls)."""
  from scipy import special  # noqa: PLC0415
  return special.inv_boxcox(-(np.asarray(y, np.float64) / sigma), -xi)


def _count_p(above: np.ndarray, ties: np.ndarray, r: int, u: np.ndarray | None) -> np.ndarray:
  """The permutation p of statistics with `above` of r null draws above them and `ties`
  equal: (1 + above + ties) / (1 + r) (ties count as exceedances), or with uniforms u the
  randomised (above + u (ties + 1)) / (1 + r)."""
  if u is None:
    return (1.0 + above + ties) / (1.0 + r)
  return (above + u * (ties + 1.0)) / (1.0 + r)


def _n_tail(r: int, tail_fraction: float) -> int:
  """Draws of a column of r the GPD tail is fitted to."""
  return max(MIN_TAIL, int(tail_fraction * r))


def _tail_p(x: np.ndarray, null_sorted: np.ndarray, n_tail: int) -> np.ndarray:
  """GPD tail p of x [k] against one column's sorted finite null draws [R]."""
  r = null_sorted.size
  t = 0.5 * (null_sorted[r - n_tail] + null_sorted[r - n_tail - 1])
  xi, sigma = gpd_fit(null_sorted[r - n_tail:] - t)   # xi >= 0 (clamped)
  sf = gpd_sf(np.maximum(x - t, 0.0), xi, max(sigma, 1e-300))
  return (n_tail + 1.0) / (r + 1.0) * sf


def tail_pvalues(stat: np.ndarray, null: np.ndarray, *, rng: np.random.Generator | None = None,
                 min_exceed: int = MIN_EXCEED, tail_fraction: float = 0.25) -> np.ndarray:
  """One-sided permutation p-values (large = extreme) with a GPD tail where draws are few.

  Args:
    stat: [K, F] statistics of K tests in each of F columns (a column = one null
      distribution, e.g. one concept).
    null: [R, F] null draws of the same statistic (NaN = missing draw, left out).
    rng: with a Generator, ties are broken at random (p exactly uniform under the null
      for discrete statistics); without, ties count as exceedances (conservative).
    min_exceed: below this many exceedances the GPD tail p replaces the count's p.
    tail_fraction: share of a column's draws the GPD is fitted to (at least MIN_TAIL;
      no fit with fewer than MIN_TAIL + 1 draws).
  Returns:
    [K, F] p in (0, 1]; NaN where stat is NaN or a column has no draws.
  """
  stat = np.asarray(stat, np.float64)
  null = np.asarray(null, np.float64)
  out = np.full(stat.shape, np.nan)
  for f in range(stat.shape[1]):
    col = np.sort(null[:, f][np.isfinite(null[:, f])])
    r = col.size
    x = stat[:, f]
    ok = np.isfinite(x)
    if r == 0 or not ok.any():
      continue
    above = r - np.searchsorted(col, x[ok], side="right")
    ties = np.searchsorted(col, x[ok], side="right") - np.searchsorted(col, x[ok], side="left")
    p = _count_p(above, ties, r, None if rng is None else rng.uniform(size=above.size))
    n_tail = _n_tail(r, tail_fraction)
    few = above + ties < min_exceed
    if few.any() and r > n_tail and col[-1] > col[r - n_tail - 1]:
      p[few] = _tail_p(x[ok][few], col, n_tail)
    out[ok, f] = p
  return out


def min_effect_pvalues(x: np.ndarray, delta0: np.ndarray, min_n: int = 3) -> np.ndarray:
  """One-sided t-test that a mean's size exceeds a smallest effect of interest.

  Null hypothesis |mu| <= delta0 (the change is smaller than delta0 in either direction),
  alternative |mu| > delta0; statistic t = (|mean| - delta0) / (sd / sqrt(n)) over the
  samples (sd with n - 1), p = P(T_{n-1} >= t). At the null's boundary |mu| = delta0 the
  test has level alpha (the far side's contribution is negligible), inside it less, so
  p is valid (conservative) for every |mu| <= delta0; delta0 = 0 gives half the
  two-sided t-test's p (use `2 p` there).

  Args:
    x: [S, ...] samples (NaN = missing), e.g. a unit's changes over its start samples.
    delta0: [...] (broadcast) the smallest change of interest, >= 0.
    min_n: fewer finite samples give NaN (no test).
  Returns:
    [...] p in [0, 1]; NaN where fewer than min_n samples or delta0 is NaN.
  """
  from scipy import stats as sps  # noqa: PLC0415
  x = np.asarray(x, np.float64)
  n = np.sum(np.isfinite(x), axis=0)
  with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    mean = np.nanmean(x, axis=0)
    se = np.nanstd(x, axis=0, ddof=1) / np.sqrt(n)
    excess = np.abs(mean) - np.asarray(delta0, np.float64)
    t = np.where(se > 0, excess / np.where(se > 0, se, 1.0), np.where(excess > 0, np.inf, -np.inf))
    p = sps.t.sf(t, np.maximum(n - 1, 1))
  return np.where((n >= min_n) & np.isfinite(excess), p, np.nan)


def loo_pvalues(null: np.ndarray, *, rng: np.random.Generator | None = None,
                min_exceed: int = MIN_EXCEED, tail_fraction: float = 0.25) -> np.ndarray:
  """p-value of each null draw tested against the other R - 1 (leave one out): the
  false-positive rate of a call on the null itself.

  The same p as `tail_pvalues(null[i:i + 1], np.delete(null, i, axis=0), ...)` row by row,
  to the bit and with the same draws from rng (row by row, then column by column, one
  uniform per finite entry of a column with two or more finite draws), but the counts
  come from one sorted copy of each column: for a finite draw x, the other draws above x
  are the column's draws above x, its ties the column's draws equal to x less x itself.
  Only the few entries that take the GPD tail build their leave-one-out column. On a
  [200, 300] normal null with a Generator: about 3.2 s -> 1.35 s (2 CPU cores), the rest
  being those ~3000 tail fits (0.4 ms each).

  Args:
    null: [R, F] null draws (NaN = missing draw: its p is NaN, and it is left out of the
      others' columns).
    rng, min_exceed, tail_fraction: as in `tail_pvalues`.
  Returns:
    [R, F] p in (0, 1]; NaN where the draw is missing or its column has no other draw.
  """
  null = np.asarray(null, np.float64)
  out = np.full(null.shape, np.nan)
  finite = np.isfinite(null)
  n = np.sum(finite, axis=0)  # [F]
  tested = finite & (n >= 2)  # [R, F] entries with r = n - 1 > 0 other draws
  u = None
  if rng is not None and tested.any():
    # One call draws what the per-row calls drew: boolean indexing fills in row-major order.
    u = np.zeros(null.shape)
    u[tested] = rng.uniform(size=int(tested.sum()))
  for f in np.flatnonzero(n >= 2):
    ok = finite[:, f]
    x = null[ok, f]
    col = np.sort(x)
    r = int(n[f]) - 1
    right = np.searchsorted(col, x, side="right")
    above = n[f] - right
    ties = right - np.searchsorted(col, x, side="left") - 1
    p = _count_p(above, ties, r, None if u is None else u[ok, f])
    n_tail = _n_tail(r, tail_fraction)
    few = np.flatnonzero(above + ties < min_exceed)
    if few.size and r > n_tail:
      rows = np.flatnonzero(ok)
      for j in few:
        # The leave-one-out column as tail_pvalues builds it: its tail (and the fit) moves with x.
        others = np.delete(null[:, f], rows[j])
        loo = np.sort(others[np.isfinite(others)])
        if loo[-1] > loo[r - n_tail - 1]:
          p[j] = _tail_p(x[j:j + 1], loo, n_tail)[0]
    out[ok, f] = p
  return out


def proportion_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
  """Clopper-Pearson interval of a proportion k / n ((nan, nan) for n = 0)."""
  from scipy import stats as sps  # noqa: PLC0415
  if n <= 0:
    return float("nan"), float("nan")
  a = (1.0 - level) / 2
  lo = 0.0 if k == 0 else float(sps.beta.ppf(a, k, n - k + 1))
  hi = 1.0 if k == n else float(sps.beta.ppf(1 - a, k + 1, n - k))
  return lo, hi


def fraction(flags: np.ndarray, level: float = 0.95) -> dict:
  """{'fraction', 'k', 'n', 'ci_low', 'ci_high'} of a boolean array's True share."""
  f = np.asarray(flags, bool).reshape(-1)
  k, n = int(f.sum()), int(f.size)
  lo, hi = proportion_ci(k, n, level)
  return {"fraction": k / n if n else float("nan"), "k": k, "n": n, "ci_low": lo, "ci_high": hi}
