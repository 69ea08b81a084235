"""Patch and capture on a tiny random Llama: exactness, order independence, padding."""

from __future__ import annotations

import pytest
import torch

from pathreplay.runtime.generate import generate, sample, uniforms
from pathreplay.runtime.patch import Interventions, Patch, last_position_values
from pathreplay.sae.exact import load_feature, load_sae

PROMPTS = ["Choice: 1) Bet $10\n2) Stop\nChoice: ", "Round 1: Bet $10, Win"]


def _feature(tiny_saes, block=1, index=3):
    return load_feature(tiny_saes[block], "llamascope", block, index)


def _run(model, tok, patches=(), capture=(), prompts=PROMPTS, seeds=(11, 12), n=6, temp=0.7):
    iv = Interventions(model, patches, capture)
    gen = generate(model, tok, prompts, list(seeds), max_new_tokens=n, temperature=temp,
                   interventions=iv)
    return gen, iv


@pytest.mark.parametrize("positions", ["all", "exp2", "generated"])
def test_clamp_reads_back_target_at_every_patched_position(tiny_lm, tiny_saes, positions):
    model, tok = tiny_lm
    feat = _feature(tiny_saes)
    target = torch.tensor([2.5, 0.75])
    gen, iv = _run(model, tok, [Patch(1, feat, target, "clamp", positions)], capture=[1])
    for rec in iv.readback:  # prompt passes
        sel = rec["selected"]
        after = rec["stats"][1]
        got = after[sel]
        want = target[:, None].expand_as(after)[sel]
        assert torch.allclose(got, want, rtol=1e-4, atol=0)
    assert {rec["phase"] for rec in iv.readback} == (set() if positions == "generated" else {"prefill"})
    before, after = iv.step_stats()[:2, :, 1:]  # decode steps: every generated token, every mode
    assert after.shape == (2, iv.steps) and iv.steps == int(gen.lengths.max()) - 1 > 0
    assert torch.allclose(after, target[:, None].expand_as(after), rtol=1e-4, atol=0)
    assert not torch.allclose(before, after)
    # the capture hook, which runs after the patch, sees the same values
    states = iv.states(1)
    vals = feat.value(states)
    assert states.shape[1] == 1 + iv.steps
    assert torch.allclose(vals[:, 1:], target[:, None].expand_as(vals[:, 1:]), rtol=1e-4)
    if positions != "generated":
        assert torch.allclose(vals[:, 0], target, rtol=1e-4)


def test_clamp_to_current_value_changes_nothing(tiny_lm, tiny_saes):
    model, tok = tiny_lm
    feat = _feature(tiny_saes)
    base, iv0 = _run(model, tok, capture=[1, 2], n=1)
    current = feat.value(iv0.states(1)[:, 0])
    same, iv1 = _run(model, tok, [Patch(1, feat, current, "clamp", "exp2")], capture=[1, 2], n=1)
    assert torch.allclose(iv0.states(2), iv1.states(2), atol=1e-6)
    assert torch.equal(base.tokens, same.tokens)


def test_clamp_zero_on_inactive_row_is_identity(tiny_lm, tiny_saes):
    model, tok = tiny_lm
    feat = _feature(tiny_saes)
    _, iv0 = _run(model, tok, capture=[1], n=1)
    active = feat.value(iv0.states(1)[:, 0]) > 0
    _, iv1 = _run(model, tok, [Patch(1, feat, torch.zeros(2), "clamp", "exp2")], capture=[1], n=1)
    assert torch.all(feat.value(iv1.states(1)[:, 0]) == 0)
    unchanged = torch.isclose(iv0.states(1)[:, 0], iv1.states(1)[:, 0]).all(-1)
    assert torch.equal(unchanged, ~active)


