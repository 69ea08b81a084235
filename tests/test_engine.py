"""The static-cache engine computes what the hook path computes."""

from __future__ import annotations

import pytest
import torch

from pathreplay.runtime.engine import Engine, supports
from pathreplay.runtime.generate import generate
from pathreplay.runtime.patch import Interventions, Patch
from pathreplay.sae.exact import load_feature

PROMPTS = ["Choice: 1) Bet $10\n2) Stop\nChoice: ", "Round 1: Bet $10, Win", "2) Stop\nRound 2: Bet"]


def _run(model, tok, patches=(), n=8, prompts=PROMPTS, seeds=(3, 4, 5), capture=(0, 1, 2), eng=None,
         **kw):
    iv = Interventions(model, patches, capture)
    gen = generate(model, tok, prompts, list(seeds), max_new_tokens=n, temperature=0.7, interventions=iv,
                   engine=eng, **kw)
    return gen, iv


def _both(model, tok, patches=(), chunk=0, **kw):
    hook, ivh = _run(model, tok, patches, **kw)
    fast, ive = _run(model, tok, patches, eng=Engine(model, batch=3, max_len=64), prefill_chunk=chunk, **kw)
    return hook, ivh, fast, ive


@pytest.mark.parametrize("chunk", [0, 4])
def test_engine_equals_hook_path_with_patch_and_capture(tiny_lm, tiny_saes, chunk):
    model, tok = tiny_lm
    assert supports(model)
    feat = load_feature(tiny_saes[1], "llamascope", 1, 3)
    patch = [Patch(1, feat, torch.tensor([2.0, float("nan"), 0.5]), "clamp", "exp2")]
    hook, ivh, fast, ive = _both(model, tok, patch, chunk=chunk)
    assert hook.texts == fast.texts and torch.equal(hook.tokens, fast.tokens)
    for b in (0, 1, 2):
        assert torch.allclose(ivh.states(b), ive.states(b), atol=1e-5)
    assert torch.allclose(ivh.step_stats(), ive.step_stats(), atol=1e-5, equal_nan=True)
    after = ive.step_stats()[1, :, 1:]  # the patch inside the engine's step reads back its target
    assert torch.allclose(after[0], torch.full_like(after[0], 2.0), rtol=1e-4)
    assert torch.allclose(after[2], torch.full_like(after[2], 0.5), rtol=1e-4)


def test_engine_batched_row_equals_row_alone(tiny_lm):
    model, tok = tiny_lm
    _, _, both, ivb = _both(model, tok, n=6)
    for r in range(3):
        eng = Engine(model, batch=1, max_len=64)
        iv = Interventions(model, (), (2,))
        alone = generate(model, tok, [PROMPTS[r]], [(3, 4, 5)[r]], max_new_tokens=6, temperature=0.7,
                         interventions=iv, engine=eng)
        L = int(alone.lengths[0])
        assert both.texts[r] == alone.texts[0]
        assert torch.allclose(ivb.states(2)[r, :L], iv.states(2)[0, :L], atol=1e-5)


def test_engine_stops_rows_at_their_stop_tokens_like_the_hook_path(tiny_lm):
    """Rows finish at different steps; the engine looks at `done` only every few steps, and
    its extra steps must not show in the tokens, lengths or captured states."""
    model, tok = tiny_lm
    hook, ivh = _run(model, tok, n=20)
    stop = torch.tensor(sorted({int(hook.tokens[0, 2]), int(hook.tokens[1, 9])}))
    hook, ivh, fast, ive = _both(model, tok, n=20, stop_ids=stop)
    assert hook.lengths.tolist() == fast.lengths.tolist()
    assert min(hook.lengths) < max(hook.lengths) <= 20
    assert torch.equal(hook.tokens, fast.tokens)
    assert ive.steps == ivh.steps == int(hook.lengths.max()) - 1
    assert torch.allclose(ivh.states(1), ive.states(1), atol=1e-5)


