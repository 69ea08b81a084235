"""Attribution against intervention: the tangent pass against a central difference on the demo
model (float64), the forced sequences against the replay's own states, the sham's prediction
(exactly 0), and on a planted chain in its linear regime the predicted computed parts against
what the replay measured, through the library end to end; the agreement metrics by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import DEMO, PLANTED, Planted, make_planted, replay_prompts
from pathreplay.attribution.agreement import agreement, at_k, average_precision, group_metrics, rho, share_table
from pathreplay.attribution.predict import AttributionSettings, ChainHold, predict_source, source_of
from pathreplay.attribution.reliability import halves
from pathreplay.attribution.seeds import Seed, patch_steps
from pathreplay.attribution.sequences import forced_batch, prompt_ids
from pathreplay.attribution.tangent import push, variant_forward
from pathreplay.attribution.triage import triage
from pathreplay.effects.layers import feature_effects
from pathreplay.features import feature_name
from pathreplay.pathways.mediation import Slice, mediate
from pathreplay.replay.coupled import random_direction, run_baseline
from pathreplay.replay.plan import CaptureSpec, Condition, patched_jobs
from pathreplay.replay.trials import ReplaySettings
from test_pathways import replay_and_encode

PROMPTS = replay_prompts()
LAYERS = (0, 1, 2, 3)
SEED = 11
NAMES = {k: feature_name(*v) for k, v in PLANTED.items()}
UP = [Condition("up", "risky_value", 1.0)]


def linear_planted(root, offset: float = 30.0, k_ab: float = 0.2, k_bc: float = 0.3, k_ac: float = 0.0) -> Planted:
    """conftest's planted chain moved off the origin of its neurons: every token embedding gets
    `offset` e_K (a direction orthogonal to the planted ones) and the planted neurons' gates read
    e_K, so each neuron is silu(g) x (its source's direction) with g ~ sqrt(d): linear in A, B,
    where conftest's a silu(a) has slope 0 at a = 0. A's step of 3 is then a tenth of ||h||."""
    pl = make_planted(root, k_ab=k_ab, k_bc=k_bc, k_ac=k_ac)
    q = torch.stack(list(pl.dirs.values()), 1)
    k = torch.randn(32, generator=torch.Generator().manual_seed(3))
    k -= q @ (q.T @ k)
    k /= k.norm()
    with torch.no_grad():
        pl.model.model.embed_tokens.weight += offset * k
        for block, neuron in ((1, 0), (1, 1), (2, 0), (2, 1)):
            pl.model.model.layers[block].mlp.gate_proj.weight[neuron] = k
    return pl


def _replay(pl: Planted, tmp, s: ReplaySettings):
    """A's replay on the three prompts, encoded with its read-through, and its effects."""
    trials, baseline, codes, through, selected = replay_and_encode(pl, tmp, ["A"], s, placebo=False)
    eff = feature_effects(trials, baseline, codes, 0.05, 2, passthrough=through).effects
    return baseline, trials, codes, through, eff, selected


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """The linear planted chain (with a direct A -> C part), A replayed and predicted."""
    tmp = tmp_path_factory.mktemp("attribution")
    pl = linear_planted(tmp / "saes", k_ac=0.1)
    s = ReplaySettings(max_new_tokens=5, temperature=0.7, batch_size=8, capture_layers=LAYERS)
    baseline, trials, codes, through, eff, selected = _replay(pl, tmp, s)
    src = source_of(NAMES["A"], 0, pl.saes.feature(*PLANTED["A"]), selected.iloc[0], UP, SEED)
    saes = {b: pl.saes.load(b) for b in LAYERS if b > 0}
    hold_b = ChainHold("up", NAMES["B"], 1, pl.saes.feature(*PLANTED["B"]),
                       ((NAMES["C"], 2, pl.saes.feature(*PLANTED["C"])),))
    settings = AttributionSettings(max_new_tokens=5, batch_size=16)
    pred = predict_source(pl.model, pl.tok, src, baseline, {q.id: q.text for q in PROMPTS}, saes, settings, [hold_b])
    return {"planted": pl, "s": s, "baseline": baseline, "trials": trials, "codes": codes, "through": through,
            "effects": eff, "pred": pred, "selected": selected}


def _at(table, name, **where):
    layer, fid = PLANTED[name]
    t = table[(table["target_layer"] == layer) & (table["target_feature"] == fid)]
    for k, v in where.items():
        t = t[t[k] == v]
    assert len(t) == 1, (name, where, len(t))
    return t.iloc[0]


def test_the_planted_chain_is_predicted_within_ten_percent(chain):
    eff, table = chain["effects"], chain["pred"].table
    for target in ("B", "C"):
        meas = _at(eff, target, control="real", scope="forced")
        assert meas["p_computed"] < 1e-3 and abs(meas["delta_computed"]) > 0.1  # the replay's edge
        for variant in ("jacobian", "frozen"):
            got = _at(table, target, condition="up", variant=variant)
            assert got["computed"] == pytest.approx(meas["delta_computed"], rel=0.10)
            assert got["computed_gated"] == pytest.approx(meas["delta_computed"], rel=0.10)
            assert got["passthrough"] == pytest.approx(0.0, abs=1e-6)  # A's direction: no B or C reader
        assert _at(table, target, condition="up", variant="virtual")["computed"] == 0.0
    for reader in ("P2", "P3"):  # they read A's own direction, which no block writes
        meas = _at(eff, reader, control="real", scope="forced")
        got = _at(table, reader, condition="up", variant="jacobian")
        assert got["passthrough"] == pytest.approx(meas["delta_passthrough"], rel=1e-4) and got["passthrough"] > 2.9
        assert abs(got["computed"]) < 1e-4 and abs(got["computed_gated"]) < 1e-4
    assert not (table["condition"] == "sham").any()  # only non-zero predictions are written: none
    assert set(table["variant"]) == {"virtual", "frozen", "jacobian"}
    assert chain["pred"].rows == 24 * 3 and chain["pred"].passes > 0


def test_the_sham_and_a_zero_step_predict_exactly_zero(chain):
    pl = chain["planted"]
    feat = pl.saes.feature(*PLANTED["A"])
    trials = chain["baseline"]
    t = trials[(trials["condition"] == "baseline") & (trials["n_positions"] > 0)].head(4)
    ids = prompt_ids(pl.tok, [q.text for q in PROMPTS])
    texts = {q.id: q.text for q in PROMPTS}
    keep = CaptureSpec.parse("all").positions(5)
    batch = forced_batch([ids[texts[p]] for p in t["prompt_id"]], list(t["tokens"]), "exp2", keep,
                         t["n_positions"].tolist(), pl.tok.pad_token_id)
    seeds = [Seed("sham", "sham", math.nan)] * len(t)
    for variant, method in (("jacobian", "jvp"), ("frozen", "jvp"), ("jacobian", "difference")):
        out = push(pl.model, batch, 0, lambda h: patch_steps(feat, 0, "decoder", h, seeds, batch.patched), [1, 2, 3],
                   variant, method)
        assert torch.equal(out.seed, torch.zeros_like(out.seed))
        for b in (1, 2, 3):
            assert torch.equal(out.tangents[b], torch.zeros_like(out.tangents[b])), (variant, method, b)


def test_a_random_seed_moves_as_far_as_its_real_partner_along_its_own_direction(chain):
    pl = chain["planted"]
    feat = pl.saes.feature(*PLANTED["A"])
    r = random_direction(feat, SEED, NAMES["A"], "up")
    h = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(0))
    sel = torch.zeros(2, 6, dtype=torch.bool)
    sel[:, 3:] = True
    dh = patch_steps(feat, 0, "decoder", h.repeat(2, 1, 1), [Seed("up", "real", 8.0)] * 2
                     + [Seed("random:up", "random", 8.0, r)] * 2, sel.repeat(2, 1))
    real, rand = dh[:2], dh[2:]
    assert torch.equal(real[~sel], torch.zeros_like(real[~sel])) and torch.equal(rand[~sel], torch.zeros_like(rand[~sel]))
    torch.testing.assert_close(rand.norm(dim=-1), real.norm(dim=-1), rtol=1e-5, atol=1e-6)
    assert float((rand[sel] @ feat.w).abs().max()) < 1e-4 and float((rand[sel] @ feat.u).abs().max()) < 1e-4
    want = (8.0 - feat.value(h[sel.nonzero(as_tuple=True)]))[:, None] * feat.u  # decoder: (v - f(h)) u
    torch.testing.assert_close(real[sel], want, rtol=1e-5, atol=1e-5)


