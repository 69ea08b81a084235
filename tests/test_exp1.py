"""Exp1: games played to the end, then Cohen's d per feature between bankrupt and stopped games."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import DEMO, identity_sae
from pathreplay.errors import UserError
from pathreplay.features import CANONICAL
from pathreplay.runtime.model import load_model
from pathreplay.stats.groups import cohen_d
from pathreplay.study.exp1 import Exp1Result, feature_table, play_games


def test_feature_table_by_hand():
    games = pd.DataFrame({"outcome": ["bankrupt", "bankrupt", "stopped", "stopped", "stopped", "unfinished"]})
    x = torch.tensor([[3.0, 0.0, 0.0], [5.0, 1.0, 0.0], [1.0, 2.0, 0.0], [1.0, 0.0, 0.0], [4.0, 1.0, 0.0],
                      [9.0, 9.0, 9.0]])  # the unfinished game counts nowhere
    out = feature_table(Exp1Result(games, {2: x}), lambda layer: identity_sae(3))
    assert list(out.columns) == list(CANONICAL)
    # feature 2 is 0 in every finished game: no d, no row
    assert out["feature_id"].tolist() == [0, 1] and (out["layer"] == 2).all()
    f = x[:5].numpy().astype(float)
    assert out["cohen_d"].tolist() == pytest.approx(cohen_d(f[:2, :2], f[2:5, :2]).tolist())
    assert out["risky_value"].tolist() == pytest.approx([4.0, 0.5])
    assert out["safe_value"].tolist() == pytest.approx([2.0, 1.0])
    assert out["label"].tolist() == ["risky", "safe"]  # d > 0: higher in bankrupt games
    assert out["source"].eq("exp1").all() and (out["p_value"] > 0).all()


def test_too_few_finished_games_refused():
    games = pd.DataFrame({"outcome": ["bankrupt", "stopped", "stopped"]})
    with pytest.raises(UserError, match=r"exp1.games: .* 1 and 2; raise exp1.games"):
        feature_table(Exp1Result(games, {0: torch.zeros(3, 2)}), lambda layer: identity_sae(2))


def test_games_are_played_by_the_rules():
    model, tok = load_model(str(DEMO / "model"), "float32", "cpu")
    rules = dict(games=8, max_rounds=3, temperature=1.0, max_new_tokens=12, seed=1)
    res = play_games(model, tok, [0, 2], **rules, batch_size=8)
    g = res.games
    assert len(g) == 8 and set(g["outcome"]) <= {"bankrupt", "stopped", "unfinished", "invalid"}
    assert g["rounds"].between(0, 3).all() and (g["rounds"] > 0).any() and set(g["betting"]) <= {"fixed", "variable"}
    assert (g.loc[g["outcome"] == "bankrupt", "final_balance"] <= 0).all()
    assert (g.loc[g["outcome"] == "unfinished", "rounds"] == 3).all()  # the demo model plays by the rules
    assert set(res.states) == {0, 2} and res.states[0].shape == (8, model.config.hidden_size)
    again = play_games(model, tok, [0, 2], **rules, batch_size=3)
    pd.testing.assert_frame_equal(again.games, g)  # the batch layout changes nothing
    assert np.allclose(again.states[2].numpy(), res.states[2].numpy(), atol=1e-4)
