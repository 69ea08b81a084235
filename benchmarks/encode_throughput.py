"""Encode throughput of one SAE layer: the float32 path against the exact fast path (bf16 screen,
float32 recompute; pathreplay.sae.fast), with the share of entries recomputed and a check that
both give the same active set and values.

The SAE is random but shaped like a trained one: encoder rows of log-normal norm, thresholds 2.5-3.5
standard deviations of each feature's pre-activation above a small negative bias (L0 a few per
thousand), inputs with two massive coordinates and norms ~30 like a Llama residual. Rates are the
best of --repeat warm calls.

    PYTHONPATH=src python benchmarks/encode_throughput.py --device cpu --d-model 512 --d-sae 4096 --rows 2048
    PYTHONPATH=src python benchmarks/encode_throughput.py --device cuda --d-model 4096 --d-sae 32768 \\
        --rows 8192 --json benchmarks/encode-h100.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable

import torch

from pathreplay.sae.exact import SAE
from pathreplay.sae.fast import exact_encode
from pathreplay.sae.files import SAEMeta


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def layer(d: int, F: int, rows: int, dev: torch.device, seed: int = 0) -> tuple[SAE, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(F, d, generator=g) / math.sqrt(d) * torch.exp(0.3 * torch.randn(F, 1, generator=g))
    x = torch.randn(rows, d, generator=g)
    x[:, :2] *= 15
    x = x / x.norm(dim=1, keepdim=True) * 30 * torch.exp(0.2 * torch.randn(rows, 1, generator=g))
    b = -0.1 * torch.rand(F, generator=g)
    t = (W.norm(dim=1) * 30 / math.sqrt(d) * (2.5 + torch.rand(F, generator=g)) + b).clamp_min(0)
    meta = SAEMeta("bench", None, d, F, "blocks.0.hook_resid_post", 0, "jumprelu", None)
    return SAE(meta, W, b, t, W.clone(), torch.zeros(d)).to(dev), x.to(dev)


def best_seconds(fn: Callable[[], object], dev: torch.device, repeat: int) -> float:
    fn()  # warm: kernels, the bf16 copy of W
    times = []
    for _ in range(repeat):
        sync(dev)
        t0 = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--d-model", type=int, default=4096)
    ap.add_argument("--d-sae", type=int, default=32768)
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--chunk", type=int, default=16, help="rows per union GEMM of the recompute")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    dev = torch.device(a.device)
    sae, x = layer(a.d_model, a.d_sae, a.rows, dev)
    fw = sae.fast_weights()

    ref = sae.encode(x, exact_fast=False)
    fast, stats = exact_encode(x, sae.W, sae.b, sae.t, fw, rows=a.chunk)
    same_set = bool(torch.equal(ref != 0, fast != 0))
    max_diff = float((fast - ref).abs().max())
    bitwise = bool(torch.equal(fast, ref))
    del ref, fast
    t32 = best_seconds(lambda: sae.encode(x, exact_fast=False), dev, a.repeat)
    tfast = best_seconds(lambda: exact_encode(x, sae.W, sae.b, sae.t, fw, rows=a.chunk), dev, a.repeat)

    res = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "d_model": a.d_model, "d_sae": a.d_sae, "rows": a.rows, "chunk": a.chunk,
           "fp32_rows_per_s": a.rows / t32, "fast_rows_per_s": a.rows / tfast,
           "speedup": t32 / tfast, "l0": stats.active / a.rows,
           "recomputed_share": stats.recomputed / stats.entries,
           "computed_share": stats.computed / stats.entries,
           "active_sets_equal": same_set, "values_bitwise_equal": bitwise, "max_abs_diff": max_diff}
    print(f"{res['device']}: d_model {a.d_model}, d_sae {a.d_sae}, {a.rows} rows, L0 {res['l0']:.1f}")
    print(f"{'path':<12}{'rows/s':>14}")
    print(f"{'float32':<12}{res['fp32_rows_per_s']:>14,.0f}")
    print(f"{'exact fast':<12}{res['fast_rows_per_s']:>14,.0f}   ({res['speedup']:.2f}x)")
    print(f"entries recomputed in float32: {res['recomputed_share']:.3%} "
          f"({stats.recomputed / max(stats.active, 1):.2f}x the active ones); "
          f"union GEMMs computed {res['computed_share']:.2%}")
    print(f"active sets equal: {same_set}; values bitwise equal: {bitwise} (max |diff| {max_diff:.3g})")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=2)
    if not same_set:
        raise SystemExit("the exact fast path changed the active set")


if __name__ == "__main__":
    main()
