"""Shared-prompt attention: rows of one prompt read its KV from one shared cache and compute what
they compute with the prompt in every row's own cache."""

from __future__ import annotations

import pytest
import torch

from pathreplay.runtime.engine import Engine
from pathreplay.runtime.generate import generate
from pathreplay.runtime.patch import Interventions, Patch
from pathreplay.runtime.prefix import groups_of
from pathreplay.sae.exact import load_feature

A, B, C = "Choice: 1) Bet $10\n2) Stop\nChoice: ", "Round 1: Bet $10, Win", "2) Stop\nRound 2: Bet"


def _run(model, tok, prompts, patches=(), share=True, chunk=0, capture_prompt="last"):
    eng = Engine(model, batch=len(prompts), max_len=64, share=share)
    iv = Interventions(model, patches, (0, 1, 2), capture_prompt=capture_prompt)
    gen = generate(model, tok, prompts, list(range(3, 3 + len(prompts))), max_new_tokens=8, temperature=0.7,
                   interventions=iv, engine=eng, prefill_chunk=chunk)
    return gen, iv, eng


def _patch(tiny_saes, n, positions="exp2"):
    feat = load_feature(tiny_saes[1], "llamascope", 1, 3)
    values = torch.tensor([2.0, float("nan"), 0.5, 1.0, 3.0][:n])
    return [Patch(1, feat, values, "clamp", positions)]


def _same(shared, unshared):
    (g1, iv1, _), (g2, iv2, _) = shared, unshared
    assert g1.texts == g2.texts and torch.equal(g1.tokens, g2.tokens)
    for b in (0, 1, 2):
        assert torch.allclose(iv1.states(b), iv2.states(b), atol=1e-5)
    assert torch.allclose(iv1.step_stats(), iv2.step_stats(), atol=1e-5, equal_nan=True)
    assert torch.allclose(g1.top_logprobs, g2.top_logprobs, atol=1e-5)


@pytest.mark.parametrize("chunk", [0, 4])
@pytest.mark.parametrize("prompts", [[A] * 5, [A, A, B, B, C], [C, A, A, A, B]], ids=["one", "mixed", "padded"])
def test_shared_prompt_equals_every_row_with_its_own_prompt(tiny_lm, tiny_saes, prompts, chunk):
    model, tok = tiny_lm
    patch = _patch(tiny_saes, len(prompts))
    shared = _run(model, tok, prompts, patch, share=True, chunk=chunk)
    assert shared[2].prefix is not None and len(shared[2].prefix.groups) == len(dict.fromkeys(prompts))
    unshared = _run(model, tok, prompts, patch, share=False, chunk=chunk)
    assert unshared[2].prefix is None
    _same(shared, unshared)
    after = shared[1].step_stats()[1]  # the per-row patch at the last prompt position reads back its target
    assert torch.allclose(after[0], torch.full_like(after[0], 2.0), rtol=1e-4)
    assert torch.allclose(after[2, :1], torch.tensor([0.5]), rtol=1e-4)


def test_rows_of_one_prompt_apart_fall_back_to_their_own_caches(tiny_lm, tiny_saes):
    model, tok = tiny_lm
    prompts = [A, B, A]
    shared = _run(model, tok, prompts, _patch(tiny_saes, 3))
    assert shared[2].prefix is None
    _same(shared, _run(model, tok, prompts, _patch(tiny_saes, 3), share=False))


@pytest.mark.parametrize("what", ["patch all positions", "capture all positions"])
def test_interventions_on_prompt_positions_are_not_shared(tiny_lm, tiny_saes, what):
    model, tok = tiny_lm
    prompts = [A, A, A]
    if what == "patch all positions":
        shared = _run(model, tok, prompts, _patch(tiny_saes, 3, "all"))
    else:
        shared = _run(model, tok, prompts, capture_prompt="all")
    assert shared[2].prefix is None


def test_an_engine_switches_between_shared_and_own_prompts(tiny_lm, tiny_saes):
    """One engine (its store and cache reused) runs shared, unshared and shared batches in turn
    and gets what fresh engines get."""
    model, tok = tiny_lm
    eng = Engine(model, batch=3, max_len=64, share=True)
    runs = []
    for prompts in ([A, A, B], [A, B, A], [C, C, C]):
        iv = Interventions(model, _patch(tiny_saes, 3), (2,))
        gen = generate(model, tok, prompts, [3, 4, 5], max_new_tokens=8, temperature=0.7, interventions=iv,
                       engine=eng)
        fresh = _run(model, tok, prompts, _patch(tiny_saes, 3))
        assert gen.texts == fresh[0].texts
        assert torch.allclose(iv.states(2), fresh[1].states(2), atol=1e-5)
        runs.append(eng.prefix is not None)
    assert runs == [True, False, True]


def test_groups_are_runs_of_one_prompt():
    ids = torch.tensor([[0, 5, 6], [0, 5, 6], [7, 8, 9], [7, 8, 9], [0, 0, 4]])
    mask = (ids != 0).long()
    assert groups_of(ids, mask) == ((0, 2), (2, 4), (4, 5))
    assert groups_of(ids[[0, 2, 1]], mask[[0, 2, 1]]) is None  # prompt 0's rows are not consecutive


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_shared_prompt_in_cuda_graphs_equals_own_prompts_eager(tiny_lm, tiny_saes):
    """The shared path inside graphed decode steps, replayed for a second batch of the same
    layout and recaptured for another, against every row's own prompt run eagerly (float32)."""
    import copy

    model, tok = tiny_lm
    gpu = copy.deepcopy(model).to("cuda")
    eng = Engine(gpu, batch=5, max_len=64, graphs=True, share=True)
    for prompts in ([A] * 5, [A] * 5, [A, A, B, B, C]):
        iv = Interventions(gpu, _patch(tiny_saes, 5), (0, 1, 2))
        gen = generate(gpu, tok, prompts, list(range(3, 8)), max_new_tokens=12, temperature=0.7,
                       interventions=iv, engine=eng)
        assert eng.prefix is not None and eng._graphs
        ref = _run(gpu, tok, prompts, _patch(tiny_saes, 5), share=False)
        assert torch.equal(gen.tokens, ref[0].tokens)
        for b in (0, 1, 2):
            assert torch.allclose(iv.states(b), ref[1].states(b), atol=1e-4)
