"""Decisions against the baseline trials of the same seeds: paired tests by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pathreplay.behaviour.measures import behaviour_effects, mcnemar_p
from pathreplay.study.task import SLOT_MACHINE


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
    row = behaviour_effects(pat, base, SLOT_MACHINE).iloc[0]
    assert row["stop_rate_baseline"] == 0.25 and row["stop_rate"] == 0.0
    assert row["delta_bet"] == pytest.approx(10 / 3)  # pairs that bet both times: 0, +10, 0
    assert row["n_trials"] == 4


def test_invalid_answers_are_never_stops_and_their_share_is_tested_alone():
    nan = float("nan")
    base = pd.DataFrame({"prompt_id": "p", "trial": range(6), "action": ["stop", "bet", "bet", "bet", "bet", "stop"],
                         "bet": [0, 10, nan, 20, 10, 0], "valid": True})
    # the patch breaks four answers (invalid: "none"), one bets without an amount
    pat = base.assign(feature="L0-1", layer=0, feature_id=1, condition="c", context="x", value=1.0,
                      action=["none", "none", "bet", "none", "none", "stop"], bet=[nan, nan, nan, nan, nan, 0],
                      valid=[False, False, True, False, False, True])
    row = behaviour_effects(pat, base, SLOT_MACHINE).iloc[0]
    assert (row["valid_rate_baseline"], row["valid_rate"]) == (1.0, pytest.approx(2 / 6))
    assert row["p_valid"] == pytest.approx(2 * 0.5 ** 4)  # 4 discordant pairs, all one way
    # stop rate among valid answers: 2 of 6 baseline, 1 of 2 patched; the invalid are no stops
    assert (row["stop_rate_baseline"], row["stop_rate"]) == (pytest.approx(2 / 6), 0.5)
    assert row["n_pairs_valid"] == 2 and row["p_stop"] == 1.0  # pairs valid in both: trials 2 and 5
    assert row["mean_bet"] != row["mean_bet"] and row["mean_bet_baseline"] == pytest.approx(40 / 3)  # no known bet
    assert 0 < row["q_valid"] <= 1 and row["stop_rate_lo"] < 0.5 < row["stop_rate_hi"]
