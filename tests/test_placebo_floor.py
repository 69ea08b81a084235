"""The placebo floor: each calibration split's smallest p among its big enough tests, and the
floor a claim's p must be under, against values worked by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pathreplay.effects.placebo import CALIBRATION, CHECK, placebo_floors, split_minima, split_pairs
from pathreplay.pathways.checks import placebo_summary


def _frame(split, scope, delta, p, pp=None):
    n = len(delta)
    return pd.DataFrame({"prompt_set": 0, "split": split, "scope": scope, "target_layer": 1,
                         "target_feature": np.arange(n), "delta": delta, "p_value": p,
                         "p_prompts": p if pp is None else pp})


def test_split_minima_by_hand():
    layer1 = pd.concat([_frame(0, "generated", [0.1, 0.01, -0.2], [0.3, 0.001, 0.04]),
                        _frame(1, "generated", [0.01, -0.02], [0.002, 0.5])])
    layer2 = _frame(0, "generated", [0.06, 0.3], [0.02, np.nan], pp=[0.5, 0.01])
    m = split_minima([layer1, layer2], min_delta=0.05).set_index(["split", "scope", "level"])
    # split 0: |delta| > 0.05 keeps p 0.3, 0.04 (layer 1) and 0.02 (layer 2); 0.001 is too small a change
    assert m.loc[(0, "generated", "trials"), "min_p"] == 0.02 and m.loc[(0, "generated", "trials"), "tests"] == 4
    # prompts: 0.3, 0.04, 0.5, 0.01 (the NaN trial p does not hide a prompt p)
    assert m.loc[(0, "generated", "prompts"), "min_p"] == 0.01 and m.loc[(0, "generated", "prompts"), "tests"] == 5
    assert m.loc[(1, "generated", "trials"), "min_p"] == 1.0  # no change big enough: no claim possible
    assert split_minima([], 0.05).empty


def test_floor_is_the_order_statistic_that_leaves_fwer_of_the_splits():
    mins = [0.5, 0.01, 0.2, 0.003, 0.9, 0.04, 0.3, 0.07, 0.6, 0.02]
    m = pd.DataFrame({"split": range(10), "scope": "generated", "level": "trials", "tests": 5, "min_p": mins})
    f = placebo_floors(m, 10, 0.2).iloc[0]
    # j = floor(0.2 * 10) = 2: the third smallest, 0.02; p < 0.02 is reached by 2 of 10 splits
    assert f["floor"] == 0.02 and f["rank"] == 3 and sum(x < f["floor"] for x in mins) == 2
    f = placebo_floors(m, 12, 0.2).iloc[0]  # 2 splits made no test there: minimum 1
    assert f["floor"] == 0.02 and f["min_p_median"] == np.median(sorted(mins) + [1.0, 1.0])
    assert placebo_floors(m, 10, 0.05).iloc[0]["floor"] == 0.003  # j = 0: the smallest
    none = m.assign(scope="prompt_last", tests=0)  # nothing varies: no floor
    assert placebo_floors(none, 10, 0.2).empty


def test_calibration_and_check_splits_are_different_draws():
    t = pd.DataFrame({"prompt_id": "p", "condition": ["baseline"] * 8 + ["placebo"] * 8,
                      "trial": list(range(8)) * 2, "part": "baseline/p", "row": range(16)})
    a, b = (split_pairs(t, ["p"], 0, 3, label) for label in (CHECK, CALIBRATION))
    assert a.treated != b.treated and split_pairs(t, ["p"], 0, 3).treated == a.treated
    assert sorted(a.treated + a.control) == sorted(b.treated + b.control)  # the same 16 trials, split otherwise


def test_the_check_counts_only_what_a_claim_would_be():
    study = pd.concat([_frame(0, "generated", [0.2, 0.2], [0.004, 0.03]),
                       _frame(1, "generated", [0.2, 0.01], [0.0005, 0.0001]),
                       _frame(2, "generated", [0.2], [0.2])])
    cutoffs = {"trials": 0.035, "prompts": 0.0}
    free = placebo_summary(study, cutoffs, 0.05, 0.05, 1).set_index("level").loc["trials"]
    held = placebo_summary(study, cutoffs, 0.05, 0.05, 1, {("generated", "trials"): 0.001}).set_index("level")
    assert free["splits_with_discoveries"] == 2 and np.isnan(free["floor"])
    # under the floor only split 1's 0.0005 is a claim (its 0.0001 moved too little)
    assert held.loc["trials", "splits_with_discoveries"] == 1 and held.loc["trials", "floor"] == 0.001
    assert held.loc["prompts", "splits_with_discoveries"] == 0 and np.isnan(held.loc["prompts", "floor"])
