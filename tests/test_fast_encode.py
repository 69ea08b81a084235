"""The exact fast encode (bf16 screen, float32 recompute) against the float32 encode, on CPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import DEMO, ROOT
from pathreplay.sae import fast as fe
from pathreplay.sae.exact import SAE, load_sae
from pathreplay.sae.files import SAEMeta


def make_sae(W: torch.Tensor, b: torch.Tensor, t: torch.Tensor, activation: str = "jumprelu",
             k: int | None = None) -> SAE:
    F, d = W.shape
    meta = SAEMeta("test", None, d, F, "blocks.0.hook_resid_post", 0, activation, k)
    return SAE(meta, W, b, t, W.clone(), torch.zeros(d))


def residual_like(rows: int, d: int, g: torch.Generator) -> torch.Tensor:
    """Rows with a few massive coordinates and norms ~30 (log-normal), like a Llama residual."""
    x = torch.randn(rows, d, generator=g)
    x[:, :2] *= 15
    return x / x.norm(dim=1, keepdim=True) * 30 * torch.exp(0.2 * torch.randn(rows, 1, generator=g))


def realistic(d: int = 512, F: int = 4096, rows: int = 2048, seed: int = 0) -> tuple[SAE, torch.Tensor]:
    """Encoder rows of log-normal norm, thresholds 2.5-3.5 standard deviations of each feature's
    pre-activation above its (negative) bias: L0 of a few per thousand."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(F, d, generator=g) / math.sqrt(d) * torch.exp(0.3 * torch.randn(F, 1, generator=g))
    x = residual_like(rows, d, g)
    b = -0.1 * torch.rand(F, generator=g)
    sigma = W.norm(dim=1) * 30 / math.sqrt(d)
    t = (sigma * (2.5 + torch.rand(F, generator=g)) + b).clamp_min(0)
    return make_sae(W, b, t), x


def assert_same(fast: torch.Tensor, ref: torch.Tensor) -> None:
    assert torch.equal(fast != 0, ref != 0), f"{int(((fast != 0) != (ref != 0)).sum())} flips"
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


@pytest.fixture(scope="module")
def real():
    sae, x = realistic()
    return sae, x, sae.encode(x, exact_fast=False)


def test_realistic_data_same_active_set_and_values(real):
    sae, x, ref = real
    assert 1e-3 < (ref != 0).float().mean() < 1e-2  # the sparsity the margins are meant for
    assert_same(sae.encode(x, exact_fast=True), ref)
    # [..., d] in, [..., d_sae] out, like the float32 path
    assert_same(sae.encode(x[:60].view(3, 20, -1), exact_fast=True), ref[:60].view(3, 20, -1))


def test_few_entries_recomputed(real):
    """The bound is not vacuous: well under 2% of entries (about 2x the active ones) need float32."""
    sae, x, ref = real
    _, stats = fe.exact_encode(x, sae.W, sae.b, sae.t, sae.fast_weights())
    assert stats.entries == ref.numel() and stats.active == int((ref != 0).sum())
    assert stats.active <= stats.recomputed <= stats.computed
    assert stats.recomputed < 0.02 * stats.entries
    assert stats.recomputed < 3 * stats.active
    assert stats.computed < 0.25 * stats.entries  # the union GEMMs stay a fraction of a full GEMM


def test_too_small_a_margin_flips_features(real):
    """The screen alone (margin 0) or 2% of the margin misses features the float32 encode has: the
    tests above can fail. (A tenth still misses none here: the bound is worst case, about sqrt(n)
    times the typical bf16 error.)"""
    sae, x, ref = real
    for scale in (0.0, 0.02):
        f, _ = fe.exact_encode(x, sae.W, sae.b, sae.t, sae.fast_weights(), margin_scale=scale)
        assert int(((f != 0) != (ref != 0)).sum()) > 0


def ties(d: int = 64, F: int = 96, rows: int = 32) -> tuple[SAE, torch.Tensor, torch.Tensor]:
    """W = m 2^-12 with |m| < 2^11 (not bf16-exact), x = q 2^-6 with |q| < 2^6, b = 0: every product
    is a multiple of 2^-18 below 2^-1 and every partial sum below 2^5, so each is exact in float32
    and the float32 pre-activation has one value whatever the summation order. Feature i reads row
    i % rows and its threshold is that pre-activation exactly, one ulp below, or one ulp above."""
    g = torch.Generator().manual_seed(3)
    W = torch.randint(-(2 ** 11) + 1, 2 ** 11, (F, d), generator=g).float() * 2.0 ** -12
    x = torch.randint(-(2 ** 6) + 1, 2 ** 6, (rows, d), generator=g).float() * 2.0 ** -6
    W = torch.where((W * x[torch.arange(F) % rows] < 0), -W, W)  # positive pre-activations
    pre = (x.double() @ W.double().T).float()  # exact
    at = pre[torch.arange(F) % rows, torch.arange(F)]
    side = torch.arange(F) % 3  # 0: t = pre, 1: one ulp below, 2: one ulp above
    t = torch.where(side == 1, torch.nextafter(at, torch.zeros(F)),
                    torch.where(side == 2, torch.nextafter(at, torch.full((F,), math.inf)), at))
    return make_sae(W, torch.zeros(F), t), x, side


