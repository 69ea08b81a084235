"""A chain planted by construction, end to end through the library: replay with its controls,
encode, effects, run-wide edges, chains and mediation. A -> B -> C: B reads A's decoder row and
writes it on, C reads B's; B is a source too. Also the pieces: chains and the controls' tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import replay_prompts, write_llamascope

from pathreplay.coupled import run_baseline, run_features
from pathreplay.effects import feature_effects
from pathreplay.encode import encode_parts
from pathreplay.mediation import Slice, mediate
from pathreplay.pathways import chains, edges, null_summary, patch_signs, run_wide, upstream_summary
from pathreplay.plan import Condition, patched_jobs
from pathreplay.replay import ReplaySettings, write_result
from pathreplay.sae import SAESource

PROMPTS = replay_prompts()
A, B, C, X = 5, 9, 4, 7  # A and X at block 0, B at block 1, C at block 2; X writes off A's line


@pytest.fixture(scope="module")
def planted(tiny_lm, tmp_path_factory):
    model, _ = tiny_lm
    d = model.config.hidden_size
    g = torch.Generator().manual_seed(3)
    root = tmp_path_factory.mktemp("planted")
    v = torch.randn(d, generator=g)
    w = torch.randn(d, generator=g)
    w -= (w @ v) / (v @ v) * v  # X's line, orthogonal to the chain's
    for block, writes, reads in ((0, {A: v, X: w}, {A: v, X: w}), (1, {B: v}, {B: v}), (2, {}, {C: v})):
        E, D = torch.randn(16, d, generator=g) / d, torch.randn(d, 16, generator=g) / d
        bias = torch.zeros(16)
        for i, r in reads.items():
            E[i] = r / r.norm() ** 2  # reads its line at unit gain
            bias[i] = 5.0 * math.sqrt(d) / math.sqrt(d)  # active throughout, so changes show
        for i, wr in writes.items():
            D[:, i] = wr
        write_llamascope(root / f"L{block}R", E, bias, D, torch.zeros(d), block=block, threshold=0.0,
                         avg_norm=math.sqrt(d))
    return SAESource(str(root / "L{layer}R"), "llamascope")


@pytest.fixture(scope="module")
def traced(tiny_lm, planted, tmp_path_factory):
    """The replay of A, B and X, encoded, tested and mediated."""
    model, tok = tiny_lm
    tmp = tmp_path_factory.mktemp("traced")
    s = ReplaySettings(max_new_tokens=5, temperature=0.7, batch_size=8, capture_layers=(0, 1, 2))
    files = {b: [] for b in (0, 1, 2)}
    baseline = []
    for q in PROMPTS:
        res = run_baseline(model, tok, q, 8, 11, s, placebo=True)
        paths = [str(tmp / f"b_{q.id}_L{b}.safetensors") for b in (0, 1, 2)]
        write_result(res, (0, 1, 2), paths, str(tmp / "t.parquet"))
        baseline.append(res.trials.assign(part=f"baseline/{q.id}"))
        for b in (0, 1, 2):
            files[b].append((f"baseline/{q.id}", str(tmp / f"b_{q.id}_L{b}.safetensors")))
    baseline = pd.concat(baseline, ignore_index=True)
    selected = pd.DataFrame({"feature": ["L0-5", "L1-9", "L0-7"], "layer": [0, 1, 0], "feature_id": [A, B, X],
                             "risky_value": [6.0, 6.0, 6.0]}).set_index("feature")
    plan = pd.DataFrame({"feature": [f for f in selected.index for _ in PROMPTS],
                         "prompt_id": [q.id for _ in selected.index for q in PROMPTS]})
    feats = {n: (int(r.layer), planted.feature(int(r.layer), int(r.feature_id))) for n, r in selected.iterrows()}
    conds = [Condition("up", "risky_value", 1.0)]
    patched = run_features(model, tok, selected, plan, {q.id: q for q in PROMPTS}, feats, conds, 8, 11, s, baseline)
    write_result(patched, (0, 1, 2), [str(tmp / f"p_L{b}.safetensors") for b in (0, 1, 2)], str(tmp / "t.parquet"))
    for b in (0, 1, 2):
        files[b].append(("patched/s000", str(tmp / f"p_L{b}.safetensors")))
    codes = {b: encode_parts(planted.load(b), files[b], b)[0] for b in (0, 1, 2)}
    trials = patched.trials.assign(part="patched/s000")
    results = {n: feature_effects(trials[trials["feature"] == n], baseline, codes, 0.05, 2) for n in selected.index}
    effects = run_wide(pd.concat([r.effects for r in results.values()], ignore_index=True))
    e = edges(effects, 0.05, 0.05)
    ch = chains(e, patch_signs(trials))
    slices = {n: Slice(n, layer, planted.feature(layer, fid)) for n, layer, fid in
              (("L0-5", 0, A), ("L1-9", 1, B), ("L2-4", 2, C), ("L0-7", 0, X))}
    todo = ch[(ch["scope"] == "forced") & (ch["c"] == "L2-4")]
    jobs = {(a, "up"): patched_jobs(PROMPTS, selected.loc[a], conds, 8, 11) for a in set(todo["a"])}
    paths = mediate(model, tok, todo, slices, jobs, baseline[baseline["condition"] == "baseline"], s, 0.05, 0.05)
    return {"effects": effects, "edges": e, "chains": ch, "paths": paths, "results": results, "trials": trials}


def test_planted_chain_is_mediated_by_its_middle(traced):
    paths = traced["paths"].set_index("path")
    chain = paths.loc["L0-5 -> L1-9 -> L2-4"]
    assert bool(chain["mediated"]) and chain["indirect_share"] >= 0.8, chain
    assert chain["share_lo"] > 0.5 and abs(chain["total"]) > 0.05 and chain["n_trials"] == 24
    e = traced["edges"]
    top = e[(e["source_feature"] == A) & (e["scope"] == "forced")].iloc[0]
    assert (top["target_layer"], top["target_feature"]) in {(1, B), (2, C)}
    # the forced and generated deltas of an edge stand side by side
    assert {"delta_forced", "delta_generated", "nonspecific"} <= set(e.columns)


def test_the_control_feature_has_no_chain(traced):
    ch = traced["chains"]
    assert not ch.empty and not (ch["a"] == "L0-7").any() and not (ch["b"] == "L0-7").any()


def test_upstream_forced_effects_are_exactly_zero_and_the_sham_changes_nothing(traced):
    up = traced["results"]["L1-9"].upstream  # B at block 1: block 0 is upstream
    assert len(up) and (up["target_layer"] == 0).all()
    forced = up[up["scope"] == "forced"]
    assert len(forced) and (forced["delta"] == 0).all() and (forced["n_nonzero"] == 0).all()
    gen = up[(up["scope"] == "generated") & (up["control"] == "real")]
    assert (gen["n_nonzero"] > 0).any()  # tokens the patch changed move block 0 in the sampled runs
    eff = traced["effects"]
    sham = eff[eff["control"] == "sham"]
    assert len(sham) and (sham["delta"] == 0).all() and sham["p_value"].isna().all()
    summary = upstream_summary(pd.concat([r.upstream for r in traced["results"].values()]))
    assert (summary.loc[summary["scope"] == "forced", "differing"] == 0).all()


def test_the_controls_through_the_same_tests(traced):
    eff = traced["effects"]
    assert set(eff["control"]) == {"real", "sham", "random", "placebo"}
    n = null_summary(eff, 0.05, 0.05)
    plac = n[n["contrast"] == "placebo"]
    assert len(plac) and (plac["discoveries"] == 0).all()
    # with one prompt-level difference per prompt, 3 prompts give an exact sign-flip p of 0.25 at best
    pl = eff[(eff["scope"] == "prompt_last") & eff["p_value"].notna()]
    assert (pl["p_value"] >= 0.25).all() and (pl["n"] == 3).all()
    assert (eff["p_value"].dropna() > 0).all()


def test_chains_need_one_scope_one_condition_and_agreeing_signs():
    e = pd.DataFrame({"source_layer": [0, 1, 1, 0], "source_feature": [1, 2, 2, 1], "condition": ["c", "c", "d", "c"],
                      "scope": ["forced", "forced", "forced", "generated"], "target_layer": [1, 2, 2, 1],
                      "target_feature": [2, 3, 4, 2], "delta": [0.5, -0.3, 0.2, 0.4],
                      "q_value": [0.01, 0.02, 0.01, 0.03]})
    signs = {("L1-2", "c"): 1.0, ("L1-2", "d"): 1.0}
    c = chains(e, signs)
    assert c["path"].tolist() == ["L0-1 -> L1-2 -> L2-3"] and c["scope"].tolist() == ["forced"]
    assert (c["delta_ab"].iloc[0], c["delta_bc"].iloc[0]) == (0.5, -0.3)
    # A lowering B while B's own patch raised it: B's edge says nothing about A's effect through it
    assert chains(e.assign(delta=[-0.5, -0.3, 0.2, 0.4]), signs).empty


def test_patch_signs_from_the_trials():
    t = pd.DataFrame({"run": "generated", "feature": ["L1-2"] * 3 + ["L0-1"], "condition": ["c", "c", "sham", "c"],
                      "value": [2.0, 2.0, np.nan, 0.0], "value_before_last": [1.0, 1.5, 0.3, 0.4]})
    assert patch_signs(t) == {("L1-2", "c"): 1.0, ("L0-1", "c"): -1.0}
