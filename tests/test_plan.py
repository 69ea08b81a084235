"""Selection, conditions, prompt choice, the trials' seeds and capture sizes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pathreplay.errors import UserError
from pathreplay.replay.plan import (
    CaptureSpec,
    Condition,
    baseline_jobs,
    capture_bytes,
    check_targets,
    parse_conditions,
    patched_jobs,
    prompts_for_features,
    select_features,
    stable_seed,
    trial_seed,
)
from pathreplay.replay.prompts import Prompt

TABLE = pd.DataFrame({
    "layer": [0, 0, 1, 1, 2, 3], "feature_id": [5, 6, 7, 8, 9, 10],
    "cohen_d": [0.5, -2.0, 1.5, 0.1, -1.0, 3.0], "p_value": 0.01,
    "safe_value": 0.1, "risky_value": 0.9, "label": ["safe", "risky", "risky", "safe", "safe", "risky"],
    "source": "t"})


def test_select_top_by_abs_d_with_filters_and_shards():
    s = select_features(TABLE, top_n=3, shard_size=2, sae_layers=[0, 1, 2, 3])
    assert s["feature"].tolist() == ["L0-6", "L1-7", "L2-9"]  # L3 has nothing downstream
    assert s["shard"].tolist() == ["s000", "s000", "s001"]
    s = select_features(TABLE, top_n=5, shard_size=5, sae_layers=[0, 1, 2, 3], labels=["safe"], min_abs_d=0.4)
    assert s["feature"].tolist() == ["L2-9", "L0-5"]
    s = select_features(TABLE, top_n=5, shard_size=5, sae_layers=[0, 1, 2, 3], per_layer_cap=1)
    assert s["feature"].tolist() == ["L0-6", "L1-7", "L2-9"]


def test_conditions_parse_and_refuse():
    c = parse_conditions(["risky_value", "2*safe_value", "0.5 * risky_value"])
    assert [(x.column, x.scale) for x in c] == [("risky_value", 1.0), ("safe_value", 2.0), ("risky_value", 0.5)]
    with pytest.raises(UserError, match="^replay.conditions: unknown condition 'bankrupt'; name a value column"):
        parse_conditions(["bankrupt"])


def test_prompts_alternate_contexts():
    prompts = [Prompt("a", "x", "safe"), Prompt("b", "x", "safe"), Prompt("c", "x", "risky"), Prompt("d", "x", "risky")]
    feats = pd.DataFrame({"feature": ["L0-1"]})
    plan = prompts_for_features(feats, prompts, 3)
    assert plan["prompt_id"].tolist() == ["a", "c", "b"]
    act = {"L0-1": np.array([0.1, 0.9, 0.2, 0.8])}
    plan = prompts_for_features(feats, prompts, 2, "top_activation", act)
    assert plan["prompt_id"].tolist() == ["b", "d"]


def test_capture_positions_and_bytes():
    assert CaptureSpec.parse("all").positions(6) == [0, 1, 2, 3, 4]
    assert CaptureSpec.parse("first:2").positions(6) == [0, 1]
    assert CaptureSpec.parse("stride:2").positions(6) == [0, 2, 4]
    with pytest.raises(UserError, match="first:K"):
        CaptureSpec.parse("some")
    assert capture_bytes(10, 3, 2, 8) == 10 * 4 * 2 * 8 * 2


def test_stable_seed_is_stable():
    assert stable_seed(0, "main", "p1", 3) == stable_seed(0, "main", "p1", 3)
    assert stable_seed(0, "main", "p1", 3) != stable_seed(0, "placebo", "p1", 3)


def test_baseline_and_every_condition_share_each_trials_seed():
    prompts = [Prompt("p", "text p", "safe"), Prompt("q", "text q", "risky")]
    row = TABLE.iloc[0]  # safe_value 0.1, risky_value 0.9
    conds = [Condition("risky_value", "risky_value", 1.0), Condition("2*safe_value", "safe_value", 2.0)]
    base = baseline_jobs(prompts, 3, 7)
    patched = patched_jobs(prompts, row, conds, 3, 7)
    assert [(j.prompt_id, j.trial) for j in base] == [("p", 0), ("p", 1), ("p", 2), ("q", 0), ("q", 1), ("q", 2)]
    assert all(np.isnan(j.value) and j.condition == "baseline" for j in base)
    seed = {(j.prompt_id, j.trial): j.seed for j in base}
    assert len(set(seed.values())) == 6
    assert len(patched) == 12 and all(j.seed == seed[j.prompt_id, j.trial] for j in patched)
    assert [j.value for j in patched[:6]] == pytest.approx([0.9] * 3 + [0.2] * 3)
    assert patched[0].seed == trial_seed(7, "p", 0, "replay") == stable_seed(7, "replay", "p", 0)
    placebo = baseline_jobs(prompts, 3, 7, stream="placebo", condition="placebo")
    assert {j.seed for j in placebo}.isdisjoint(seed.values()) and placebo[0].condition == "placebo"
    assert baseline_jobs(prompts, 3, 8)[0].seed != base[0].seed  # the config's seed moves every draw


def test_a_clamp_target_the_feature_cannot_read_is_refused():
    table = pd.DataFrame({"layer": [0, 1], "feature_id": [5, 6], "safe_value": [0.0, 0.1], "risky_value": [0.9, 0.3]})
    thresholds = {"L0-5": 0.2, "L1-6": 0.2}
    check_targets(table, parse_conditions(["risky_value", "safe_value"])[:1], thresholds, "replay.conditions")
    check_targets(table.iloc[:1], parse_conditions(["safe_value"]), thresholds, "replay.conditions")  # 0: ablation
    with pytest.raises(UserError, match=r"^replay.conditions: L1-6's target under safe_value is 0.1, at or below its "
                                        r"threshold 0.2: a clamp can never read it back; use a larger multiple"):
        check_targets(table, parse_conditions(["risky_value", "safe_value"]), thresholds, "replay.conditions")
    check_targets(table, parse_conditions(["3*safe_value"]), thresholds, "replay.conditions")  # 0.3 > 0.2
