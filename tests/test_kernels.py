"""The engine's Triton kernels against hand-written references, run on the CPU through Triton's
interpreter (in a subprocess: the interpreter is chosen when the kernels are defined)."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from pathreplay.runtime import kernels

CHECK = r"""
import os
import torch
from pathreplay.runtime import kernels
assert kernels.use_triton(torch.zeros(1)), "the interpreter should run the Triton kernels"
gen = torch.Generator().manual_seed(0)
for dt, tol in ((torch.float32, 1e-6), (torch.bfloat16, 2 ** -7)):
    x = (torch.randn(3, 5, 300, generator=gen) * 3).to(dt)
    w = torch.randn(300, generator=gen).to(dt)
    x64 = x.double()
    want = x64 * (x64.pow(2).mean(-1, keepdim=True) + 1e-5).rsqrt() * w.double()
    for got, ref in ((kernels.rms_norm(x, w, 1e-5), want),
                     (kernels.rms_norm(x[:, -1:], w, 1e-5), want[:, -1:])):  # strided rows
        assert got.dtype == dt and got.shape == ref.shape
        assert torch.allclose(got.double(), ref, rtol=tol, atol=tol), (dt, (got.double() - ref).abs().max())
    gu = torch.randn(2, 3, 2 * 1500, generator=gen).to(dt)  # 1500: not a multiple of the block
    gate, up = gu.double().chunk(2, -1)
    want = gate * torch.sigmoid(gate) * up
    got = kernels.silu_mul(gu)
    assert got.dtype == dt and got.shape == want.shape
    assert torch.allclose(got.double(), want, rtol=tol, atol=tol), (dt, (got.double() - want).abs().max())
B, s, nkv, g, hd = 2, 3, 2, 3, 8
for dt, tol in ((torch.float32, 1e-6), (torch.bfloat16, 2 ** -7)):
    qkv = torch.randn(B, s, nkv * (g + 2), hd, generator=gen).to(dt)
    cos, sin = torch.randn(2, B, s, hd, generator=gen).to(dt)
    cols = torch.tensor([5, 6, 7])
    outs = []
    for impl in ("triton", "torch"):
        os.environ["PATHREPLAY_KERNELS"] = impl
        k, v = torch.zeros(2, B, nkv, 10, hd, dtype=dt)
        outs.append((kernels.rope_write(qkv, cos, sin, cols, k, v, nkv), k, v))
    for got, ref in zip(outs[0], outs[1]):
        assert got.shape == ref.shape and torch.allclose(got.float(), ref.float(), rtol=tol, atol=tol)
print("ok")
"""


ENGINE = r"""
import os
import torch
from conftest import make_tiny_lm
from pathreplay.runtime.engine import Engine
from pathreplay.runtime.generate import generate
from pathreplay.runtime.patch import Interventions

model, tok = make_tiny_lm()
runs = []
for impl in ("triton", "torch"):
    os.environ["PATHREPLAY_KERNELS"] = impl
    iv = Interventions(model, (), [0, 1, 2])
    gen = generate(model, tok, ["Choice: 1) Bet", "Round 1: Bet $10, Win"], [3, 4], max_new_tokens=6,
                   temperature=0.7, interventions=iv, engine=Engine(model, batch=2, max_len=64), prefill_chunk=4)
    runs.append((gen, iv))
(a, iva), (b, ivb) = runs
assert torch.equal(a.tokens, b.tokens), (a.tokens, b.tokens)
for blk in (0, 1, 2):
    assert torch.allclose(iva.states(blk), ivb.states(blk), atol=1e-5)
