"""The screen: baseline and patched trials on shared seeds, and each feature's verdict by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pathreplay.behaviour.screen import classify, screen_features
from pathreplay.features import CANONICAL
from pathreplay.replay.plan import Condition, patched_jobs
from pathreplay.replay.prompts import Prompt
from pathreplay.replay.trials import ReplaySettings
from pathreplay.sae.exact import load_feature
from pathreplay.study.task import SLOT_MACHINE


def _candidates(*names: str) -> pd.DataFrame:
    layer = [int(n[1]) for n in names]
    fid = [int(n.split("-")[1]) for n in names]
    return pd.DataFrame({"feature": list(names), "layer": layer, "feature_id": fid, "cohen_d": 1.0,
                         "p_value": 0.5, "safe_value": 0.1, "risky_value": 2.0, "label": "", "source": "t"})


def test_classify_by_hand():
    eff = pd.DataFrame({
        "feature": ["L0-1", "L0-1", "L0-2", "L0-2", "L1-3", "L1-5"],
        "target_value": [0.1, 2.0, 0.1, 2.0, 2.0, 2.0],
        "delta_stop": [0.0, 0.5, 0.3, -0.4, 0.05, 0.9],  # L0-1 stops more as its target rises; L0-2 less
        "p_stop": [0.9, 0.001, 0.01, 0.002, 0.5, 0.001],
        "q_stop": [0.9, 0.004, 0.02, 0.004, 0.5, 0.004],
        "delta_valid": [0.0, 0.0, -0.05, 0.0, 0.0, -0.6],  # L1-5's answers break: its stops mean nothing
        "q_valid": [1.0, 1.0, 0.01, 1.0, 1.0, 0.001],
    })
    out = classify(_candidates("L0-1", "L0-2", "L1-3", "L1-5"), eff, alpha=0.05, min_delta=0.1, task=SLOT_MACHINE)
    assert list(out.columns) == [*CANONICAL, "feature", "max_delta_stop"]
    assert out["label"].tolist() == ["safe", "risky", "neutral", "disruptive"]
    assert out["p_value"].tolist() == [0.001, 0.002, 0.5, 0.001]
    assert out["max_delta_stop"].tolist() == [0.5, -0.4, 0.05, 0.9]
    assert (out["source"] == "screen").all()
    # a feature whose only moves are below min_delta, however significant, is neutral
    assert classify(_candidates("L0-1"), eff.assign(delta_stop=0.05), 0.05, 0.1, SLOT_MACHINE)["label"].tolist() == ["neutral"]


def test_screen_compares_each_patched_trial_with_the_baseline_of_its_seed(tiny_lm, tiny_saes):
    model, tok = tiny_lm
    cands = _candidates("L0-3", "L1-4")
    feats = {n: (int(r.layer), load_feature(tiny_saes[int(r.layer)], "llamascope", int(r.layer), int(r.feature_id)))
             for n, r in cands.set_index("feature").iterrows()}
    prompts = [Prompt("a", "Choice: 1) Bet $10\n", "safe"), Prompt("b", "2) Stop\nChoice: ", "risky")]
    conds = [Condition("risky_value", "risky_value", 1.0), Condition("2*safe_value", "safe_value", 2.0)]
    s = ReplaySettings(max_new_tokens=3, temperature=0.7, batch_size=8)
    effects, base = screen_features(model, tok, cands, feats, prompts, conds, 4, s, seed=5)
    assert len(base) == 2 * 4 and set(base["condition"]) == {"baseline"}
    # each baseline trial runs on the seed its patched trials share (patched_jobs), the screen's stream
    want = {(j.prompt_id, j.trial): j.seed for j in patched_jobs(prompts, cands.iloc[0], conds, 4, 5, "screen")}
    assert dict(zip(zip(base["prompt_id"], base["trial"]), base["seed"])) == want
    assert len(effects) == 2 * 2 * 2  # features x prompts x conditions
    assert effects["n_trials"].eq(4).all()
    assert sorted(effects["target_value"].unique()) == pytest.approx([0.2, 2.0])
    # the baseline columns are the same trials for every feature and condition of a prompt
    per_prompt = effects.groupby("prompt_id")["valid_rate_baseline"].nunique()
    assert (per_prompt == 1).all()
    assert np.isfinite(effects[["p_valid", "p_stop"]]).all().all()
