"""The static-cache engine computes what the hook path computes."""

from __future__ import annotations

import pytest
import torch

from pathreplay.engine import Engine, supports
from pathreplay.generate import generate
from pathreplay.patch import Interventions, Patch
from pathreplay.sae import load_feature

PROMPTS = ["Choice: 1) Bet $10\n2) Stop\nChoice: ", "Round 1: Bet $10, Win", "2) Stop\nRound 2: Bet"]


def _both(model, tok, patches=(), n=8, prompts=PROMPTS, seeds=(3, 4, 5), chunk=0, capture=(0, 1, 2)):
    ivh = Interventions(model, patches, capture)
    hook = generate(model, tok, prompts, list(seeds), max_new_tokens=n, temperature=0.7, interventions=ivh)
    ive = Interventions(model, patches, capture)
    eng = Engine(model, batch=len(prompts), max_len=64)
    fast = generate(model, tok, prompts, list(seeds), max_new_tokens=n, temperature=0.7, interventions=ive,
                    engine=eng, prefill_chunk=chunk)
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
    for rec in ive.readback:  # the patch inside the engine's step reads back its target
        rows = rec["selected"] & ~torch.isnan(rec["target"])[:, None]
        want = rec["target"][:, None].expand_as(rec["after"])
        assert rows.any() and torch.allclose(rec["after"][rows], want[rows], rtol=1e-4)


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