def test_nan_rows_are_not_patched(tiny_lm, tiny_saes):
    model, tok = tiny_lm
    feat = _feature(tiny_saes)
    base, iv0 = _run(model, tok, capture=[2])
    gen, iv1 = _run(model, tok, [Patch(1, feat, torch.tensor([float("nan"), 4.0]), "clamp", "all")],
                    capture=[2])
    assert torch.allclose(iv0.states(2)[0], iv1.states(2)[0], atol=1e-6)
    assert not torch.allclose(iv0.states(2)[1], iv1.states(2)[1], atol=1e-3)


def test_capture_installed_first_still_sees_patch(tiny_lm, tiny_saes):
    model, tok = tiny_lm
    feat = _feature(tiny_saes)
    cap = Interventions(model, capture=[1])
    pat = Interventions(model, [Patch(1, feat, torch.tensor([3.0, 3.0]), "clamp", "all")])
    with cap.active(), pat.active():
        enc = tok(PROMPTS, return_tensors="pt", padding=True)
        model(**enc)
    assert torch.allclose(feat.value(cap.states(1)[:, -1]), torch.tensor([3.0, 3.0]), rtol=1e-4)


def test_add_shifts_preactivation_by_amount(tiny_lm, tiny_saes):
    model, tok = tiny_lm
    feat = _feature(tiny_saes)
    _, iv0 = _run(model, tok, capture=[1], n=1)
    _, iv1 = _run(model, tok, [Patch(1, feat, torch.tensor([1.5, -0.5]), "add", "exp2")], capture=[1], n=1)
    shift = feat.pre(iv1.states(1)[:, 0]) - feat.pre(iv0.states(1)[:, 0])
    assert shift.tolist() == pytest.approx([1.5, -0.5], rel=1e-4)


def test_reconstruct_is_exp2s_decode_of_edited_code(tiny_lm, tiny_saes):
    model, tok = tiny_lm
    sae = load_sae(tiny_saes[1], "llamascope", 1)
    _, iv0 = _run(model, tok, capture=[1], n=1)
    f = sae.encode(iv0.states(1)[:, 0])
    f[:, 3] = 2.0
    want = sae.decode(f)  # the SAE error term of the original state is gone
    _, iv = _run(model, tok, [Patch(1, sae.feature(3), torch.tensor([2.0, 2.0]), "reconstruct", "exp2", sae)],
                 capture=[1], n=1)
    assert torch.allclose(iv.states(1)[:, 0], want, atol=1e-5)


def test_left_padded_batch_row_equals_prompt_alone(tiny_lm, tiny_saes):
    model, tok = tiny_lm
    feat = _feature(tiny_saes)
    patch = lambda v: [Patch(1, feat, torch.tensor(v), "clamp", "exp2")]  # noqa: E731
    both, ivb = _run(model, tok, patch([2.0, 1.0]), capture=[2], n=8)
    for r in range(2):
        alone, iva = _run(model, tok, patch([[2.0, 1.0][r]]), capture=[2], prompts=[PROMPTS[r]],
                          seeds=[(11, 12)[r]], n=8)
        L = int(alone.lengths[0])
        assert both.texts[r] == alone.texts[0]
        assert torch.equal(both.tokens[r, :L], alone.tokens[0, :L])
        assert torch.allclose(ivb.states(2)[r, :L], iva.states(2)[0, :L], atol=1e-5)


def test_coupled_sampling_same_seed_same_draws():
    logits = torch.log(torch.tensor([[0.2, 0.3, 0.5]]))
    u = uniforms(7, 4)
    assert torch.equal(u, uniforms(7, 4)) and not torch.equal(u, uniforms(8, 4))
    # inverse CDF by hand: cdf = [0.2, 0.5, 1.0]
    for uu, want in ((0.1, 0), (0.3, 1), (0.49, 1), (0.9, 2)):
        assert int(sample(logits, torch.tensor([uu], dtype=torch.float64), 1.0)) == want


