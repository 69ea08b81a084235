"""The coupled runs: baselines and placebo, each feature's conditions sampled and teacher-forced,
the random and sham controls; exactness where nothing should differ."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import replay_prompts
from pathreplay.replay.coupled import random_direction, run_baseline, run_features
from pathreplay.replay.plan import Condition, baseline_jobs, patched_jobs
from pathreplay.replay.trials import ReplaySettings
from pathreplay.sae.exact import load_feature

PROMPTS = replay_prompts()


def _settings(**kw):
    return ReplaySettings(max_new_tokens=5, temperature=0.7, batch_size=3, capture_layers=(0, 1, 2), **kw)


@pytest.fixture(scope="module", params=["auto", "hooks"])
def replayed(request, tiny_lm, tiny_saes):
    """On the engine and on the hook path."""
    model, tok = tiny_lm
    s = _settings(engine=request.param)
    base = [run_baseline(model, tok, q, 4, 7, s, placebo=True) for q in PROMPTS[:2]]
    baseline = pd.concat([b.trials.assign(part=f"b/{q.id}") for b, q in zip(base, PROMPTS)], ignore_index=True)
    selected = pd.DataFrame({"feature": ["L1-4"], "layer": [1], "feature_id": [4], "risky_value": [2.0]})
    selected = selected.set_index("feature")
    plan = pd.DataFrame({"feature": ["L1-4", "L1-4"], "prompt_id": ["p0", "p1"]})
    feats = {"L1-4": (1, load_feature(tiny_saes[1], "llamascope", 1, 4))}
    conds = [Condition("risky_value", "risky_value", 1.0), Condition("2*risky_value", "risky_value", 2.0)]
    res = run_features(model, tok, selected, plan, {q.id: q for q in PROMPTS}, feats, conds, 4, 7, s, baseline)
    return base, baseline, res


def test_every_condition_runs_sampled_and_forced_with_its_controls(replayed):
    _, _, res = replayed
    t = res.trials
    want = {(c, r) for c in ("risky_value", "2*risky_value", "random:risky_value", "random:2*risky_value", "sham")
            for r in ("generated", "forced")}
    assert set(zip(t["condition"], t["run"])) == want
    assert (t.groupby(["condition", "run"]).size() == 2 * 4).all()  # 2 prompts x 4 trials each
    assert t["row"].tolist() == list(range(len(t))) and (t["feature"] == "L1-4").all()
    assert res.states[0].shape[0] == len(t)


def test_sham_and_forced_runs_are_exact_where_nothing_should_differ(replayed):
    base, baseline, res = replayed
    t = res.trials
    for q, b in zip(PROMPTS, base):
        main = b.trials[b.trials["condition"] == "baseline"].set_index("trial")
        for cond, run in (("sham", "generated"), ("sham", "forced")):
            mine = t[(t["prompt_id"] == q.id) & (t["condition"] == cond) & (t["run"] == run)].set_index("trial")
            assert mine["tokens"].tolist() == main["tokens"].tolist()
            for layer in (0, 1, 2):  # every layer, every position: the sham changes nothing
                assert torch.equal(res.states[layer][list(mine["row"])], b.states[layer][list(main["row"])])
        for cond in ("risky_value", "random:risky_value"):
            forced = t[(t["prompt_id"] == q.id) & (t["condition"] == cond) & (t["run"] == "forced")].set_index("trial")
            assert forced["tokens"].tolist() == main["tokens"].tolist()  # teacher-forced on the baseline's tokens
            # block 0 is upstream of the patch at block 1: equal to the bit
            assert torch.equal(res.states[0][list(forced["row"])], b.states[0][list(main["row"])])
            assert not torch.equal(res.states[2][list(forced["row"])], b.states[2][list(main["row"])])


def test_random_control_moves_h_as_far_as_its_condition_along_another_line(replayed, tiny_saes):
    _, _, res = replayed
    t = res.trials
    for run in ("generated", "forced"):
        real = t[(t["condition"] == "risky_value") & (t["run"] == run)].set_index(["prompt_id", "trial"])
        rand = t[(t["condition"] == "random:risky_value") & (t["run"] == run)].set_index(["prompt_id", "trial"])
        np.testing.assert_allclose(rand["dh_last"], real.loc[rand.index, "dh_last"], rtol=1e-4)
    forced_real = t[(t["condition"] == "risky_value") & (t["run"] == "forced")].set_index(["prompt_id", "trial"])
    forced_rand = t[(t["condition"] == "random:risky_value") & (t["run"] == "forced")].set_index(["prompt_id", "trial"])
    np.testing.assert_allclose(forced_rand["dh_generated"], forced_real.loc[forced_rand.index, "dh_generated"],
                               rtol=1e-4)
    feat = load_feature(tiny_saes[1], "llamascope", 1, 4)
    r = random_direction(feat, 7, "L1-4", "risky_value")
    assert float(r.norm()) == pytest.approx(1.0)
    # orthogonal to the encoder row as well as the decoder row: the source itself does not move
    for row in (feat.w, feat.u):
        assert abs(float(r.double() @ row.double()) / float(row.double().norm())) < 1e-6
    assert not torch.equal(r, random_direction(feat, 7, "L1-4", "2*risky_value"))
    rand = t[t["condition"] == "random:risky_value"]
    np.testing.assert_allclose(rand["value_after_last"], rand["value_before_last"], atol=1e-5)


def test_run_baseline_marks_no_feature_and_draws_placebo_on_other_seeds(replayed):
    base, _, _ = replayed
    t = base[1].trials
    assert t["condition"].tolist() == ["baseline"] * 4 + ["placebo"] * 4
    assert t["row"].tolist() == list(range(8)) and t["trial"].tolist() == [0, 1, 2, 3] * 2
    assert set(t["seed"].iloc[:4]).isdisjoint(t["seed"].iloc[4:])
    assert (t["feature"] == "").all() and (t["layer"] == -1).all() and (t["feature_id"] == -1).all()
    assert np.isnan(t["value"]).all() and (t["run"] == "generated").all()


def test_the_replay_never_redraws_the_screens_trials():
    screen = {j.seed for j in baseline_jobs(PROMPTS, 50, 0, "screen")}
    replay = {j.seed for j in baseline_jobs(PROMPTS, 50, 0)} | {j.seed for j in patched_jobs(
        PROMPTS, pd.Series({"risky_value": 1.0}), [Condition("risky_value", "risky_value", 1.0)], 50, 0)}
    placebo = {j.seed for j in baseline_jobs(PROMPTS, 50, 0, "placebo")}
    assert len(screen) == len(replay) == len(placebo) == 150
    assert not screen & replay and not screen & placebo and not replay & placebo
