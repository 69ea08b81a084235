"""Simulated players whose transcripts teach the demo model to play the slot-machine game.

Three risk profiles share one visible-state policy shape: the chance to stop rises when the
player is ahead (taking profits) and with the round number, and falls after losses (loss chasing)
and with the goal/mission prompt components; variable bets grow after losses for risky players. The model
sees only the prompt, so it learns the profiles' mixture conditioned on what is visible.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import NamedTuple

from . import game


class Profile(NamedTuple):
    """A player type."""

    name: str
    base: float  # logit of stopping at $100, round 1
    ahead: float  # per $50 above the start (taking profits)
    chase: float  # per consecutive loss (negative: keeps playing)
    bet_frac: float  # variable bets as a share of the balance
    weight: float


PROFILES = (
    Profile("cautious", -1.2, 2.5, 0.2, 0.10, 0.35),
    Profile("moderate", -2.0, 2.0, 0.0, 0.25, 0.40),
    Profile("chaser", -3.0, 1.0, -0.4, 0.55, 0.25),
)


def stop_probability(p: Profile, s: game.GameState) -> float:
    z = p.base + p.ahead * max(0, s.balance - game.START_BALANCE) / 50 + p.chase * s.loss_streak
    z += 0.04 * len(s.history) - 0.3 * ("G" in s.components) - 0.3 * ("M" in s.components)
    return 1 / (1 + math.exp(-z))


def choose(p: Profile, s: game.GameState, rng: random.Random) -> tuple[str, int]:
    """The player's decision: ("stop", 0) or ("bet", amount)."""
    if not s.history and rng.random() < 0.9:  # almost nobody walks away before playing
        pass
    elif rng.random() < stop_probability(p, s):
        return "stop", 0
    if s.betting == "fixed":
        return "bet", game.FIXED_BET
    frac = p.bet_frac * (1 + 0.3 * s.loss_streak) * rng.uniform(0.6, 1.4)
    amount = int(round(frac * s.balance / 5) * 5)
    return "bet", max(game.MIN_BET, min(game.MAX_BET, amount, s.balance))


def invented_line(s: game.GameState, action: str, bet: int, rng: random.Random) -> str:
    """A base model's habit: after answering, it goes on to write the next round itself."""
    if action == "stop" or rng.random() > 0.3:
        return ""
    nxt = game.play_round(s, bet, rng)
    return game.history_line(len(nxt.history), nxt.history[-1]) + "\n"


class Example(NamedTuple):
    """One decision: the prompt, the response text, and the state it came from."""

    prompt: str
    response: str
    state: game.GameState
    action: str
    bet: int


def random_setup(rng: random.Random) -> tuple[str, str]:
    betting = rng.choice(("fixed", "variable"))
    comps = "".join(c for c in "GMRWP" if rng.random() < 0.5)
    return betting, comps


def transcripts(n_games: int, seed: int, max_rounds: int = 40) -> Iterator[Example]:
    """Decisions from n_games simulated games, each by a player drawn from PROFILES."""
    rng = random.Random(seed)
    weights = [p.weight for p in PROFILES]
    for _ in range(n_games):
        prof = rng.choices(PROFILES, weights)[0]
        s = game.new_game(*random_setup(rng))
        while s.balance > 0 and len(s.history) < max_rounds:
            action, bet = choose(prof, s, rng)
            text = game.format_response(action, bet) + invented_line(s, action, bet, rng)
            yield Example(game.render_prompt(s), text, s, action, bet)
            if action == "stop":
                break
            s = game.play_round(s, bet, rng)
