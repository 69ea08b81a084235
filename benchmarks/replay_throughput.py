"""Replay throughput: Hugging Face `generate` with patch and capture hooks vs pathreplay's engine.

On a randomly initialised model of the chosen shape (throughput does not depend on the weights),
both generate `--new` tokens per row after a `--prompt`-token prompt (one prompt in every row, as
in a replay batch) with one feature clamped at a middle block at the last prompt position and
every generated token (`exp2`, the replay's default) and every block's output captured at every
generated token; `--compare` also times the engine with every row's prompt in its own cache; on a GPU the engine
runs with CUDA graphs, without them, and with graphs but torch operations in place of its Triton
kernels (PATHREPLAY_KERNELS=torch). Decode tok/s leave prefill out: each path's decode steps are
timed inside its call, from the first decode step's forward to the call's end (hooks), or around
the engine's decode (the best of two warm calls), so no span is a difference of two runs and none
can come out negative on a busy machine; end-to-end tok/s keep prefill. Also: the floor (weights read once per step at the
measured copy bandwidth, or 2 x params FLOPs per token at the measured matmul rate, whichever is
slower), peak GPU memory against weights + KV cache + capture buffer + 1 GiB, and the encode
rate of one 32K-feature SAE layer. benchmarks/gpu_check.sh runs the GPU tests and this.

    PYTHONPATH=src python benchmarks/replay_throughput.py --shape demo --device cpu --batch 16
    PYTHONPATH=src python benchmarks/replay_throughput.py --shape llama-3.1-8b --device cuda \\
        --batch 16 64 128 --json benchmarks/h100.json --profile
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from typing import NamedTuple
from unittest import mock

import torch

from pathreplay.replay.plan import Job
from pathreplay.replay.trials import ReplaySettings, run_jobs, write_result
from pathreplay.runtime.engine import Engine
from pathreplay.runtime.generate import generate
from pathreplay.runtime.patch import Interventions, Patch
from pathreplay.sae.exact import SAE, Feature
from pathreplay.sae.files import SAEMeta

clock: Callable[[], float] = time.perf_counter  # every span is read from this (a test puts a counter here)

SHAPES = {
    "demo": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=640, max_position_embeddings=512),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                         max_position_embeddings=131072, rope_theta=500000.0,
                         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
}


class _Tok:
    """The least of a tokenizer `generate` needs, for random token prompts."""

    pad_token_id = 0
    eos_token_id = -1  # never sampled: every row runs the full length

    def __init__(self, vocab: int, prompt: int) -> None:
        self.vocab, self.prompt = vocab, prompt

    def __call__(self, texts, return_tensors=None, padding=None):
        if isinstance(texts, str):  # one text, as a list of ids (what the replay measures prompts with)
            return {"input_ids": prompt_ids(self.vocab, 1, self.prompt)[0].tolist()}
        ids = prompt_ids(self.vocab, len(texts), self.prompt)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def __len__(self) -> int:
        return self.vocab

    def decode(self, ids, skip_special_tokens=True) -> str:
        return ""


def prompt_ids(vocab: int, batch: int, prompt: int) -> torch.Tensor:
    """One random prompt in every row, as in a replay batch (trials of one prompt)."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(1, vocab, (1, prompt), generator=g).expand(batch, -1).clone()


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def model_of(shape: str, dev: torch.device, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**SHAPES[shape], bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device(dev):
        old = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = LlamaForCausalLM(cfg).eval()
        finally:
            torch.set_default_dtype(old)
    return model


def feature_of(model) -> Feature:
    d = model.config.hidden_size
    g = torch.Generator().manual_seed(1)
    w = torch.randn(d, generator=g) / math.sqrt(d)
    dev = next(model.parameters()).device
    return Feature(0, w.to(dev), 0.0, 0.0, (w / w.norm() ** 2 * 1.0).to(dev))


class HookTimes(NamedTuple):
    """Seconds of one `generate` call with hooks."""

    decode: float  # from the first decode step's forward to the call's end
    total: float  # the whole call, prefill included


def hf_generate(model, batch, prompt, new, patches, capture) -> HookTimes:
    """(a): transformers' generate, with the patch and capture as forward hooks."""
    dev = next(model.parameters()).device
    ids = prompt_ids(model.config.vocab_size, batch, prompt).to(dev)
    iv = Interventions(model, patches, capture)
    iv.bind(batch, new, dev, next(model.parameters()).dtype)
    first_decode: list[float] = []

    def phase(m, a, k):
        iv.phase = "prefill" if k["input_ids"].shape[1] > 1 else "decode"
        if iv.phase == "decode" and not first_decode:
            sync(dev)
            first_decode.append(clock())

    flip = model.register_forward_pre_hook(phase, with_kwargs=True)
    step = model.register_forward_hook(lambda m, a, o: iv.advance() if iv.phase == "decode" else None)
    sync(dev)
    t0 = clock()
    with iv.active():
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.7,
                       max_new_tokens=new, min_new_tokens=new, pad_token_id=0)
    sync(dev)
    t1 = clock()
    flip.remove()
    step.remove()
    return HookTimes(t1 - first_decode[0] if first_decode else float("nan"), t1 - t0)


