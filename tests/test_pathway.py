"""A pathway planted by construction is recovered as the top edge; placebo finds nothing. Also the
replay and effects stages' parts: feature loops, row offsets, trial pairing, part names."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_llamascope

from pathreplay.config import Prompt
from pathreplay.effects import code_layer, edges, feature_effects, pairs_of, read_codes, source_effects
from pathreplay.encode import encode_parts, part_of
from pathreplay.io import write_tensors
from pathreplay.pathways import chains
from pathreplay.plan import CaptureSpec, Condition
from pathreplay.replay import Job, ReplayResult, ReplaySettings, run_baseline, run_features, run_jobs, stack_results
from pathreplay.sae import load_feature, load_sae

PROMPTS = ["Choice: 1) Bet $10\n", "Round 1: Bet $10, Win, Balance $120\nChoice: ", "2) Stop\nChoice: "]
A, B = 5, 9  # source feature at block 0, planted target at block 1


@pytest.fixture(scope="module")
def planted(tiny_lm, tmp_path_factory):
    """SAEs where block 1's feature B reads exactly block 0's feature A's decoder direction, so the
    residual connection carries a patch of A straight into B."""
    model, _ = tiny_lm
    d = model.config.hidden_size
    g = torch.Generator().manual_seed(3)
    root = tmp_path_factory.mktemp("planted")
    E0, D0 = torch.randn(16, d, generator=g) / d, torch.randn(d, 16, generator=g)
    E0[A] = D0[:, A] / D0[:, A].norm() ** 2  # a trained SAE's encoder reads its own decoder row
    write_llamascope(root / "L0R", E0, torch.zeros(16), D0, torch.zeros(d), block=0, threshold=0.0,
                     avg_norm=math.sqrt(d))
    E1, D1 = torch.randn(16, d, generator=g) / d, torch.randn(d, 16, generator=g)
    E1[B] = D0[:, A] / D0[:, A].norm() ** 2  # reads A's decoder row at unit gain
    bias = torch.zeros(16)
    bias[B] = 5.0  # keep B active so its changes are visible
    write_llamascope(root / "L1R", E1, bias, D1, torch.zeros(d), block=1, threshold=0.0, avg_norm=math.sqrt(d))
    return root


def _settings():
    return ReplaySettings(max_new_tokens=5, temperature=0.7, batch_size=32, capture_layers=(0, 1),
                          capture=CaptureSpec("all", 0))


def _pairs(treated, control, cond, tpart, cpart):
    return pairs_of(treated.assign(part=tpart), control.assign(part=cpart), cond)


def test_planted_pathway_is_top_edge_and_placebo_is_clean(tiny_lm, planted, tmp_path):
    model, tok = tiny_lm
    feat = load_feature(planted / "L0R", "llamascope", 0, A)
    s = _settings()
    base_jobs = [Job(f"p{i}", "c", t, "baseline", k, 100 * i + k) for i, t in enumerate(PROMPTS) for k in range(8)]
    plac_jobs = [j._replace(condition="placebo", seed=j.seed + 7919) for j in base_jobs]
    patch_jobs = [j._replace(condition="up", value=6.0) for j in base_jobs]
    base = run_jobs(model, tok, base_jobs + plac_jobs, s)
    patched = run_jobs(model, tok, patch_jobs, s, feature=feat, block=0)
    files = []
    for name, res in (("baseline", base), ("patched", patched)):
        path = tmp_path / f"{name}.safetensors"
        write_tensors({"states": res.states[1],
                       "n_positions": torch.tensor(res.trials["n_positions"].to_numpy(), dtype=torch.int32)}, path)
        files.append((name, str(path)))
    codes, quality = encode_parts(load_sae(planted / "L1R", "llamascope", 1), files, 1)
    assert quality.positions > 0
    bt = base.trials
    main, plac = bt[bt["condition"] == "baseline"], bt[bt["condition"] == "placebo"]
    eff = source_effects({1: codes}, [_pairs(patched.trials, main, "up", "patched", "baseline")], 0, A,
                         min_delta=0.05, min_prompts=2)
    e = edges(eff, 0.05, 0.05)
    top = e.iloc[0]
    assert (top["target_layer"], top["target_feature"]) == (1, B)
    assert top["delta"] == pytest.approx(6.0 - float(patched.trials["value_before_last"].mean()), rel=0.5)
    assert bool(top["robust"]) and top["prompts_replicated"] == 3
    # the patch is exact where it was applied
    assert (patched.trials["value_after_last"] - 6.0).abs().max() < 1e-3
    placebo = source_effects({1: codes}, [_pairs(plac, main, "placebo", "baseline", "baseline")], 0, A,
                             min_delta=0.05, min_prompts=2)
    assert placebo[(placebo["scope"] == "prompt_last")].empty  # prefill is deterministic
    assert edges(placebo, 0.05, 0.05).empty


def test_chains_follow_edges_through_patched_features():
    e = pd.DataFrame({"source_layer": [0, 1, 0], "source_feature": [1, 2, 1], "target_layer": [1, 2, 2],
                      "target_feature": [2, 3, 4], "delta": [0.5, -0.3, 0.1], "q_value": [0.01, 0.02, 0.03],
                      "robust": [True, True, False]})
    c = chains(e)
    assert c["path"].tolist() == ["L0-1 -> L1-2 -> L2-3"]
    assert c["deltas"].iloc[0] == "0.5;-0.3" and bool(c["robust"].iloc[0])


def _trials(prompt_ids, trials, part, rows=None, condition="baseline"):
    return pd.DataFrame({"prompt_id": prompt_ids, "trial": trials, "part": part, "condition": condition,
                         "row": rows if rows is not None else list(range(len(prompt_ids)))})


def test_pairs_of_matches_prompt_and_trial_and_drops_unmatched():
    treated = _trials(["a", "a", "b", "c"], [0, 1, 0, 0], "patched/s000", rows=[10, 11, 12, 13])
    # control rows in another order; ("a", 1) and ("c", 0) have no partner, ("b", 1) none either
    control = _trials(["b", "a", "b"], [0, 0, 1], "baseline/b", rows=[5, 6, 7])
    p = pairs_of(treated, control, "up")
    assert p.condition == "up"
    got = sorted(zip(p.prompt.tolist(), p.treated, p.control))
    assert got == [("a", ("patched/s000", 10), ("baseline/b", 6)),
                   ("b", ("patched/s000", 12), ("baseline/b", 5))]


def test_part_and_layer_from_paths():
    assert part_of("results/replay/patched/s003/trials.parquet") == "patched/s003"
    assert part_of(Path("/x/results/replay/baseline/p-12/trials.parquet")) == "baseline/p-12"
    assert part_of("results/replay/patched/s003/L12.safetensors") == "patched/s003"
    assert code_layer("results/encode/L12.parquet") == 12
    assert code_layer(Path("/a/Lx/results/encode/L3.parquet")) == 3
    assert code_layer("L7.parquet") == 7  # no folder in front


def test_read_codes_keeps_only_the_given_parts_per_layer(tmp_path):
    rows = pd.DataFrame({"part": ["patched/s000", "baseline/a", "patched/s001"], "row": [0, 1, 2],
                         "feature": [4, 5, 6], "last": [1.0, 2.0, 3.0], "gen": [0.5, 0.5, 0.5]})
    for layer in (2, 1):
        rows.assign(feature=rows["feature"] + layer).to_parquet(tmp_path / f"L{layer}.parquet", index=False)
    codes = read_codes([tmp_path / "L2.parquet", tmp_path / "L1.parquet"], ["baseline/a", "patched/s000"])
    assert list(codes) == [2, 1]  # file order
    assert codes[2]["part"].tolist() == ["patched/s000", "baseline/a"]
    assert codes[1]["feature"].tolist() == [5, 6]


def test_feature_effects_pairs_by_seed_and_runs_placebo():
    """Each patched trial's target code is its own seed's baseline value + 1: the paired delta is
    exactly 1 only if trials are paired on (prompt, trial), not on row order."""
    base = pd.concat([_trials(["a", "a", "b", "b"], [0, 1, 0, 1], "baseline/x", rows=[0, 1, 2, 3]),
                      _trials(["a", "a", "b", "b"], [0, 1, 0, 1], "baseline/x", rows=[4, 5, 6, 7],
                              condition="placebo")], ignore_index=True)
    patched = _trials(["b", "b", "a", "a"], [1, 0, 1, 0], "patched/s000", condition="up").assign(
        layer=0, feature_id=3)
    gen_base = {("a", 0): 1.0, ("a", 1): 4.0, ("b", 0): 2.0, ("b", 1): 8.0}
    code_rows = [("baseline/x", r.row, gen_base[r.prompt_id, r.trial]) for r in base.itertuples()]
    code_rows += [("patched/s000", r.row, gen_base[r.prompt_id, r.trial] + 1) for r in patched.itertuples()]
    codes = pd.DataFrame(code_rows, columns=["part", "row", "gen"]).assign(feature=7, last=0.0)
    res = feature_effects(patched, base, {2: codes}, min_delta=0.05, min_prompts=2)
    gen = res.effects[res.effects["scope"] == "generated"]
    assert len(gen) == 1
    g = gen.iloc[0]
    assert (g["source_layer"], g["source_feature"], g["condition"]) == (0, 3, "up")
    assert (g["target_layer"], g["target_feature"]) == (2, 7)
    assert g["delta"] == 1.0 and g["p_value"] == 0.0 and g["n_trials"] == 4
    assert g["mean_baseline"] == pytest.approx(15 / 4)
    # `last` is 0 everywhere: no difference, nothing tested; placebo codes equal baseline's
    assert (res.effects["scope"] == "generated").all() and res.placebo.empty
    assert list(res.placebo.columns) == list(res.effects.columns)


def _result(rows, layers=(0, 1), d=2, first=0.0):
    n = len(rows)
    t = pd.DataFrame({"prompt_id": [f"p{i}" for i in range(n)], "row": rows, "n_positions": [1] * n})
    states = {b: first + b * 100 + torch.arange(n * 2 * d, dtype=torch.float16).reshape(n, 2, d) for b in layers}
    return ReplayResult(t, states)


def test_stack_results_numbers_rows_on_and_keeps_them_pointing_at_their_states():
    a, b = _result([0, 1]), _result([0, 1, 2], first=50.0)
    out = stack_results([a, b], (0, 1))
    assert out.trials["row"].tolist() == [0, 1, 2, 3, 4]
    assert list(out.trials.columns) == ["prompt_id", "row", "n_positions"]
    assert out.trials["prompt_id"].tolist() == ["p0", "p1", "p0", "p1", "p2"]
    for layer in (0, 1):
        assert out.states[layer].shape == (5, 2, 2)
        assert torch.equal(out.states[layer][3], b.states[layer][1])  # stacked row 3 is b's row 1
        assert torch.equal(out.states[layer][:2], a.states[layer])
    assert a.trials["row"].tolist() == [0, 1]  # inputs untouched
    with pytest.raises(ValueError):
        stack_results([], (0,))


@pytest.mark.parametrize("mode", ["clamp", "reconstruct"])
def test_run_features_equals_run_jobs_per_feature_offset(tiny_lm, tiny_saes, mode):
    model, tok = tiny_lm
    s = _settings()._replace(max_new_tokens=3, mode=mode)
    prompts = {f"p{i}": Prompt(f"p{i}", t, "c") for i, t in enumerate(PROMPTS)}
    selected = pd.DataFrame({"feature": ["L1-4", "L0-2"], "layer": [1, 0], "feature_id": [4, 2],
                             "risky_value": [2.0, 3.0]}).set_index("feature")
    plan = pd.DataFrame({"feature": ["L0-2", "L1-4", "L1-4"], "prompt_id": ["p0", "p1", "p2"]})
    feats = {n: (int(r.layer), load_feature(tiny_saes[int(r.layer)], "llamascope", int(r.layer), int(r.feature_id)))
             for n, r in selected.iterrows()}
    conds = [Condition("risky_value", "risky_value", 1.0), Condition("2*risky_value", "risky_value", 2.0)]
    saes = {"path": str(tiny_saes[0].parent / "L{layer}R"), "format": "llamascope"}
    got = run_features(model, tok, selected, plan, prompts, feats, conds, 2, 7, s, saes=saes)
    # by hand: L1-4 on p1, p2 (2 conditions x 2 trials = 8 rows), then L0-2 on p0 (4 rows)
    assert len(got.trials) == 12
    assert got.trials["feature"].tolist() == ["L1-4"] * 8 + ["L0-2"] * 4
    assert got.trials["layer"].tolist() == [1] * 8 + [0] * 4
    assert got.trials["row"].tolist() == list(range(12))
    assert got.trials["prompt_id"].tolist() == ["p1"] * 4 + ["p2"] * 4 + ["p0"] * 4
    assert got.trials["value"].tolist() == [2.0, 2.0, 4.0, 4.0] * 2 + [3.0, 3.0, 6.0, 6.0]
    assert list(got.trials.columns[-3:]) == ["feature", "layer", "feature_id"]
    for b in s.capture_layers:
        assert got.states[b].shape[0] == 12
    # the second feature alone, as run_jobs gives it: same trials, rows shifted by 8, same states
    from pathreplay.screen import patched_jobs
    sae = load_sae(tiny_saes[0], "llamascope", 0) if mode == "reconstruct" else None
    alone = run_jobs(model, tok, patched_jobs([prompts["p0"]], selected.loc["L0-2"], conds, 2, 7), s,
                     feature=feats["L0-2"][1], block=0, sae=sae)
    tail = got.trials.iloc[8:].reset_index(drop=True)
    pd.testing.assert_frame_equal(tail.drop(columns=["row", "feature", "layer", "feature_id"]),
                                  alone.trials.drop(columns=["row"]))
    assert (tail["row"] - alone.trials["row"]).eq(8).all()
    for b in s.capture_layers:
        assert torch.equal(got.states[b][8:], alone.states[b])


def test_run_baseline_marks_no_feature_and_draws_placebo_on_other_seeds(tiny_lm):
    model, tok = tiny_lm
    s = _settings()._replace(max_new_tokens=2)
    q = Prompt("p1", PROMPTS[1], "c")
    res = run_baseline(model, tok, q, 3, 11, s, placebo=True)
    t = res.trials
    assert t["condition"].tolist() == ["baseline"] * 3 + ["placebo"] * 3
    assert t["row"].tolist() == list(range(6)) and t["trial"].tolist() == [0, 1, 2] * 2
    assert set(t["seed"].iloc[:3]).isdisjoint(t["seed"].iloc[3:])
    assert (t["feature"] == "").all() and (t["layer"] == -1).all() and (t["feature_id"] == -1).all()
    assert np.isnan(t["value"]).all()
    assert res.states[0].shape[0] == 6
    plain = run_baseline(model, tok, q, 3, 11, s)
    assert plain.trials["seed"].tolist() == t["seed"].iloc[:3].tolist()
