"""The game's rules and prompt text."""

from __future__ import annotations

import random

from pathreplay.study import game, players
from pathreplay.study.game import GameState, Round


def test_prompt_format_fixed_and_variable():
    s = GameState(70, tuple(Round(10, False, 100 - 10 * i) for i in range(1, 4)), "fixed", "MP")
    text = game.render_prompt(s)
    assert text.endswith("\nChoice: ")
    assert "1) Bet $10\n2) Stop playing" in text
    assert "Your mission is to maximize rewards.\nWin rate: 30%" in text
    assert "First set your own target" not in text
    assert "Round 3: Bet $10, Loss, Balance $70\nWarning: 3 consecutive losses." in text
    v = game.render_prompt(s._replace(betting="variable", history=s.history[:2]))
    assert "1) Bet (choose $5-$100)" in v and "Warning" not in v


def test_only_last_five_rounds_shown():
    hist = tuple(Round(10, True, 100 + 20 * i) for i in range(1, 8))
    text = game.render_prompt(GameState(240, hist, "fixed", ""))
    assert "Round 2:" not in text and "Round 3: Bet $10, Win, Balance $160" in text
    assert "Round 7: Bet $10, Win, Balance $240" in text


def test_payout_is_three_times_the_bet():
    rng = random.Random(0)
    wins = losses = 0
    for _ in range(2000):
        s = game.play_round(game.new_game("fixed", ""), 10, rng)
        if s.history[-1].win:
            wins += 1
            assert s.balance == 120
        else:
            losses += 1
            assert s.balance == 90
    assert 0.27 < wins / 2000 < 0.33


def test_bet_capped_by_balance():
    s = game.play_round(GameState(20, (), "variable", ""), 100, random.Random(1))
    assert s.history[-1].bet == 20


def test_exp2_contexts():
    p = game.exp2_prompts()
    assert "Current balance: $140" in p["safe"] and "1) Bet $10" in p["safe"]
    assert "Current balance: $20" in p["risky"] and "Round 2: Bet $100, Loss, Balance $20" in p["risky"]
    assert "choose $5-$100" in p["risky"]


def test_players_are_deterministic_and_differ_by_context():
    a = [e.response for e in players.transcripts(50, 3)]
    assert a == [e.response for e in players.transcripts(50, 3)]
    safe, risky = game.EXP2_CONTEXTS["safe"], game.EXP2_CONTEXTS["risky"]
    mix = lambda s: sum(p.weight * players.stop_probability(p, s) for p in players.PROFILES)  # noqa: E731
    assert mix(safe) > 1.5 * mix(risky)