def engine_generate(model, batch, prompt, new, patches, capture, eng) -> float:
    """(b): pathreplay's engine through the same generate loop the replay uses."""
    dev = next(model.parameters()).device
    iv = Interventions(model, patches, capture)
    sync(dev)
    t0 = clock()
    generate(model, _Tok(model.config.vocab_size, prompt), [""] * batch, list(range(batch)),
             max_new_tokens=new, temperature=0.7, interventions=iv, engine=eng)
    sync(dev)
    return clock() - t0


class EngineTimes(NamedTuple):
    """Seconds of one engine configuration's calls at one batch size."""

    decode: float  # the decode steps alone, best of two warm calls
    warm: float  # a whole warm call, best of two
    first: float  # the first call, graph capture included


def engine_times(model, batch, prompt, new, patches, capture, graphs=None, kernels="triton", share=True
                 ) -> EngineTimes:
    """Times on a fresh engine; NaN if it fails (the other columns of a run on a lent machine
    survive). The decode steps are timed inside the call: a shorter call to subtract would rebind
    the capture buffers to its length and drop the graphs, so the next full call would capture
    them again (one ordering once read 11,731 for 12,690 tok/s so)."""
    class Timed(Engine):
        def decode(self, rows, iv, steps):
            sync(self.k.device)
            t0 = clock()
            super().decode(rows, iv, steps)
            sync(self.k.device)
            self.decode_s = clock() - t0

    eng = Timed(model, batch, prompt + new, graphs=graphs, share=share)
    try:
        with mock.patch.dict(os.environ, PATHREPLAY_KERNELS=kernels):
            first = engine_generate(model, batch, prompt, new, patches, capture, eng)
            warm = [(engine_generate(model, batch, prompt, new, patches, capture, eng), eng.decode_s)
                    for _ in range(2)]
        return EngineTimes(min(d for _, d in warm), min(t for t, _ in warm), first)
    except RuntimeError as err:
        print(f"engine (graphs {graphs}, kernels {kernels}, share {share}) failed at batch {batch}: {err}")
        return EngineTimes(*(float("nan"),) * 3)