def test_the_forced_sequences_are_the_replays_states(chain):
    # one forward pass over prompt + fed tokens computes what the replay's forced (here: baseline)
    # run computed step by step, at the last prompt position and at every kept generated position
    pl, trials = chain["planted"], chain["baseline"]
    t = trials[trials["condition"] == "baseline"].sort_values("row").head(8)
    s = ReplaySettings(max_new_tokens=5, temperature=0.7, batch_size=8, capture_layers=LAYERS, engine="hooks")
    res = run_baseline(pl.model, pl.tok, PROMPTS[0], 8, SEED, s)
    ids = prompt_ids(pl.tok, [PROMPTS[0].text])[PROMPTS[0].text]
    tt = res.trials
    keep = CaptureSpec.parse("all").positions(5)
    batch = forced_batch([ids] * len(tt), list(tt["tokens"]), "exp2", keep, tt["n_positions"].tolist(),
                         pl.tok.pad_token_id)
    out = push(pl.model, batch, 0, lambda h: torch.zeros_like(h), [1, 2, 3])
    for b in (1, 2, 3):
        got = out.states[b]
        want = res.states[b].float()  # [rows, 1 + kept, d] in fp16
        for r in range(len(tt)):
            n = int(tt["n_positions"].iloc[r])
            at = torch.cat([(batch.patched[r] & ~batch.kept[r]).nonzero()[:1, 0], batch.kept[r].nonzero()[:, 0]])
            torch.testing.assert_close(got[r, at], want[r, : 1 + n], rtol=2e-3, atol=2e-3)
    assert len(t)