def test_engine_reused_across_batches_equals_a_fresh_engine(tiny_lm, tiny_saes):
    """The store hands the next batch the same tensors (what lets CUDA graphs replay): nothing
    of the last batch may leak into the next, whatever its size."""
    model, tok = tiny_lm
    feat = load_feature(tiny_saes[1], "llamascope", 1, 3)
    eng = Engine(model, batch=3, max_len=64)
    _run(model, tok, [Patch(1, feat, torch.tensor([2.0, 1.0, 0.5]))], n=10, eng=eng)
    kept = dict(eng.store.tensors)
    for prompts, seeds in ((PROMPTS[1:], (8, 9)), (PROMPTS[::-1], (6, 7, 8))):
        vals = torch.tensor([1.5, float("nan"), 3.0][: len(prompts)])
        again, iva = _run(model, tok, [Patch(1, feat, vals)], n=6, prompts=prompts, seeds=seeds, eng=eng)
        fresh, ivf = _run(model, tok, [Patch(1, feat, vals)], n=6, prompts=prompts, seeds=seeds,
                          eng=Engine(model, batch=3, max_len=64))
        assert torch.equal(again.tokens, fresh.tokens) and again.texts == fresh.texts
        for b in (0, 1, 2):
            assert torch.allclose(iva.states(b), ivf.states(b), atol=1e-6)
        assert torch.allclose(iva.step_stats(), ivf.step_stats(), atol=1e-6, equal_nan=True)
    assert eng.store.tensors["iv.dir.0"] is kept["iv.dir.0"]  # same shape: same tensor


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_engine_equals_eager_and_hooks(tiny_lm, tiny_saes, dtype):
    import copy

    model, tok = tiny_lm
    gpu = copy.deepcopy(model).to("cuda", dtype)
    feat = load_feature(tiny_saes[1], "llamascope", 1, 3)
    patch = [Patch(1, feat, torch.tensor([2.0, float("nan"), 0.5]), "clamp", "exp2")]
    hook, ivh = _run(gpu, tok, patch, n=12)
    eager, ive = _run(gpu, tok, patch, n=12, eng=Engine(gpu, 3, 64, graphs=False))
    eng = Engine(gpu, 3, 64, graphs=True)
    for n in (12, 1, 12, 12):  # a new shape drops the graphs; the same shape replays them
        graph, ivg = _run(gpu, tok, patch, n=n, eng=eng)
        if n == 1:
            continue
        assert eng._graphs
        assert torch.equal(graph.tokens, eager.tokens)
        for b in (0, 1, 2):
            assert torch.allclose(ivg.states(b).float(), ive.states(b).float(), atol=1e-5, rtol=1e-2)
        assert torch.allclose(ivg.step_stats(), ive.step_stats(), atol=1e-5, rtol=1e-2, equal_nan=True)
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    agree = (hook.tokens == graph.tokens).float().mean()
    assert agree > (0.999 if dtype == torch.float32 else 0.5)
    if dtype == torch.float32:
        for b in (0, 1, 2):
            assert torch.allclose(ivh.states(b), ivg.states(b), atol=tol)
    else:  # bf16: the first step's states agree within bf16 rounding
        for b in (0, 1, 2):
            rel = (ivh.states(b)[:, :2].float() - ivg.states(b)[:, :2].float()).norm() / ivh.states(b)[:, :2].float().norm()
            assert rel < tol


def test_fused_projections_leave_the_model_computing_the_same(tiny_lm):
    import copy

    model, tok = copy.deepcopy(tiny_lm[0]), tiny_lm[1]
    for p in model.parameters():  # separate weights, whatever earlier engines did to tiny_lm's
        p.data = p.data.clone()
    before, _ = _run(model, tok, n=6)
    Engine(model, batch=3, max_len=64)
    attn = model.model.layers[1].self_attn
    joined = attn.q_proj.weight.untyped_storage().data_ptr()
    assert attn.v_proj.weight.untyped_storage().data_ptr() == joined  # views of one weight
    Engine(model, batch=3, max_len=64)
    assert attn.q_proj.weight.untyped_storage().data_ptr() == joined  # a second engine reuses it
    after, _ = _run(model, tok, n=6)
    assert torch.equal(before.tokens, after.tokens)


def test_engine_for_reuses_the_last_engine_while_it_has_room(tiny_lm):
    from pathreplay.runtime.engine import engine_for

    model, _ = tiny_lm
    a = engine_for(model, 4, 40)
    assert engine_for(model, 3, 64) is a and a.max_len == 64  # rounded up to a bucket
    b = engine_for(model, 8, 40)
    assert b is not a and engine_for(model, 2, 10) is b


def test_cache_argument_name_follows_the_model_signature():
    from pathreplay.runtime.generate import cache_arg

    class New:
        def forward(self, input_ids=None, cache=None): ...

    class Old:
        def forward(self, input_ids=None, past_key_values=None, **kw): ...

    assert cache_arg(New()) == "cache" and cache_arg(Old()) == "past_key_values"


def test_the_cuda_default_follows_the_gpu_record(monkeypatch):
    # benchmarks/README.md says what a GPU has run; on CUDA the engine turns on nothing more
    import re

    from conftest import ROOT
    from pathreplay.runtime.engine import GPU_VERIFIED, OPT_IN, gpu_default

    line = re.search(r"^gpu-verified: (.*?) \(", (ROOT / "benchmarks" / "README.md").read_text(), re.M).group(1)
    record = {k: v == "true" for k, v in (kv.split("=") for kv in line.split(", "))}
    assert record == GPU_VERIFIED
    monkeypatch.delenv(OPT_IN, raising=False)
    for path, verified in GPU_VERIFIED.items():
        assert gpu_default(path, "cpu") and gpu_default(path, "cuda") == verified
    monkeypatch.setenv(OPT_IN, "1")
    assert all(gpu_default(path, "cuda") for path in GPU_VERIFIED)