def job_rate(model, batch: int, prompt: int, new: int, feat: Feature, out: str, n_batches: int = 2
             ) -> tuple[float, float, float]:
    """The replay job end to end: `replay.trials.run_jobs` over n_batches batches of one prompt's trials, patched
    as the benchmark patches and capturing every block at every generated token, then
    `replay.trials.write_result` (safetensors per layer and the trial table) into `out`. (trials/s,
    tokens/s, seconds), the write included; a warm-up batch first."""
    n_layers = model.config.num_hidden_layers
    s = ReplaySettings(max_new_tokens=new, temperature=0.7, batch_size=batch, capture_layers=range(n_layers),
                       positions="exp2", mode="clamp")
    tok = _Tok(model.config.vocab_size, prompt)
    jobs = [Job("p", "c", "x", "c1", t, t, 3.0) for t in range(n_batches * batch)]
    run_jobs(model, tok, jobs[:batch], s, feature=feat, block=n_layers // 2)  # warm-up (graphs, kernels)
    sync(next(model.parameters()).device)
    t0 = clock()
    res = run_jobs(model, tok, jobs, s, feature=feat, block=n_layers // 2)
    write_result(res, list(range(n_layers)), [f"{out}/L{b}.safetensors" for b in range(n_layers)],
                 f"{out}/trials.parquet")
    dt = clock() - t0
    return len(jobs) / dt, float(res.trials["n_tokens"].sum()) / dt, dt


def profile_decode(model, batch, prompt, new, feat, capture) -> None:
    """Where a graphed decode step's time goes: CUDA kernels over 16 steps after prefill."""
    from torch.profiler import ProfilerActivity, profile

    class Profiled(Engine):
        def decode(self, rows, iv, steps):
            super().decode(rows, iv, 2)  # captures the graph
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as self.prof:
                super().decode(rows, iv, 16)
                torch.cuda.synchronize()

    eng = Profiled(model, batch, prompt + new)
    patches = [Patch(model.config.num_hidden_layers // 2, feat, torch.full((batch,), 3.0), "clamp", "exp2")]
    engine_generate(model, batch, prompt, new, patches, capture, eng)
    print(eng.prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))


def floor_tok_per_s(model, batch: int, dev: torch.device, dtype: torch.dtype) -> float:
    """Batch / max(weights / copy bandwidth, 2 x params x batch / matmul rate)."""
    n = 4096 if dev.type == "cuda" else 1024
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(dev)
    t0 = clock()
    reps = 20 if dev.type == "cuda" else 3
    for _ in range(reps):
        a @ b
    sync(dev)
    flops = 2 * n ** 3 * reps / (clock() - t0)
    buf = torch.empty(256 * 2 ** 20 // 2, device=dev, dtype=torch.float16)
    out = torch.empty_like(buf)
    out.copy_(buf)
    sync(dev)
    t0 = clock()
    for _ in range(reps):
        out.copy_(buf)
    sync(dev)
    bw = 2 * buf.numel() * 2 * reps / (clock() - t0)  # read + write
    params = sum(p.numel() for p in model.parameters())
    step = max(params * buf.element_size() * (2 if dtype == torch.float32 else 1) / bw,
               2 * params * batch / flops)
    return batch / step


def budget_gb(model, batch: int, max_len: int, new: int) -> float:
    """The issue's bound on peak memory: weights + KV cache + capture buffer + 1 GiB."""
    size = next(model.parameters()).element_size()
    cfg = model.config
    n_layers = cfg.num_hidden_layers
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    weights = sum(t.numel() for t in model.parameters()) * size
    kv = 2 * n_layers * batch * cfg.num_key_value_heads * max_len * hd * size
    capture = n_layers * batch * new * cfg.hidden_size * size
    return (weights + kv + capture) / 2 ** 30 + 1


def encode_rate(dev: torch.device, d_model: int, d_sae: int = 32768, rows: int = 8192) -> float:
    """Rows/s of encode + top-k through one SAE layer held on the device."""
    g = torch.Generator().manual_seed(2)
    W = torch.randn(d_sae, d_model, generator=g) / math.sqrt(d_model)
    meta = SAEMeta("bench", None, d_model, d_sae, "blocks.0.hook_resid_post", 0, "jumprelu", None)
    sae = SAE(meta, W, torch.zeros(d_sae), torch.full((d_sae,), 0.1), W.clone(), torch.zeros(d_model)).to(dev)
    x = torch.randn(rows, d_model, device=dev)
    sae.encode(x[:64])
    sync(dev)
    t0 = clock()
    f = sae.encode(x)
    f.topk(64, dim=-1)
    sync(dev)
    return rows / (clock() - t0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="demo")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--batch", type=int, nargs="+", default=[16])
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--profile", action="store_true", help="kernel table of graphed decode steps at the last batch")
    ap.add_argument("--job", action="store_true",
                    help="also time the replay job end to end (run_jobs and write_result) at each batch")
    ap.add_argument("--compare", action="store_true",
                    help="also time the engine with every row's prompt in its own cache (share=False)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    model = model_of(args.shape, dev, dtype)
    n_layers = model.config.num_hidden_layers
    feat = feature_of(model)
    rows = []
    print(f"{args.shape} on {args.device} ({torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}), "
          f"prompt {args.prompt}, {args.new} new tokens, clamp at block {n_layers // 2}, capture all {n_layers} blocks")
    print("decode tok/s: generated tokens over the time of the decode steps, timed inside each call (hooks: "
          "from the first decode step on; engine: its decode steps, best of 2 warm calls); end to end: whole call")
    print(f"{'batch':>5} | {'decode: hooks':>13} {'eng. eager':>10} {'torch ops':>9} {'engine':>8} {'ratio':>6} "
          f"{'floor':>8} {'of floor':>8} | {'end to end: hooks':>17} {'engine':>8} {'1st call':>8} | {'peak GB':>7} {'bound':>6}")
    cap = range(n_layers)
    compared: list[str] = []
    jobs_done: list[str] = []
    for batch in args.batch:
        patches = [Patch(n_layers // 2, feat, torch.full((batch,), 3.0), "clamp", "exp2")]
        hf_generate(model, batch, args.prompt, 2, patches, cap)  # warm-up
        hooks = hf_generate(model, batch, args.prompt, args.new, patches, cap)
        a = hooks.total
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        db, b, first = engine_times(model, batch, args.prompt, args.new, patches, cap)
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if dev.type == "cuda" else float("nan")
        de, dt = db, db  # the CPU has neither graphs nor Triton kernels
        if dev.type == "cuda":  # what the graphs buy, and what the Triton kernels buy
            de = engine_times(model, batch, args.prompt, args.new, patches, cap, graphs=False).decode
            dt = engine_times(model, batch, args.prompt, args.new, patches, cap, kernels="torch").decode
        n_dec = batch * (args.new - 1)
        dec_a, dec_b, dec_e, dec_t = n_dec / hooks.decode, n_dec / db, n_dec / de, n_dec / dt
        tot = batch * args.new
        floor = floor_tok_per_s(model, batch, dev, dtype)
        bound = budget_gb(model, batch, args.prompt + args.new, args.new)
        rows.append({"batch": batch, "engine_tok_per_s": dec_b, "generate_tok_per_s": dec_a,
                     "floor_tok_per_s": floor, "peak_mem_gb": peak, "engine_eager_tok_per_s": dec_e,
                     "engine_torch_ops_tok_per_s": dec_t,
                     "engine_end_to_end_tok_per_s": tot / b, "generate_end_to_end_tok_per_s": tot / a,
                     "engine_first_call_tok_per_s": tot / first, "mem_bound_gb": bound,
                     "prompt": args.prompt, "new": args.new})
        if args.job:
            with tempfile.TemporaryDirectory() as tmp:
                trials_s, tokens_s, secs = job_rate(model, batch, args.prompt, args.new, feat, tmp)
            rows[-1].update(job_trials_per_s=trials_s, job_tok_per_s=tokens_s, job_seconds=secs)
            jobs_done.append(f"{batch:>5} | {2 * batch:>6} {trials_s:>9,.1f} {tokens_s:>9,.0f} {secs:>7.1f}")
        if args.compare:
            un = engine_times(model, batch, args.prompt, args.new, patches, cap, share=False)
            rows[-1].update(engine_unshared_tok_per_s=n_dec / un.decode,
                            engine_unshared_end_to_end_tok_per_s=tot / un.warm)
            compared.append(f"{batch:>5} | {n_dec / un.decode:>15,.0f} {dec_b:>13,.0f} {un.decode / db:>6.2f} | "
                            f"{tot / un.warm:>15,.0f} {tot / b:>13,.0f} {un.warm / b:>6.2f}")
        print(f"{batch:>5} | {dec_a:>13,.0f} {dec_e:>10,.0f} {dec_t:>9,.0f} {dec_b:>8,.0f} {dec_b / dec_a:>6.2f} {floor:>8,.0f} "
              f"{dec_b / floor:>8.1%} | {tot / a:>17,.0f} {tot / b:>8,.0f} {tot / first:>8,.0f} | "
              f"{peak:>7.2f} {bound:>6.2f}")
    if jobs_done:
        print("\nreplay job end to end (run_jobs + write_result, 2 batches of one prompt, every block captured)")
        print(f"{'batch':>5} | {'trials':>6} {'trials/s':>9} {'tok/s':>9} {'seconds':>7}")
        print("\n".join(jobs_done))
    if compared:
        print("\nshared prompt (one prefill per prompt, shared-prefix attention) against every row's own prompt")
        print(f"{'batch':>5} | {'decode: own':>15} {'shared':>13} {'ratio':>6} | {'end to end: own':>15} "
              f"{'shared':>13} {'ratio':>6}")
        print("\n".join(compared))
    rate = encode_rate(dev, model.config.hidden_size)
    print(f"encode + top-k, one 32K-feature layer, 8,192 rows: {rate:,.0f} rows/s")
    if args.json:  # before the profile, so a profile that fails keeps the numbers
        with open(args.json + ".part", "w") as fh:  # pathreplay.io needs pandas, the lent machine may not
            json.dump({"shape": args.shape, "device": args.device, "rows": rows,
                       "encode_rows_per_s": rate}, fh, indent=2)
        os.replace(args.json + ".part", args.json)
    if args.profile and dev.type == "cuda":
        profile_decode(model, args.batch[-1], args.prompt, args.new, feat, cap)


if __name__ == "__main__":
    main()
