"""Decisions against the baseline trials of the same seeds: paired tests by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pathreplay.behaviour import behaviour_effects, mcnemar_p


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
