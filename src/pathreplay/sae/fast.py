"""Exact fast JumpReLU encode: a bf16 GEMM screens, float32 decides.

The float32 encode is  pre = fl32(x W^T) + b,  f = pre if pre > t else 0  (sae.SAE.encode). Here
y^ = x~ W~^T is computed from bf16 copies x~ = bf16(x), W~ = bf16(W) with float32 accumulation,
every entry that could be active is recomputed by a float32 GEMM, and only those can be nonzero.

Error bound (n = d_model, S_ri = sum_k |x_rk| |W_ik|, y = the exact real x_r . W_i):
- bf16 rounding (round to nearest even, 8 significant bits): x~_k = x_k (1 + d_k), |d_k| <= u = 2^-8,
  likewise W~; a product of two bf16 numbers is exact in float32, so x~_k W~_ik = x_k W_ik (1 + h_k)
  with |h_k| <= (1 + u)^2 - 1.
- float32 accumulation in any order, each addition off by at most u_a = 2^-23 relative (one ulp,
  not half: tensor cores may truncate): sum = sum_k p_k (1 + g_k), |g_k| <= gamma(n, u_a), where
  gamma(n, v) = n v / (1 - n v).
- a bf16 output (CPU: oneDNN rounds its float32 accumulator once) multiplies by (1 + u_o), u_o = 2^-8;
  CUDA asks for a float32 output, u_o = 0.
  So |y^ - y| <= [(1 + u)^2 (1 + gamma(n, u_a)) (1 + u_o) - 1] S.
- the float32 reference: |ybar - y| <= gamma(n, 2^-23) S (2^-23 covers any float32 kernel).
- Cauchy-Schwarz: S <= ||x_r|| ||W_i||, the norms computed in float64 (no underflow, error ~n 2^-53).
  Together |y^ - ybar| <= c ||x_r|| ||W_i||, c = margin_constant(n, bf16_output).
- bias and threshold (u32 = 2^-24): the reference decides fl(ybar + b) > t. If
  y^ + b - t < -M with M >= (1 + u32)(c ||x|| ||W_i|| + u32 |b| + 3 u32 |t|), then
  z = ybar + b - t < -u32 |t| / (1 - u32) and fl(ybar + b) - t <= z (1 - u32) + u32 |t| <= 0: inactive.
- subnormals and flush-to-zero (bf16 casts, products, sums): at most 2^-126 per operand, product
  and addition, i.e. <= 2^-124 (||x||_1 + ||W_i||_1 + n) in all, bounded by
  2^-120 (sqrt(n) ||x|| + ||W_i||_1 + n).
The margin used is M_ri = s (c ||x_r|| ||W_i|| + 2^-120 sqrt(n) ||x_r||) + a_i with
a_i = s (5 u32 (|b_i| + |t_i|) + 2^-120 (||W_i||_1 + n)), s = 1 + 2^-10; s and the spare u32
terms pay for the float32 rounding of computing M and of key = (y^ + fl(b - t) + a_i) + ||x|| m_i
(every such rounding is relative to M at the decision boundary, and the sign of a float32 sum is
exact). An entry is certainly inactive iff key < 0; all others (NaN keys too) are recomputed.
For d_model 4096, c = 0.0088 (CUDA) and 0.0127 (CPU); the bound is worst case, so it is about
sqrt(n) wider than the typical bf16 error: the price of never flipping a feature.

Recompute: rows go in chunks of `rows`; a chunk's needed features are the union of its rows' and
one float32 GEMM (a batched GEMM over chunks, x_chunk @ W[union]^T) computes them. Per-entry
gathered dot products read one W row per entry with no reuse; the union GEMM reads each W row once
per chunk, never more than the gather, shares rows across tokens that fire the same features
(adjacent tokens and replays of one prompt do), and runs in the BLAS/cuBLAS GEMM kernels the
float32 encode uses: on MKL a sub-GEMM with >= 4 rows and >= 16 columns reproduces the full GEMM
bit for bit (measured; widths are padded to multiples of 32), so the active set equals the float32
encode's even at ties. With cuBLAS, kernels chosen per shape may sum in another order; the values
then agree within float32 rounding and only an entry within that rounding of its threshold could
differ, as it could between two float32 encodes of different batch sizes.

Top-k SAEs stay on the float32 path (sae.SAE.encode): the k-th value couples all features of a row.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

U_BF16 = 2.0 ** -8
U_ACC = 2.0 ** -23
U_32 = 2.0 ** -24
TINY = 2.0 ** -120  # 2^-124 (subnormal/FTZ losses, see above) with a factor 16 to spare
SAFETY = 1.0 + 2.0 ** -10


def gamma(n: int, v: float) -> float:
    """gamma(n, v) = n v / (1 - n v): the relative error of n float additions at v each."""
    assert n * v < 1, "d_model too large for the bound"
    return n * v / (1 - n * v)


def margin_constant(n: int, bf16_output: bool) -> float:
    """c with |y^ - ybar| <= c ||x|| ||W_i|| (module docstring)."""
    u_o = U_BF16 if bf16_output else 0.0
    fast = (1 + U_BF16) ** 2 * (1 + gamma(n, U_ACC)) * (1 + u_o) - 1
    return fast + gamma(n, U_ACC)


class FastWeights(NamedTuple):
    """What the fast path needs per feature, built once per SAE (sae.SAE caches it)."""

    W16: torch.Tensor  # [F, d] bf16 copy of W
    norm: torch.Tensor  # [F] float32 ||W_i||_2 (from float64)
    bt: torch.Tensor  # [F] float32 fl(b - t)
    extra: torch.Tensor  # [F] float32 a_i
    key: tuple  # identity of the tensors it was built from


def weights_key(W: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> tuple:
    """Changes when W, b or t is replaced, moved or modified in place."""
    return tuple((v.data_ptr(), v.device, v._version) for v in (W, b, t))


def prepare(W: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> FastWeights:
    """bf16 W, ||W_i|| and the per-feature part of the key (module docstring)."""
    n = W.shape[1]
    W64 = W.double()
    extra = SAFETY * (5 * U_32 * (b.double().abs() + t.double().abs()) + TINY * (W64.abs().sum(1) + n))
    return FastWeights(W.to(torch.bfloat16).contiguous(), torch.linalg.vector_norm(W64, dim=1).float(),
                       (b.float() - t.float()).contiguous(), extra.float(), weights_key(W, b, t))


class FastStats(NamedTuple):
    """How much float32 work a fast encode did."""

    entries: int  # rows x features
    recomputed: int  # entries not certainly inactive after the bf16 screen
    computed: int  # entries the union GEMMs produced (>= recomputed)
    active: int


def bf16_gemm(x16: torch.Tensor, W16: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """x16 @ W16^T as float32, and whether it passed through a bf16 output (adds u_o to the bound)."""
    if x16.device.type == "cuda":
        # Split-K partial sums in bf16 would break the u_a = 2^-23 accumulation model.
        flag = torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
        try:
            return torch.mm(x16, W16.T, out_dtype=torch.float32), False
        except (RuntimeError, TypeError):
            return torch.mm(x16, W16.T).float(), True
        finally:
            torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = flag
    return torch.mm(x16, W16.T).float(), True


def screen(x: torch.Tensor, fw: FastWeights, margin_scale: float = 1.0) -> torch.Tensor:
    """[R, F] key; key < 0 proves the float32 encode leaves the entry at 0 (margin_scale < 1 only
    to show in tests that a smaller margin flips features)."""
    n = x.shape[1]
    key, bf16_out = bf16_gemm(x.to(torch.bfloat16), fw.W16)
    c = margin_constant(n, bf16_out)
    per_feature = (SAFETY * margin_scale) * (c * fw.norm + TINY * math.sqrt(n))
    nx = torch.linalg.vector_norm(x, dim=1, dtype=torch.float64).float()
    key.add_(fw.bt + margin_scale * fw.extra)
    return key.addr_(nx, per_feature)


def padded_width(count: int) -> int:
    """count rounded up to a multiple of max(32, 2^(floor(log2 count) - 3)): at least 16 columns (MKL's
    small-matrix path sums in another order) and at most ~8 width classes per octave, each one batched
    GEMM, with at most 12.5% padding."""
    step = max(32, 1 << max(0, count.bit_length() - 4))
    return max(step, -(-count // step) * step)


def recompute(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, t: torch.Tensor, need: torch.Tensor,
              out: torch.Tensor, rows: int, budget: int) -> tuple[int, int]:
    """Write fl32(x W^T) + b where it exceeds t, for every needed entry, into out (zeros); returns
    (entries the union GEMMs computed, entries written). x [C*rows, d], need/out [C*rows, F]."""
    F, d = W.shape
    chunks = x.shape[0] // rows
    union = need.view(chunks, rows, F).any(1)
    counts = union.sum(1)
    order = torch.argsort(counts).tolist()
    widths = [padded_width(c) for c in counts.tolist()]
    cols = torch.sort(union.to(torch.uint8), dim=1, descending=True, stable=True).indices
    xc, flat = x.view(chunks, rows, d), out.view(chunks, rows, F)
    done, active, i = 0, 0, 0
    while i < len(order):
        # Chunks of one padded width (taken in order of width) go together, within `budget` bytes.
        width = widths[order[i]]
        j = i + 1
        while j < len(order) and widths[order[j]] == width and (j - i + 1) * width * d * 4 <= budget:
            j += 1
        sel = torch.tensor(order[i:j], device=x.device)
        n_done, n_active = _union_gemm(xc[sel], W, b, t, cols[sel, :width], counts[sel], flat, sel)
        done, active, i = done + n_done, active + n_active, j
    return done, active


def _union_gemm(xc: torch.Tensor, W: torch.Tensor, b: torch.Tensor, t: torch.Tensor,
                cols: torch.Tensor, count: torch.Tensor, out: torch.Tensor,
                sel: torch.Tensor) -> tuple[int, int]:
    """out[sel[c], r, cols[c, j]] = pre if pre > t, for j < count[c]; pre = fl(x W^T) + b, the same
    two float32 operations as the reference (a GEMM, then the bias)."""
    G, rows, width = xc.shape[0], xc.shape[1], cols.shape[1]
    valid = torch.arange(width, device=xc.device)[None, :] < count[:, None]  # [G, width]
    vals = torch.bmm(xc, W[cols].transpose(1, 2))  # [G, rows, width]
    pre = vals + b[cols][:, None, :]
    hit = (pre > t[cols][:, None, :]) & valid[:, None, :]
    # Only active entries are written, so padded columns (real feature ids past a chunk's count)
    # never overwrite anything and out needs no spare column.
    c, r, j = hit.nonzero(as_tuple=True)
    out[sel[c], r, cols[c, j]] = pre[c, r, j]
    return G * rows * width, int(c.numel())


def exact_encode(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, t: torch.Tensor, fw: FastWeights,
                 *, rows: int = 16, budget: int = 1 << 30,
                 margin_scale: float = 1.0) -> tuple[torch.Tensor, FastStats]:
    """JumpReLU encode of x [R, d] equal to the float32 encode (module docstring): [R, F] float32."""
    R = x.shape[0]
    x = x.float()
    pad = (-R) % rows
    if pad:  # repeat the last row: it adds no new features to its chunk's union
        x = torch.cat([x, x[-1:].expand(pad, -1)]) if R else x.new_zeros(pad, x.shape[1])
    key = screen(x, fw, margin_scale)
    need = ~(key < 0)
    out = key.zero_()  # reuse the [R, F] buffer: every entry not written below is inactive
    computed, _ = recompute(x.contiguous(), W, b, t, need, out, rows, budget)
    # Padding rows repeat the last row, so their entries count in `computed` only.
    stats = FastStats(R * W.shape[0], int(torch.count_nonzero(need[:R])), computed,
                      int(torch.count_nonzero(out[:R])))
    return out[:R], stats
