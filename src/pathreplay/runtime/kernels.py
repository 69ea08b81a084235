"""Three small GPU kernels for the engine's forward, and their torch equivalents.

A decode step at batch 128 spends a fifth of its time in small kernels between the weight
products: PyTorch runs RMSNorm as a general layer-norm kernel, SiLU(gate) * up as two, and RoPE
with the KV-cache writes and the query layout as six. With Triton (on GPU machines it comes with
PyTorch) each is one kernel that reads its input once. Everywhere else, or with
PATHREPLAY_KERNELS=torch, the torch operations run instead; the kernels compute in float32 and
round once to the input's dtype.

The tests run the Triton kernels on the CPU through Triton's interpreter (TRITON_INTERPRET=1).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU machine without it: the torch operations run
    triton = None

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def use_triton(x: torch.Tensor) -> bool:
    """Whether x's operations run as Triton kernels: on a GPU, when Triton is there and not
    switched off by PATHREPLAY_KERNELS=torch (or anywhere under Triton's interpreter)."""
    return (triton is not None and (x.is_cuda or _INTERPRET)
            and os.environ.get("PATHREPLAY_KERNELS", "triton") != "torch")


def _launch(kernel: Any, grid: tuple[int, ...], *args: Any, **meta: Any) -> None:
    """Run a Triton kernel; if it cannot compile or launch here, say which switch avoids it."""
    try:
        kernel[grid](*args, **meta)
    except Exception as err:  # the whole compiler report stays in the chained traceback
        name = getattr(kernel, "__name__", "kernel").lstrip("_")
        first = (str(err).strip().splitlines() or [""])[0]
        raise RuntimeError(f"the Triton kernel {name} failed on this machine ({type(err).__name__}: {first}); "
                           "set PATHREPLAY_KERNELS=torch to run the torch operations instead") from err


def _rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """x as [rows, n] with unit stride along n, as the kernels index it (a view when it can be)."""
    rows = x.reshape(-1, n)
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of x's last dimension: x * rsqrt(mean(x^2) + eps) * weight in float32, rounded
    once to x's dtype (Hugging Face's LlamaRMSNorm rounds before the weight)."""
    if not use_triton(x):
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    n = x.shape[-1]
    rows = _rows(x, n)
    out = torch.empty_like(rows, memory_format=torch.contiguous_format)
    block = triton.next_power_of_2(n)
    _launch(_rms_norm, (rows.shape[0],), rows, weight, out, n, rows.stride(0), eps, BLOCK=block,
            num_warps=min(16, max(1, block // 256)))
    return out.view(x.shape)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """SiLU(gate) * up for gate_up = [gate | up] along the last dimension, in float32, rounded
    once to gate_up's dtype."""
    if not use_triton(gate_up):
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up
    n = gate_up.shape[-1] // 2
    rows = _rows(gate_up, 2 * n)
    out = rows.new_empty(rows.shape[0], n)
    block = 1024
    _launch(_silu_mul, (rows.shape[0], triton.cdiv(n, block)), rows, out, n, rows.stride(0), BLOCK=block,
            num_warps=4)
    return out.view(*gate_up.shape[:-1], n)


def rope_write(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cols: torch.Tensor,
               k_cache: torch.Tensor, v_cache: torch.Tensor, n_kv: int) -> torch.Tensor:
    """RoPE (Llama's rotate-half form) on the q and k heads of qkv [B, s, nq + 2 n_kv, hd] with
    cos, sin [B, s, hd]; k and v written into the caches [B, n_kv, columns, hd] at columns
    `cols` [s]. Returns q as [B * n_kv, g * s, hd] (g = nq // n_kv): the rows of KV head j are
    its query heads j*g..j*g+g-1, ready for one batched product with the cache."""
    B, s, heads, hd = qkv.shape
    nq, h = heads - 2 * n_kv, hd // 2
    g = nq // n_kv
    if not use_triton(qkv) or hd & (hd - 1):  # Triton ranges are powers of two
        qk = qkv[:, :, : nq + n_kv]
        signed = torch.cat((-sin[..., :h], sin[..., h:]), -1)[:, :, None]  # rotate_half's signs
        qk = torch.addcmul(qk * cos[:, :, None], torch.cat((qk[..., h:], qk[..., :h]), -1), signed)
        k_cache.index_copy_(2, cols, qk[:, :, nq:].transpose(1, 2))
        v_cache.index_copy_(2, cols, qkv[:, :, nq + n_kv:].transpose(1, 2))
        return qk[:, :, :nq].reshape(B, s, n_kv, g, hd).permute(0, 2, 3, 1, 4).reshape(B * n_kv, g * s, hd)
    assert qkv.is_contiguous() and k_cache.stride() == v_cache.stride() and k_cache.stride(-1) == 1
    q = qkv.new_empty(B, n_kv, g, s, hd)
    _launch(_rope_write, (B * s, heads), qkv, cos.contiguous(), sin.contiguous(), cols, q, k_cache, v_cache,
            s, nq, n_kv, g, *k_cache.stride()[:3], HD=hd, num_warps=1)
    return q.view(B * n_kv, g * s, hd)


if triton is not None:
    @triton.jit
    def _rms_norm(x_ptr, w_ptr, out_ptr, n, stride, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        m = cols < n
        x = tl.load(x_ptr + row * stride + cols, mask=m, other=0.0).to(tl.float32)
        r = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n + eps)
        w = tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * n + cols, (x * r * w).to(out_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _silu_mul(gu_ptr, out_ptr, n, stride, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = cols < n
        g = tl.load(gu_ptr + row * stride + cols, mask=m, other=0.0).to(tl.float32)
        u = tl.load(gu_ptr + row * stride + n + cols, mask=m, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * n + cols, (g / (1.0 + tl.exp(-g)) * u).to(out_ptr.dtype.element_ty),
                 mask=m)

    @triton.jit
    def _rope_write(qkv_ptr, cos_ptr, sin_ptr, cols_ptr, q_ptr, k_ptr, v_ptr, s, nq, nkv, g,
                    stride_b, stride_h, stride_c, HD: tl.constexpr):
        tok = tl.program_id(0).to(tl.int64)  # b * s + t
        head = tl.program_id(1)  # q heads, then k heads, then v heads
        b, t = tok // s, tok % s
        d = tl.arange(0, HD)
        src = qkv_ptr + (tok * (nq + 2 * nkv) + head) * HD
        x = tl.load(src + d).to(tl.float32)
        if head < nq + nkv:
            partner = tl.load(src + (d + HD // 2) % HD).to(tl.float32)
            c = tl.load(cos_ptr + tok * HD + d).to(tl.float32)
            sn = tl.load(sin_ptr + tok * HD + d).to(tl.float32)
            x = x * c + tl.where(d < HD // 2, -partner, partner) * sn
        if head < nq:
            dst = q_ptr + (((b * nkv + head // g) * g + head % g) * s + t) * HD
            tl.store(dst + d, x.to(q_ptr.dtype.element_ty))
        else:
            col = tl.load(cols_ptr + t)
            kv = head - nq
            if kv < nkv:
                tl.store(k_ptr + b * stride_b + kv * stride_h + col * stride_c + d,
                         x.to(k_ptr.dtype.element_ty))
            else:
                tl.store(v_ptr + b * stride_b + (kv - nkv) * stride_h + col * stride_c + d,
                         x.to(v_ptr.dtype.element_ty))
