"""Mediation's arithmetic by hand: totals, direct effects, the indirect share, its interval and test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pathreplay.pathways.mediation import EFFECT_COLUMNS, effect, judged, share_interval, to_mediate


def _chain(path="L0-1 -> L1-2 -> L2-3"):
    a, b, c = path.split(" -> ")
    return pd.DataFrame([{"path": path, "scope": "forced", "condition": "up", "hops": 2, "a": a, "mids": b, "c": c,
                          "delta_first": 0.5, "q_first": 0.01, "delta_last": 0.4, "q_last": 0.02}])


def _trials(total, direct, prompts=1):
    n = len(total)
    return pd.DataFrame({"prompt_id": [f"p{i % prompts}" for i in range(n)], "trial": range(n), "total": total,
                         "direct": direct})


def _judged(t):
    return judged(pd.DataFrame([effect(t)]), 0.05, 0.05).iloc[0]


def test_a_chain_found_in_both_scopes_is_mediated_once():
    two = pd.concat([_chain().assign(scope="generated", q_first=0.001), _chain(),
                     _chain("L0-1 -> L1-2 -> L2-9").assign(scope="generated")], ignore_index=True)
    todo = to_mediate(two, 5)
    assert todo["path"].tolist() == ["L0-1 -> L1-2 -> L2-3", "L0-1 -> L1-2 -> L2-9"]  # chains.tsv's order
    assert todo["scope"].tolist() == ["forced", "generated"]  # the forced row of the first chain
    assert len(to_mediate(two, 1)) == 1


def test_effect_by_hand():
    total = np.array([1.0, 1.2, 0.8, 1.0, 1.1, 0.9] * 6)
    direct = 0.1 * total
    out = _judged(_trials(total, direct, prompts=6))
    assert list(out.index) == EFFECT_COLUMNS and out["n_trials"] == 36 and out["n_prompts"] == 6
    assert out["total"] == pytest.approx(1.0) and out["direct"] == pytest.approx(0.1)
    assert out["indirect"] == pytest.approx(0.9) and out["share"] == pytest.approx(0.9)
    assert out["share_lo"] == pytest.approx(0.9) and out["share_hi"] == pytest.approx(0.9)  # direct is 10% of each
    assert out["test"] == "sign_flip_saddlepoint" and out["p_indirect"] == 2.0 ** (1 - 36) and bool(out["mediated"])


def test_no_indirect_effect_is_not_mediated():
    rng = np.random.default_rng(0)
    total = rng.normal(1.0, 0.1, 40)
    out = _judged(_trials(total, total + rng.normal(0, 0.01, 40), prompts=5))
    assert abs(out["share"]) < 0.05 and not bool(out["mediated"])
    assert out["share_lo"] < 0 < out["share_hi"]
    zero = _judged(_trials(total, total, prompts=5))  # B off the path: not one trial's effect passes it
    assert zero["share"] == 0 and np.isnan(zero["p_indirect"]) and not bool(zero["mediated"])


def test_a_small_indirect_effect_is_not_mediated_however_sure():
    total = np.full(30, 0.04)
    out = _judged(_trials(total, 0.0 * total, prompts=3))  # all of it through B, but 0.04 < min_delta
    assert out["share"] == 1 and out["p_indirect"] < 1e-6 and not bool(out["mediated"])


def test_the_interval_resamples_prompts_then_trials():
    rng = np.random.default_rng(1)
    # two prompts whose shares differ: 0.2 and 0.8. Resampling trials alone would treat the 60
    # trials as independent and give a narrow interval; resampling prompts first gives the spread
    # of a two-prompt sample
    total = rng.normal(1.0, 0.05, 60)
    direct = np.where(np.arange(60) % 2 == 0, 0.8, 0.2) * total
    prompts = np.array([f"p{i % 2}" for i in range(60)])
    lo, hi = share_interval(total, direct, prompts)
    lo_t, hi_t = share_interval(total, direct)
    assert hi - lo > 0.5 and hi_t - lo_t < 0.2 and lo_t < 0.5 < hi_t
