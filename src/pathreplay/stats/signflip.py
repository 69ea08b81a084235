"""One paired test for every scope: the sign-flip test of sum(d) = 0 per column of differences
d [pairs, columns], exact where the patterns are few and a saddlepoint tail beyond, so p moves
with the evidence with no cliff where one test hands over to another.

Over a column's k non-zero differences v_1..v_k (a zero flips to itself), the statistic is
T = |sum_i v_i| and p = P(|sum_i s_i v_i| >= T) over the 2^k equally likely sign patterns s.
- k <= EXACT_FLIPS: every pattern is counted: up to k = 12 the 2^(k-1) with s_k = +1 (their
  negatives being of equal |sum|) by one product [cols, k] @ [k, 2^(k-1)] per k in cache-sized
  blocks; above, by meeting in the middle (the signed sums of each half, one half sorted).
- k > EXACT_FLIPS: the Lugannani-Rice saddlepoint approximation of the tail of S = sum s_i v_i,
  whose cumulant generating function is K(t) = sum_i log cosh(t v_i): with K'(t^) = T,
  w = sqrt(2 (t^ T - K(t^))), u = t^ sqrt(K..(t^)), P(S >= T) ~ 1 - Phi(w) + phi(w) (1/u - 1/w),
  and p = 2 P(S >= T). Where every |v_i| is a whole multiple of the smallest (sizes that repeat)
  S lives on a lattice and the tail holds the atom at T: the tail is taken half a lattice step
  below T (the continuity correction). Against enumeration (tests/test_stats.py, k = 25..32)
  its relative error is within 10% (mostly about 1%) where 1e-5 <= p < 0.05, for differences of
  continuous size and for lattice ones, and up to about 25% further out, where only a few dozen
  of the 2^k patterns reach the statistic.
Either way p >= 2^(1-k), the exact floor reached when every difference has one sign and the same
size (the pattern and its negative), and T at that bound (all one sign) gives the floor itself
whatever the sizes; p is never 0 and never computed from k < 2 (NaN). Vectorised over columns;
the exact patterns are built once per process."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache, lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import special

EXACT_FLIPS = 24  # up to this many non-zero differences every sign pattern is counted
TESTS = ("none", "sign_flip_exact", "sign_flip_saddlepoint")  # the codes paired_test returns
BLOCK = 2**17  # pattern sums per block: the block's sums, their |.| and the comparison stay in cache
REL_TIE = 1 - 1e-12  # a pattern reaches the observed |sum| within rounding (ties: equal |d|)
NEWTON = 12  # saddlepoint iterations (bisection-safeguarded Newton; p to 1e-6 relative by 8)


class PairedTest(NamedTuple):
    """Per column: p (NaN: no test), the test's code in TESTS, and k (non-zero differences)."""

    p: np.ndarray
    code: np.ndarray
    k: np.ndarray


@cache
def _exact_signs(k: int) -> np.ndarray:
    """[k, 2^(k-1)]: every sign pattern with the last sign +1 (pattern j: entry i flips when bit i
    of j is 1). The other half are their negatives, of equal |sum|: hits are doubled instead."""
    half = np.arange(2 ** (k - 1))
    signs = 1 - 2 * ((half[:, None] >> np.arange(k)[None, :]) & 1).astype(float)
    signs.flags.writeable = False
    return np.ascontiguousarray(signs.T)


@lru_cache(maxsize=1)
def _blas_threads_setter() -> ctypes._CFuncPtr | None:
    """OpenBLAS's openblas_set_num_threads_local (>= 0.3.27: this thread's BLAS threads) from the
    OpenBLAS numpy loaded, or None (another BLAS: left as it is)."""
    try:
        libs = {ln.split()[-1] for ln in Path("/proc/self/maps").read_text().splitlines() if "openblas" in ln}
        for lib in sorted(libs):
            fn = getattr(ctypes.CDLL(lib), "openblas_set_num_threads_local", None)
            if fn is not None:
                fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
                return fn
    except OSError:
        pass
    return None


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """The products here are small ([<= 16, ...] @ [16, <= 32768]): OpenBLAS's threads cost far
    more to wake than they save (100x slower on 2 busy cores), so this thread runs them alone."""
    fn = _blas_threads_setter()
    old = fn(1) if fn is not None else None
    try:
        yield
    finally:
        if fn is not None and old is not None:
            fn(old)


