"""Selection, conditions, prompt choice and capture sizes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pathreplay.behaviour import behaviour_effects, mcnemar_p
from pathreplay.config import Prompt
from pathreplay.errors import UserError
from pathreplay.plan import (CaptureSpec, capture_bytes, parse_conditions, prompts_for_features,
                             select_features, stable_seed)

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


def test_mcnemar_by_hand():
    base = np.array([True, True, False, False, False, False])
    pat = np.array([False, False, False, False, True, False])
    # discordant: 2 stop->bet, 1 bet->stop; exact two-sided binomial(1; 3, .5) = 1.0
    assert mcnemar_p(base, pat) == pytest.approx(1.0)
    assert mcnemar_p(np.zeros(8, bool), np.ones(8, bool)) == pytest.approx(2 * 0.5 ** 8)


def test_behaviour_rows_pair_by_trial():
    base = pd.DataFrame({"prompt_id": "p", "trial": range(4), "action": ["bet", "bet", "stop", "bet"],
                         "bet": [10, 20, 0, 10], "valid": True})
    pat = base.assign(feature="L0-1", layer=0, feature_id=1, condition="risky_value", context="c", value=1.0,
                      action=["bet", "bet", "bet", "bet"], bet=[10, 30, 40, 10])
    row = behaviour_effects(pat, base).iloc[0]
    assert row["stop_rate_baseline"] == 0.25 and row["stop_rate"] == 0.0
    assert row["delta_bet"] == pytest.approx(10 / 3)  # pairs that bet both times: 0, +10, 0
    assert row["n_trials"] == 4