print("ok")
"""


def _interpret(script: str) -> None:
    tests = os.path.dirname(os.path.abspath(__file__))  # for conftest's make_tiny_lm
    path = os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, TRITON_INTERPRET="1", PATHREPLAY_KERNELS="triton", PYTHONPATH=path)
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                         check=False)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


needs_triton = pytest.mark.skipif(kernels.triton is None,
                                  reason="needs triton (the test extra installs it on Linux x86_64)")


@needs_triton
def test_triton_kernels_match_references_under_the_interpreter():
    _interpret(CHECK)


@needs_triton
def test_engine_with_triton_kernels_equals_engine_with_torch_ops_under_the_interpreter():
    _interpret(ENGINE)


def test_torch_fallbacks_compute_the_same():
    x, w = torch.randn(4, 64), torch.randn(64)
    assert not kernels.use_triton(x)  # a CPU tensor outside the interpreter
    want = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    assert torch.allclose(kernels.rms_norm(x, w, 1e-6), want, atol=1e-6)
    gu = torch.randn(4, 10)
    assert torch.allclose(kernels.silu_mul(gu), F.silu(gu[:, :5]) * gu[:, 5:])


def test_rope_write_rotates_writes_the_cache_and_groups_the_queries():
    B, s, nkv, g, hd = 2, 3, 2, 2, 4
    qkv = torch.randn(B, s, nkv * (g + 2), hd)
    cos, sin = torch.randn(B, s, hd), torch.randn(B, s, hd)
    k, v = torch.zeros(2, B, nkv, 6, hd)
    q = kernels.rope_write(qkv, cos, sin, torch.tensor([2, 3, 4]), k, v, nkv)

    def rope(x, b, t):  # Llama: x * cos + rotate_half(x) * sin, rotate_half(x) = (-x[2:], x[:2])
        return x * cos[b, t] + torch.cat((-x[2:], x[:2])) * sin[b, t]

    assert q.shape == (B * nkv, g * s, hd)
    for b in range(B):
        for t in range(s):
            for j in range(nkv):
                for i in range(g):  # query head j*g+i reads KV head j: row b*nkv+j, column i*s+t
                    assert torch.allclose(q[b * nkv + j, i * s + t], rope(qkv[b, t, j * g + i], b, t), atol=1e-6)
                assert torch.allclose(k[b, j, 2 + t], rope(qkv[b, t, nkv * g + j], b, t), atol=1e-6)
                assert torch.equal(v[b, j, 2 + t], qkv[b, t, nkv * g + nkv + j])
    assert not k[:, :, :2].any() and not v[:, :, 5:].any()  # other columns untouched


@pytest.mark.skipif(not torch.cuda.is_available() or kernels.triton is None, reason="needs a GPU and triton")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_kernels_on_the_gpu_equal_the_torch_ops(monkeypatch, dtype):
    # The reference is the torch ops in float32 on the same (rounded) inputs: in bf16 the torch
    # path rounds between its ops (RoPE's q*cos, then the add), the kernels once at the end, so
    # each kernel output is within half a bf16 step (2^-9 relative) of the float32 result.
    tol = 1e-5 if dtype == torch.float32 else 2 ** -8
    gen = torch.Generator(device="cuda").manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, device="cuda").to(dtype)

    x, w, gu = rnd(3, 7, 4096), rnd(4096), rnd(3, 7, 2 * 14336)
    qkv, cos, sin = rnd(3, 7, 48, 128), rnd(3, 7, 128), rnd(3, 7, 128)
    cols = torch.arange(2, 9, device="cuda")
    outs = []
    for impl, as_ in (("triton", dtype), ("torch", torch.float32)):
        monkeypatch.setenv("PATHREPLAY_KERNELS", impl)
        a = [t.to(as_) for t in (x, w, gu, qkv, cos, sin)]
        k, v = torch.zeros(2, 3, 8, 16, 128, dtype=as_, device="cuda")
        outs.append([kernels.rms_norm(a[0], a[1], 1e-5), kernels.silu_mul(a[2]),
                     kernels.rope_write(a[3], a[4], a[5], cols, k, v, 8), k, v])
    for got, ref in zip(*outs):
        assert got.dtype == dtype and got.shape == ref.shape
        assert torch.allclose(got.float(), ref, rtol=tol, atol=1e-5), (got.float() - ref).abs().max()


def test_a_failing_triton_kernel_names_the_switch_that_avoids_it():
    class Broken:
        __name__ = "_rope_write"

        def __getitem__(self, grid):
            def run(*args, **meta):
                raise ValueError("unsupported GPU")
            return run

    with pytest.raises(RuntimeError, match="rope_write failed.*unsupported GPU.*PATHREPLAY_KERNELS=torch"):
        kernels._launch(Broken(), (1,))