def _hits(vals: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """Per row v of vals [m, k]: #{patterns s (columns of signs [k, P]) : |v.s| >= |sum v| (1 - 1e-12)},
    in row blocks of about BLOCK sums, so the products never leave the cache."""
    m, P = len(vals), signs.shape[1]
    thr = np.abs(vals.sum(1)) * REL_TIE  # the observed |sum|, summed as the unflipped pattern's row
    hits = np.empty(m, np.int64)
    step = max(1, BLOCK // P)
    buf, hit = np.empty((min(step, m), P)), np.empty((min(step, m), P), bool)
    for a in range(0, m, step):
        b = min(a + step, m)
        s, h = buf[: b - a], hit[: b - a]
        np.matmul(vals[a:b], signs, out=s)
        np.abs(s, out=s)
        np.greater_equal(s, thr[a:b, None], out=h)
        hits[a:b] = h.view(np.uint8).sum(1, dtype=np.int64)
    return hits


def _nonzero_by_column(d: np.ndarray, nz: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every column's non-zero differences in row order, columns one after another (flat), and
    where each column's run starts (starts[c], k[c] entries)."""
    col, row = np.divmod(np.flatnonzero(np.ascontiguousarray(nz.T)), len(d))  # by column, then row
    starts = np.r_[0, np.cumsum(k)[:-1]]
    return d[row, col], starts


def _half_sums(vals: np.ndarray) -> np.ndarray:
    """[m, 2^j]: every signed sum of each row of vals [m, j]."""
    j = vals.shape[1]
    signs = 1 - 2 * ((np.arange(2**j)[:, None] >> np.arange(j)[None, :]) & 1).astype(float)
    return vals @ signs.T


def _met_in_the_middle(vals: np.ndarray) -> np.ndarray:
    """Per row v of vals [m, k]: #{patterns s : |v.s| >= |sum v| (1 - 1e-12)} over all 2^k, by
    meeting in the middle: the 2^(k/2) signed sums of each half, the second sorted, and for each
    sum a of the first the sums b with a + b >= T or a + b <= -T counted by binary search."""
    k1 = vals.shape[1] // 2
    first, second = _half_sums(vals[:, :k1]), np.sort(_half_sums(vals[:, k1:]), axis=1)
    thr = np.abs(vals.sum(1)) * REL_TIE
    hits = np.empty(len(vals), np.int64)
    for r in range(len(vals)):
        if thr[r] == 0:  # a sum of 0: every pattern reaches it (the two sides would count it twice)
            hits[r] = first.shape[1] * second.shape[1]
            continue
        b, a = second[r], first[r]
        hits[r] = (len(b) - np.searchsorted(b, thr[r] - a, "left")).sum() + np.searchsorted(b, -thr[r] - a, "right").sum()
    return hits


def _exact_p(d: np.ndarray, nz: np.ndarray, k: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Exact sign-flip p of the columns `cols` (2 <= k <= EXACT_FLIPS): every pattern counted,
    as one product with the cached patterns up to k = 12 (2 hits of half the patterns / 2^k), by
    meeting in the middle above (hits / 2^k)."""
    p = np.full(len(cols), np.nan)
    if not len(cols):
        return p
    flat, starts = _nonzero_by_column(d, nz, k)
    ks = k[cols]
    with one_blas_thread():
        for kk in np.unique(ks).tolist():
            at = np.flatnonzero(ks == kk)
            vals = flat[starts[cols[at]][:, None] + np.arange(kk)]
            if kk <= 12:
                p[at] = 2 * _hits(vals, _exact_signs(kk)) / 2**kk
            else:
                p[at] = _met_in_the_middle(vals) / 2**kk
    return p


def _log_cosh(x: np.ndarray) -> np.ndarray:
    """log cosh x without overflow: |x| + log1p(exp(-2|x|)) - log 2."""
    a = np.abs(x)
    return a + np.log1p(np.exp(-2 * a)) - np.log(2.0)


def lattice_step(flat: np.ndarray, starts: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Per column (its k non-zero values flat[starts: starts + k]), the step between the values
    sum_i s_i v_i can take when every |v_i| is a whole multiple of the smallest (sizes that
    repeat: 2 g min|v|, g the multiples' gcd); 0 otherwise."""
    a = np.abs(flat)
    low = np.minimum.reduceat(a, starts)
    ratio = a / np.repeat(low, k)
    whole = np.round(ratio)
    off = (np.abs(ratio - whole) > 1e-9 * np.maximum(whole, 1)) | (whole > 1 << 20)
    ok = ~np.logical_or.reduceat(off, starts)
    step = np.zeros(len(k))
    if ok.any():  # the multiples' gcd, for the lattice columns alone (few: most sizes are not whole multiples)
        cols = np.flatnonzero(ok)
        sel = np.repeat(ok, k)
        g = np.gcd.reduceat(whole[sel].astype(np.int64), np.r_[0, np.cumsum(k[cols])[:-1]])
        step[cols] = 2 * g * low[cols]
    return step


def saddlepoint_p(v: np.ndarray) -> np.ndarray:
    """Two-sided Lugannani-Rice p of |sum| per column of v [n, m], floored at 2^(1-k) (k the
    column's non-zero count); see the module docstring. Works on the non-zero values alone,
    columns one after another."""
    m = v.shape[1]
    nz = v != 0
    k = nz.sum(0)
    floor = 2.0 ** (1 - k.astype(float))
    p = np.ones(m)
    total = v.sum(0)
    T, S = np.abs(total), np.abs(v).sum(0)
    at_bound = T >= S * REL_TIE  # every difference of one sign: only the pattern and its negative reach it
    inner = np.flatnonzero((T > 0) & ~at_bound & (k > 0))
    if len(inner):
        kk = k[inner]
        flat, starts = _nonzero_by_column(v[:, inner], nz[:, inner], kk)
        flat *= np.repeat(np.where(total[inner] < 0, -1.0, 1.0), kk)  # the statistic's sign: S >= T > 0
        col = np.repeat(np.arange(len(inner)), kk)  # flat runs column by column: sums by reduceat
        sq = np.add.reduceat(flat * flat, starts)
        t_obs = T[inner] - lattice_step(flat, starts, kk) / 2  # a lattice's tail holds the atom at T: half a step below
        t = t_obs / np.maximum(sq, 1e-300)  # K'(t) ~ t sum v^2 near 0
        lo, hi = np.zeros(len(inner)), np.full(len(inner), np.inf)
        f32 = flat.astype(np.float32)  # the root in float32: w^2 = 2 (t T - K(t)) is flat in t there
        for _ in range(NEWTON):
            th = np.tanh(t.astype(np.float32)[col] * f32)
            k1 = np.add.reduceat(f32 * th, starts, dtype=np.float64)
            k2 = np.add.reduceat(f32 * f32 * (1 - th * th), starts, dtype=np.float64)
            below = k1 < t_obs
            lo, hi = np.where(below, t, lo), np.where(below, hi, t)
            nxt = t - (k1 - t_obs) / np.maximum(k2, 1e-300)
            bad = ~((nxt > lo) & (nxt < hi)) | ~np.isfinite(nxt)
            t = np.where(bad, np.where(np.isfinite(hi), (lo + hi) / 2, 2 * t + 1e-12), nxt)
        th = np.tanh(t[col] * flat)
        k2 = np.add.reduceat(flat * flat * (1 - th * th), starts)
        kt = np.add.reduceat(_log_cosh(t[col] * flat), starts)
        w = np.sqrt(np.maximum(2 * (t * t_obs - kt), 0.0))
        u = t * np.sqrt(k2)
        with np.errstate(divide="ignore", invalid="ignore"):
            tail = special.ndtr(-w) + np.exp(-0.5 * w * w) / np.sqrt(2 * np.pi) * (1 / u - 1 / w)
        near = w < 1e-4  # the approximation's removable singularity at the centre: the normal tail
        tail = np.where(near, special.ndtr(-t_obs / np.sqrt(sq)), tail)
        p[inner] = np.clip(2 * tail, 0.0, 1.0)
    p[at_bound & (k > 0)] = floor[at_bound & (k > 0)]
    return np.maximum(p, floor)


def paired_test(d: np.ndarray) -> PairedTest:
    """Two-sided sign-flip p of sum(d) = 0 per column of paired differences d [pairs, columns],
    the test's code in TESTS, and k: counted exactly up to k = EXACT_FLIPS non-zero differences,
    by the saddlepoint tail beyond (module docstring). NaN (`none`) for k < 2: nothing to test."""
    nz = d != 0
    k = nz.sum(0)
    p = np.full(d.shape[1], np.nan)
    exact = np.flatnonzero((k >= 2) & (k <= EXACT_FLIPS))
    p[exact] = _exact_p(d, nz, k, exact)
    big = np.flatnonzero(k > EXACT_FLIPS)
    if len(big):
        p[big] = saddlepoint_p(np.take(d, big, axis=1))
    code = np.where(k < 2, 0, np.where(k <= EXACT_FLIPS, 1, 2)).astype(np.int8)
    return PairedTest(p, code, k)


def sign_flip_p(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """paired_test's p per column and whether it was counted exactly (k <= EXACT_FLIPS)."""
    r = paired_test(d)
    return r.p, r.k <= EXACT_FLIPS


def paired_p(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """paired_test's p and the names of its tests (`none`, `sign_flip_exact`, `sign_flip_saddlepoint`)."""
    r = paired_test(d)
    return r.p, np.asarray(TESTS, dtype=object)[r.code].astype(str)


def take_columns(x: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """x's columns `cols` as a C-ordered copy, padded (with x's first column) to 2 wide where x
    is: numpy sums a C [n, m >= 2] array over axis 0 one row after another, the same bits in any
    column subset, but a lone column (or x[:, cols], F-ordered) pairwise. Use the first len(cols)."""
    if len(cols) == 1 and x.shape[1] > 1:
        cols = np.r_[cols, 0]
    return np.take(x, cols, axis=1)