def test_the_mediated_share_is_predicted(chain):
    # A -> C runs through B (k_bc) and directly (k_ac): the share through B as the replay's
    # mediation measures it, against the prediction with B held in the tangent
    pl, s = chain["planted"], chain["s"]
    slices = {NAMES[n]: Slice(NAMES[n], PLANTED[n][0], pl.saes.feature(*PLANTED[n])) for n in ("A", "B", "C")}
    todo = pd.DataFrame([{"path": f"{NAMES['A']} -> {NAMES['B']} -> {NAMES['C']}", "scope": "forced",
                          "condition": "up", "hops": 2, "a": NAMES["A"], "mids": NAMES["B"], "c": NAMES["C"],
                          "delta_first": 0.5, "q_first": 0.01, "delta_last": 0.2, "q_last": 0.01}])
    jobs = {(NAMES["A"], "up"): patched_jobs(PROMPTS, chain["selected"].loc[NAMES["A"]], UP, 8, SEED)}
    base = chain["baseline"]
    med = mediate(pl.model, pl.tok, todo, {}, slices, jobs, base[base["condition"] == "baseline"], s, 0.05, 0.05)
    measured = med.paths.iloc[0]
    assert 0.2 < measured["share"] < 0.9 and bool(measured["mediated"])
    shares = chain["pred"].shares
    for variant in ("jacobian", "frozen"):
        got = shares[(shares["variant"] == variant) & (shares["readout"] == "recomputed")].iloc[0]
        assert got["share"] == pytest.approx(measured["share"], abs=0.05)
        assert got["total"] == pytest.approx(measured["total"], rel=0.10)
    joined = share_table(shares, med.paths)
    assert len(joined) == 4 and set(joined["readout"]) == {"recomputed", "gated"}