def test_entries_exactly_at_the_threshold_and_one_ulp_either_side():
    sae, x, side = ties()
    rows = x.shape[0]
    ref = sae.encode(x, exact_fast=False)
    own = ref[torch.arange(len(side)) % rows, torch.arange(len(side))]
    assert ((own != 0) == (side == 1)).all()  # strictly above the threshold only one ulp below it
    fast = sae.encode(x, exact_fast=True)
    assert torch.equal(fast, ref)
    # bf16 moves these pre-activations by far more than an ulp: the screen alone decides wrongly
    f, _ = fe.exact_encode(x, sae.W, sae.b, sae.t, sae.fast_weights(), margin_scale=0.0)
    assert not torch.equal(f != 0, ref != 0)


def test_demo_sae():
    sae = load_sae(DEMO / "saes" / "L1R", "llamascope", 1)
    g = torch.Generator().manual_seed(5)
    # random residuals of the demo's norm, and decoder mixtures that make features fire
    x = torch.cat([torch.randn(512, 128, generator=g) * 19.76 / math.sqrt(128),
                   torch.randn(512, 64, generator=g).abs() @ sae.U[:64] * 3])
    ref = sae.encode(x, exact_fast=False)
    assert (ref != 0).any()
    assert_same(sae.encode(x, exact_fast=True), ref)


def test_topk_stays_on_the_float32_path(real):
    sae, x, _ = real
    top = make_sae(sae.W, sae.b, torch.zeros_like(sae.t), activation="topk", k=8)
    ref = top.encode(x[:256], exact_fast=False)
    assert torch.equal(top.encode(x[:256], exact_fast=True), ref)
    assert ((ref != 0).sum(-1) == 8).all()
    assert top._fast is None  # no bf16 copy built for a top-k SAE


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_a_gpu_codes_of_a_row_do_not_depend_on_the_rows_beside_it(real):
    """The sham control compares codes of equal states encoded in different parts: the fast
    path may turn on in the workflow only if a row's codes are the same to the bit whatever
    rows share its chunk, and its active set is the float32 encode's."""
    sae, x, _ = real
    gpu = make_sae(sae.W, sae.b, sae.t).cuda()
    xs = x.cuda()
    ref = gpu.encode(xs, exact_fast=False)
    alone = gpu.encode(xs, exact_fast=True)
    assert torch.equal(alone != 0, ref != 0)
    torch.testing.assert_close(alone, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    shuffled = torch.randperm(len(xs), generator=torch.Generator().manual_seed(1)).cuda()
    again = gpu.encode(xs[shuffled], exact_fast=True)
    assert torch.equal(again, alone[shuffled])


def test_default_is_float32_on_cpu_and_the_bf16_copy_is_cached(real):
    sae, x, ref = real
    fresh = make_sae(sae.W, sae.b, sae.t)
    assert torch.equal(fresh.encode(x[:64]), ref[:64]) and fresh._fast is None
    fresh.encode(x[:64], exact_fast=True)
    cached = fresh._fast
    assert cached is not None and cached.W16.dtype == torch.bfloat16
    fresh.encode(x[64:128], exact_fast=True)
    assert fresh._fast is cached
    fresh.t.add_(1.0)  # changed in place: rebuilt, and the new thresholds are used
    assert_same(fresh.encode(x[:64], exact_fast=True), fresh.encode(x[:64], exact_fast=False))
    assert fresh._fast is not cached


def test_edge_inputs():
    sae, x = realistic(d=64, F=256, rows=40, seed=1)
    assert sae.encode(x[:0], exact_fast=True).shape == (0, 256)
    for n in (1, 3, 17):  # rows that are not a multiple of the chunk
        assert_same(sae.encode(x[:n], exact_fast=True), sae.encode(x[:n], exact_fast=False))
    bad = x[:4].clone()
    bad[1, 0] = math.nan
    bad[2, 0] = math.inf
    # non-finite rows are never screened out: they get the float32 path's values (inf, or 0 for NaN)
    torch.testing.assert_close(sae.encode(bad, exact_fast=True), sae.encode(bad, exact_fast=False),
                               rtol=0, atol=0, equal_nan=True)


def test_margin_constant_covers_bf16_rounding():
    """c is at least the bf16 operand rounding 2 u + u^2 and grows with d_model."""
    u = 2.0 ** -8
    assert fe.margin_constant(512, False) > 2 * u + u * u
    assert fe.margin_constant(4096, False) > fe.margin_constant(512, False)
    assert fe.margin_constant(4096, True) > fe.margin_constant(4096, False) + u


def test_benchmark_runs_and_confirms_equal_active_sets(tmp_path):
    out = tmp_path / "e.json"
    run = subprocess.run([sys.executable, "benchmarks/encode_throughput.py", "--device", "cpu", "--d-model", "64",
                          "--d-sae", "512", "--rows", "100", "--repeat", "1", "--json", str(out)],
                         check=False, cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["active_sets_equal"] and 0 < res["recomputed_share"] < 0.05
    assert res["fp32_rows_per_s"] > 0 and res["fast_rows_per_s"] > 0