def test_two_level_sampler_matches_one_cumulative_sum():
    g = torch.Generator().manual_seed(0)
    for V, block in ((3, 256), (300, 16), (1024, 256), (1000, 7)):
        logits = torch.randn(64, V, generator=g) * 3
        u = torch.rand(64, generator=g, dtype=torch.float64)
        cdf = torch.softmax(logits.double() / 0.7, -1).cumsum(-1)
        want = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None])[:, 0].clamp(max=V - 1)
        assert torch.equal(sample(logits, u, 0.7, block=block), want)


def test_last_position_values_do_not_depend_on_the_batch(tiny_lm, tiny_saes):
    # A left-padded batch reads each text's own last token, at the block asked for.
    model, tok = tiny_lm
    # features active on both prompts (0.08-0.3 here); the last block's hidden state is normed
    feats = {"a": (0, _feature(tiny_saes, 0, 7)), "b": (1, _feature(tiny_saes, 1, 20))}
    both = last_position_values(model, tok, PROMPTS, feats)
    for r, text in enumerate(PROMPTS):
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states  # [0] = embeddings
        for name, (b, f) in feats.items():
            alone = float(f.value(hidden[b + 1][0, -1]))
            assert alone > 0.05 and both[name][r] == pytest.approx(alone, abs=1e-5)
    assert len({len(tok(t)["input_ids"]) for t in PROMPTS}) == 2  # the batch really was padded


def test_decoder_mode_is_the_saes_own_edit_with_the_error_kept(tiny_lm, tiny_saes):
    model, tok = tiny_lm
    feat = _feature(tiny_saes)
    _, iv0 = _run(model, tok, capture=[1], n=1)
    h0 = iv0.states(1)[:, 0]
    target = torch.tensor([2.5, 0.0])
    _, iv = _run(model, tok, [Patch(1, feat, target, "decoder", "exp2")], capture=[1], n=1)
    want = h0 + (target - feat.value(h0))[:, None] * feat.u  # h + (v - f(h)) u
    assert torch.allclose(iv.states(1)[:, 0], want, atol=1e-5)
    stats = iv.step_stats()[:, :, 0]  # before, after, pre, ||dh||, ||h|| at the prompt's last position
    assert torch.allclose(stats[3], (want - h0).norm(dim=-1), atol=1e-5)
    assert torch.allclose(stats[4], h0.norm(dim=-1), atol=1e-5) and torch.allclose(stats[2], feat.pre(h0), atol=1e-5)


def test_sham_changes_nothing_to_the_bit(tiny_lm, tiny_saes):
    model, tok = tiny_lm
    feat = _feature(tiny_saes)
    base, iv0 = _run(model, tok, capture=[0, 1, 2])
    sham, iv1 = _run(model, tok, [Patch(1, feat, torch.zeros(2), "sham", "all")], capture=[0, 1, 2])
    assert torch.equal(base.tokens, sham.tokens)
    for b in (0, 1, 2):
        assert torch.equal(iv0.states(b), iv1.states(b))
    assert (iv1.step_stats()[3].nan_to_num() == 0).all()  # ||dh|| = 0 wherever it was applied


def test_random_mode_moves_by_its_per_step_amount(tiny_lm, tiny_saes):
    model, tok = tiny_lm
    feat = _feature(tiny_saes)
    r = torch.zeros(model.config.hidden_size)
    r[0] = 1.0
    steps = torch.tensor([[0.5, 1.0, 2.0, 3.0, 4.0, 5.0], [0.25, float("nan"), 1.0, 1.0, 1.0, 1.0]])
    gen, iv = _run(model, tok, [Patch(1, feat, steps, "random", "exp2", direction=r)], capture=[1])
    dh = iv.step_stats()[3]  # [rows, 1 + steps]: column s is step s's amount
    n = dh.shape[1]
    assert torch.allclose(dh[0], steps[0, :n], atol=1e-5)
    assert dh[1, 0] == pytest.approx(0.25, abs=1e-5) and dh[1, 1] == 0  # NaN: that step left alone