def test_the_noise_ceiling_halves_average_to_the_effects(chain):
    eff = chain["effects"]
    h = halves(chain["trials"], chain["baseline"], chain["codes"], chain["through"])
    assert set(h["condition"]) == {"up"} and set(h["target_layer"]) == {1, 2, 3}
    full = eff[(eff["control"] == "real") & (eff["scope"] == "forced")].merge(
        h, on=["source_layer", "source_feature", "condition", "target_layer", "target_feature"])
    # every prompt has 4 even and 4 odd trials: the mean of the halves is the whole mean
    np.testing.assert_allclose((full["computed_a"] + full["computed_b"]) / 2, full["delta_computed"], atol=1e-6)
    np.testing.assert_allclose((full["total_a"] + full["total_b"]) / 2, full["delta"], atol=1e-6)
    b = full[(full["target_layer"] == 1) & (full["target_feature"] == PLANTED["B"][1])].iloc[0]
    assert b["computed_a"] == pytest.approx(b["computed_b"], rel=0.2)


def test_jvp_equals_a_central_difference_on_the_demo_model():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pathreplay.sae.exact import SAESource

    model = AutoModelForCausalLM.from_pretrained(DEMO / "model", dtype=torch.float64).eval()
    tok = AutoTokenizer.from_pretrained(DEMO / "model")
    saes = SAESource(str(DEMO / "saes" / "L{layer}R"), "llamascope")
    feat = saes.feature(1, 653)
    texts = [PROMPTS[1].text, PROMPTS[0].text]
    ids = prompt_ids(tok, texts)
    cont = [tok("1) Bet $10\n")["input_ids"][1:], tok("2) Stop playing\n")["input_ids"][1:]]
    keep = CaptureSpec.parse("all").positions(12)
    batch = forced_batch([ids[t] for t in texts], cont, "exp2", keep, [min(len(c) - 1, 11) for c in cont],
                         tok.pad_token_id)
    seeds = [Seed("c", "real", 20 * 0.53), Seed("c", "real", 0.53)]

    def seed(h):
        return patch_steps(feat, 1, "decoder", h, seeds, batch.patched)

    jvp = push(model, batch, 1, seed, [2, 3], "jacobian", "jvp")
    # transformers' RMSNorm computes in float32 even in a float64 model: a difference's rounding is
    # ~6e-8 / eps of the tangent, its truncation ~eps^2, so eps = 3e-3 (1e-5 measured here)
    fd = push(model, batch, 1, seed, [2, 3], "jacobian", "difference", eps=3e-3)
    frozen = push(model, batch, 1, seed, [2, 3], "frozen", "jvp")
    assert model.config._attn_implementation == "sdpa"  # restored after each pass
    real = batch.mask.bool()  # what a left pad's query computes is read by nothing
    for b in (2, 3):
        j, f = jvp.tangents[b][real], fd.tangents[b][real]
        err = (j - f).norm() / f.norm()
        assert err < 1e-3, (b, float(err))
        assert float((j - jvp.seed[real]).norm()) > 1e-3 * float(jvp.seed.norm())  # the blocks computed something
        torch.testing.assert_close(frozen.states[b][real], jvp.states[b][real], rtol=1e-10, atol=1e-10)  # one primal
        assert float((frozen.tangents[b][real] - j).norm()) > 1e-6 * float(j.norm())
    ref = model.model(input_ids=batch.ids, attention_mask=batch.mask, position_ids=batch.pos,
                      output_hidden_states=True).hidden_states
    # hidden_states[b + 1] is block b's output (the last block's is after the final norm)
    torch.testing.assert_close(jvp.states[2][real], ref[3][real], rtol=1e-9, atol=1e-9)


def test_variant_forward_restores_the_model(tiny_lm):
    model, _ = tiny_lm
    norm = model.model.layers[0].input_layernorm
    before = model.config._attn_implementation
    with variant_forward(model, "frozen"):
        assert "forward" in vars(norm) and model.config._attn_implementation != before
    assert "forward" not in vars(norm) and model.config._attn_implementation == before


