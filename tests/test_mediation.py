"""Mediation's arithmetic by hand: totals, direct effects, the indirect share and its test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pathreplay.pathways.mediation import PATH_COLUMNS, share_interval, summarise, to_mediate


def _chain(path="L0-1 -> L1-2 -> L2-3"):
    a, b, c = path.split(" -> ")
    return pd.DataFrame([{"path": path, "scope": "forced", "condition": "up", "a": a, "b": b, "c": c,
                          "delta_ab": 0.5, "q_ab": 0.01, "delta_bc": 0.4, "q_bc": 0.02}])


def _trials(total, direct, path="L0-1 -> L1-2 -> L2-3"):
    a, b, c = path.split(" -> ")
    n = len(total)
    return pd.DataFrame({"a": a, "b": b, "c": c, "condition": "up", "prompt_id": "p", "trial": range(n),
                         "total": total, "direct": direct})


def test_a_chain_found_in_both_scopes_is_mediated_once():
    two = pd.concat([_chain().assign(scope="generated", q_ab=0.001), _chain(),
                     _chain("L0-1 -> L1-2 -> L2-9").assign(scope="generated")], ignore_index=True)
    todo = to_mediate(two, 5)
    assert todo["path"].tolist() == ["L0-1 -> L1-2 -> L2-3", "L0-1 -> L1-2 -> L2-9"]  # chains.tsv's order
    assert todo["scope"].tolist() == ["forced", "generated"]  # the forced row of the first chain
    assert len(to_mediate(two, 1)) == 1


def test_summary_by_hand():
    total = np.array([1.0, 1.2, 0.8, 1.0, 1.1, 0.9] * 6)
    direct = 0.1 * total
    out = summarise(_chain(), _trials(total, direct), alpha=0.05, min_delta=0.05).iloc[0]
    assert list(out.index) == PATH_COLUMNS and out["n_trials"] == 36
    assert out["total"] == pytest.approx(1.0) and out["direct"] == pytest.approx(0.1)
    assert out["indirect"] == pytest.approx(0.9) and out["indirect_share"] == pytest.approx(0.9)
    assert out["share_lo"] == pytest.approx(0.9) and out["share_hi"] == pytest.approx(0.9)  # direct is 10% of each
    assert out["test"] == "sign_flip_saddlepoint" and out["p_indirect"] == 2.0 ** (1 - 36) and bool(out["mediated"])


def test_no_indirect_effect_is_not_mediated():
    rng = np.random.default_rng(0)
    total = rng.normal(1.0, 0.1, 40)
    out = summarise(_chain(), _trials(total, total + rng.normal(0, 0.01, 40)), 0.05, 0.05).iloc[0]
    assert abs(out["indirect_share"]) < 0.05 and not bool(out["mediated"])
    assert out["share_lo"] < 0 < out["share_hi"]


def test_share_interval_covers_the_share():
    rng = np.random.default_rng(1)
    total = rng.normal(1.0, 0.3, 60)
    direct = 0.5 * total + rng.normal(0, 0.1, 60)
    lo, hi = share_interval(total, direct)
    assert lo < 1 - direct.mean() / total.mean() < hi and hi - lo < 0.3
