"""Replay: per-feature loops, row offsets, baselines and placebo seeds, and what a job writes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open

from pathreplay.plan import Condition, patched_jobs
from pathreplay.prompts import Prompt
from pathreplay.replay import (
    ReplayResult,
    ReplaySettings,
    run_baseline,
    run_features,
    run_jobs,
    stack_results,
    write_result,
)
from pathreplay.sae import SAESource, load_feature, load_sae

PROMPTS = ["Choice: 1) Bet $10\n", "Round 1: Bet $10, Win, Balance $120\nChoice: ", "2) Stop\nChoice: "]


def _settings():
    return ReplaySettings(max_new_tokens=5, temperature=0.7, batch_size=32, capture_layers=(0, 1),
                          capture="all")


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
    saes = SAESource(str(tiny_saes[0].parent / "L{layer}R"), "llamascope")
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


def test_write_result_keeps_each_layers_states_and_positions(tmp_path):
    res = _result([0, 1, 2])
    res.trials["n_positions"] = [1, 0, 1]
    paths = [str(tmp_path / "L0.safetensors"), str(tmp_path / "L1.safetensors")]
    write_result(res, (0, 1), paths, str(tmp_path / "trials.parquet"))
    for layer, path in zip((0, 1), paths):
        with safe_open(path, framework="pt") as f:
            assert torch.equal(f.get_tensor("states"), res.states[layer])
            assert f.get_tensor("n_positions").tolist() == [1, 0, 1] and f.metadata() == {"layer": str(layer)}
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "trials.parquet"), res.trials)
    with pytest.raises(ValueError):  # a layer without its file is a bug, not a silent skip
        write_result(res, (0, 1), paths[:1], str(tmp_path / "t2.parquet"))


def test_screen_settings_capture_nothing(tiny_lm):
    model, tok = tiny_lm
    s = ReplaySettings(max_new_tokens=3, temperature=0.7, batch_size=4)
    jobs = patched_jobs([Prompt("p0", PROMPTS[0], "c")], pd.Series({"risky_value": 1.0}),
                        [Condition("risky_value", "risky_value", 1.0)], 2, 3)
    res = run_jobs(model, tok, jobs, s)
    assert res.states == {} and (res.trials["n_positions"] == 0).all() and len(res.trials) == 2