def test_ranking_metrics_by_hand():
    score = np.array([0.9, 0.8, 0.8, 0.1, 0.0])
    label = np.array([True, False, True, False, True])
    # tie group {0.8, 0.8} counts as one step: precision 1 at 0.9 (recall 1/3), 2/3 at the 0.8s
    # (recall 2/3), 3/5 at the end (recall 1)
    assert average_precision(score, label) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert at_k(score, label, 2) == (0.5, pytest.approx(1 / 3))
    assert all(np.isnan(at_k(np.zeros(5), label, 2)))
    assert rho(np.array([1.0, 2, 3, 4]), np.array([10.0, 20, 30, 40])) == pytest.approx(1.0)
    assert np.isnan(rho(np.zeros(4), np.arange(4.0)))
    g = pd.DataFrame({"pred": [0.5, -0.2, 0.01, 0.0], "meas": [0.6, 0.1, 0.0, 0.3], "edge": [True, True, False, True],
                      "inactive": [False, False, False, True]})
    m = group_metrics(g, 0.05)
    assert m["n_edges"] == 3 and m["sign_agreement"] == pytest.approx(1 / 3)
    assert m["precision_at_threshold"] == 1.0 and m["recall_at_threshold"] == pytest.approx(2 / 3)
    assert m["n_inactive_edges"] == 1 and m["recall_inactive"] == 0.0


def _toy(kind="computed", nonspecific=False):
    key = {"source_layer": 0, "source_feature": 1, "condition": "up"}
    eff = pd.DataFrame({**key, "control": "real", "scope": "forced", "target_layer": [1, 1, 2, 3, 3],
                        "target_feature": [1, 2, 3, 4, 5], "mean_baseline": [0.1, 0.0, 0.2, 0.3, 0.0],
                        "delta": [0.5, 0.3, -0.2, 0.01, 0.0], "delta_passthrough": 0.0,
                        "delta_computed": [0.5, 0.3, -0.2, 0.01, 0.0], "p_value": [1e-4, 1e-3, 1e-2, 0.5, np.nan],
                        "p_computed": [1e-4, 1e-3, 1e-2, 0.5, np.nan]})
    edges = eff.iloc[:3].assign(kind=kind, nonspecific=[False, False, nonspecific])
    pred = pd.DataFrame({**key, "control": "real", "variant": "jacobian", "target_layer": [1, 2, 3],
                         "target_feature": [1, 3, 4], "computed": [0.4, -0.1, 0.02], "total": [0.4, -0.1, 0.02],
                         "computed_gated": [0.4, -0.1, 0.0], "total_gated": [0.4, -0.1, 0.0]})
    return eff, edges, pred


def test_agreement_table_by_hand():
    eff, edges, pred = _toy()
    t = agreement(eff, edges, pred, {"up": 1.0}, 0.05)
    row = t[(t["source"] == "L0-1") & (t["readout"] == "recomputed") & (t["part"] == "computed")
            & (t["layer_gap"] == "all")].iloc[0]
    # tested: targets 1..4 (target 5 has no test); edges 1, 2, 3; L1-2 has no prediction (0)
    assert row["n_targets"] == 4 and row["n_edges"] == 3 and row["dose"] == 1.0
    assert row["precision_at_10"] == 0.75 and row["recall_at_10"] == 1.0
    assert row["recall_inactive"] == 0.0 and row["n_inactive_edges"] == 1
    assert set(t["layer_gap"]) == {"all", "1", "2-4"} and set(t["source"]) == {"L0-1", "all"}
    gap1 = t[(t["layer_gap"] == "1") & (t["source"] == "all") & (t["readout"] == "recomputed")
             & (t["part"] == "computed")].iloc[0]
    assert gap1["n_targets"] == 2 and gap1["n_edges"] == 2
    # a passthrough edge is no headline edge, but it is an edge of the total
    eff, edges, pred = _toy(kind="passthrough")
    t = agreement(eff, edges, pred, {"up": 1.0}, 0.05)
    head = t[(t["source"] == "all") & (t["layer_gap"] == "all") & (t["readout"] == "recomputed")]
    assert head.set_index("part").loc["computed", "n_edges"] == 0 and head.set_index("part").loc["total", "n_edges"] == 3


def test_triage_by_hand():
    _, edges, pred = _toy()
    other = pred.assign(source_feature=2, computed=0.01, computed_gated=0.01)
    t = triage(pd.concat([pred, other]), edges, ["L0-1", "L0-2"], 1, 0.05)
    row = t[t["readout"] == "recomputed"].iloc[0]
    assert row["kept"] == "L0-1" and row["recall"] == 1.0 and row["recall_random"] == 0.5
    assert row["sources_with_edges"] == 1 and row["edges"] == 3
