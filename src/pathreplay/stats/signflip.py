"""Paired tests per column of differences d [pairs, columns]: the sign-flip test (exact or Monte
Carlo) for few non-zero differences, the one-sample t-test for many. Vectorised over columns:
the columns that share k non-zero differences are one matrix product with the k-column sign
patterns, and the patterns themselves are built (exact) or drawn (Monte Carlo) once per process
and reused, drawn exactly as a fresh Generator(seed) per call draws them, so every p is the bit
it was when each call enumerated and drew its own."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache, lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import stats as sps

EXACT_FLIPS = 12  # up to this many non-zero differences a sign-flip test enumerates every pattern
DRAWS = 4095  # random sign patterns above that
T_FROM = 30  # from this many non-zero differences on, the paired t-test
TESTS = ("none", "t", "sign_flip_exact", "sign_flip_mc")  # the codes paired_test returns
BLOCK = 2**17  # pattern sums per block: the block's sums, their |.| and the comparison stay in cache
REL_TIE = 1 - 1e-12  # a pattern reaches the observed |sum| within rounding (ties: equal |d|)


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


@lru_cache(maxsize=16)
def _drawn_signs(ks: tuple[int, ...], draws: int, seed: int) -> tuple[np.ndarray, ...]:
    """[k, draws] random sign patterns for each k of `ks` (ascending), drawn one k after the other
    from one Generator(seed): the draws of a call whose Monte Carlo columns have exactly these k."""
    rng = np.random.default_rng(seed)
    out = []
    for k in ks:
        s = np.ascontiguousarray(rng.choice([-1.0, 1.0], size=(draws, k)).T)
        s.flags.writeable = False
        out.append(s)
    return tuple(out)


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
    """The products here are small ([<= 32, <= 29] @ [<= 29, 4095]): OpenBLAS's threads cost far
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


def _flip_p(d: np.ndarray, nz: np.ndarray, k: np.ndarray, cols: np.ndarray, draws: int,
            seed: int) -> np.ndarray:
    """Sign-flip p of the columns `cols` (k >= 2): see sign_flip_p."""
    p = np.full(len(cols), np.nan)
    if not len(cols):
        return p
    flat, starts = _nonzero_by_column(d, nz, k)
    ks = k[cols]
    mc = np.unique(ks[ks > EXACT_FLIPS])
    drawn = dict(zip(mc.tolist(), _drawn_signs(tuple(mc.tolist()), draws, seed)))
    with one_blas_thread():
        for kk in np.unique(ks).tolist():
            at = np.flatnonzero(ks == kk)  # ascending column order within a k, as a stable sort by k
            vals = flat[starts[cols[at]][:, None] + np.arange(kk)]
            if kk <= EXACT_FLIPS:
                p[at] = 2 * _hits(vals, _exact_signs(kk)) / 2**kk
            else:
                p[at] = (1 + _hits(vals, drawn[kk])) / (1 + draws)
    return p


def sign_flip_p(d: np.ndarray, draws: int = DRAWS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided sign-flip p of sum(d) = 0 per column, over each column's k non-zero entries
    v_1..v_k in row order (a zero difference flips to itself): the share of sign patterns s whose
    |sum_i s_i v_i| reaches the observed |sum_i v_i| (1 - 1e-12, so ties count). Exact up to
    k = EXACT_FLIPS: the 2^(k-1) patterns with s_k = +1 are one product [cols, k] @ [k, 2^(k-1)],
    and p = 2 hits / 2^k (>= 2 / 2^k: the observed pattern and its negative). Above: `draws`
    random patterns, p = (1 + hits) / (1 + draws), never 0; the patterns of each k present are
    drawn in ascending k from one Generator(seed), as the per-call draws always were. NaN for
    k < 2. Returns (p, exact) per column."""
    nz = d != 0
    k = nz.sum(0)
    p = np.full(d.shape[1], np.nan)
    cols = np.flatnonzero(k >= 2)
    p[cols] = _flip_p(d, nz, k, cols, draws, seed)
    return p, k <= EXACT_FLIPS


def take_columns(x: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """x's columns `cols` as a C-ordered copy, padded (with x's first column) to 2 wide where x
    is: numpy sums a C [n, m >= 2] array over axis 0 one row after another, the same bits in any
    column subset, but a lone column (or x[:, cols], F-ordered) pairwise. Use the first len(cols)."""
    if len(cols) == 1 and x.shape[1] > 1:
        cols = np.r_[cols, 0]
    return np.take(x, cols, axis=1)


def paired_test(d: np.ndarray) -> PairedTest:
    """Two-sided p of mean(d) = 0 per column of paired differences d [pairs, columns], the test's
    code in TESTS, and k: the sign-flip test (sign_flip_p) while k < T_FROM (few pairs, or mostly
    zeros with a few large values: diverged tokens, a sparse feature), the one-sample t-test over
    all n pairs from there on: t = mean(d) / (sd(d, ddof=1) / sqrt(n)), p = 2 sf_t(|t|, n - 1),
    and where every difference is the same (sd = 0) the exact sign-flip p 2 / 2^k, never 0.
    NaN (`none`) for k < 2: nothing to test. The t columns alone are taken apart (numpy reduces
    each column in row order, so a column's mean and sd are the bits they are in the full d)."""
    n, F = d.shape
    nz = d != 0
    k = nz.sum(0)
    p = np.full(F, np.nan)
    flip = np.flatnonzero((k >= 2) & (k < T_FROM))
    p[flip] = _flip_p(d, nz, k, flip, DRAWS, 0)
    tcols = np.flatnonzero(k >= T_FROM)
    if len(tcols):
        dt = take_columns(d, tcols)
        with np.errstate(divide="ignore", invalid="ignore"):
            sd = dt.std(0, ddof=1)[: len(tcols)] if n > 1 else np.zeros(len(tcols))
            t = dt.mean(0)[: len(tcols)] / (sd / np.sqrt(n))
            tp = 2 * sps.t.sf(np.abs(t), max(n - 1, 1))
        p[tcols] = np.where(sd > 0, tp, 2.0 ** (1 - k[tcols].astype(float)))
    code = np.where(k < 2, 0, np.where(k >= T_FROM, 1, np.where(k <= EXACT_FLIPS, 2, 3))).astype(np.int8)
    return PairedTest(p, code, k)


def paired_p(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """paired_test's p and the names of its tests (`none`, `t`, `sign_flip_exact`, `sign_flip_mc`)."""
    r = paired_test(d)
    return r.p, np.asarray(TESTS, dtype=object)[r.code].astype(str)
