"""Exp1: let the model play whole games, then compare SAE features of games that went bankrupt
with games the model stopped, feature by feature (Cohen's d), as the study did.

A game's features are read at the last prompt position of its final decision: the decision that
either stopped the game or made the bet that emptied the balance.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ..errors import fail
from ..features import CANONICAL
from ..runtime.generate import generate, stop_token_ids
from ..runtime.patch import Interventions
from ..sae.exact import SAE
from ..stats.groups import cohen_d, welch_p
from . import game
from .decision import Parser, parse_decision

log = logging.getLogger(__name__)


class Exp1Result(NamedTuple):
    """Per-game outcomes and the final-decision residuals per SAE layer."""

    games: pd.DataFrame
    states: dict[int, torch.Tensor]  # layer -> [games, d_model]


def play_games(model: Any, tok: Any, layers: list[int], *, games: int, max_rounds: int,
               temperature: float, max_new_tokens: int, batch_size: int, seed: int,
               parser: Parser = "first", stop_at_newline: bool = True) -> Exp1Result:
    """Play `games` games in lock-step batches; rounds past max_rounds end as 'unfinished', a
    decision the game cannot act on (no option chosen, a bet of no known amount) as 'invalid'."""
    rng = random.Random(seed)
    setups = [(rng.choice(("fixed", "variable")), "".join(c for c in "GMRWP" if rng.random() < 0.5))
              for _ in range(games)]
    states = [game.new_game(*s) for s in setups]
    dice = [random.Random(seed * 7919 + g) for g in range(games)]
    outcome = ["unfinished"] * games
    invalid = [0] * games
    d_model = model.config.hidden_size
    final = {b: torch.zeros(games, d_model) for b in layers}
    stop_ids = stop_token_ids(tok, "\n" if stop_at_newline else None)
    active = list(range(games))
    bar = tqdm(total=max_rounds, desc="exp1 rounds", mininterval=5, disable=None)
    for rnd in range(max_rounds):
        if not active:
            break
        for i in range(0, len(active), batch_size):
            rows = active[i: i + batch_size]
            iv = Interventions(model, capture=layers)
            gen = generate(model, tok, [game.render_prompt(states[g]) for g in rows],
                           [seed * 1_000_003 + g * 1009 + rnd for g in rows],
                           max_new_tokens=max_new_tokens, temperature=temperature,
                           interventions=iv, stop_ids=stop_ids)
            for b in layers:
                final[b][rows] = iv.captured[b][0][:, -1].float().cpu()
            for g, text in zip(rows, gen.texts):
                s = states[g]
                fixed = game.FIXED_BET if s.betting == "fixed" else None
                d = parse_decision(text, parser, fixed_bet=fixed)
                if not d.valid or math.isnan(d.bet):  # no decision, or a bet of no known amount
                    invalid[g] += 1
                    outcome[g] = "invalid"  # the game cannot go on; neither bankrupt nor stopped
                    continue
                if d.action == "stop":
                    outcome[g] = "stopped"
                    continue
                states[g] = game.play_round(s, int(d.bet), dice[g])
                if states[g].balance <= 0:
                    outcome[g] = "bankrupt"
        active = [g for g in active if outcome[g] == "unfinished"]
        bar.update(1)
    bar.close()
    df = pd.DataFrame({"game": range(games), "betting": [s[0] for s in setups],
                       "components": [s[1] for s in setups], "outcome": outcome,
                       "rounds": [len(s.history) for s in states],
                       "final_balance": [s.balance for s in states], "invalid_decisions": invalid})
    return Exp1Result(df, final)


def feature_table(result: Exp1Result, load_sae: Callable[[int], SAE], source: str = "exp1") -> pd.DataFrame:
    """Cohen's d (bankrupt minus stopped) per feature, in the canonical feature-table format.

    SAEs are loaded one layer at a time through `load_sae`, so a 32-layer suite never has to fit
    in memory at once."""
    bank = (result.games["outcome"] == "bankrupt").to_numpy()
    stop = (result.games["outcome"] == "stopped").to_numpy()
    if bank.sum() < 2 or stop.sum() < 2:
        fail("exp1.games", f"Cohen's d needs >= 2 bankrupt and >= 2 stopped games; the games gave "
             f"{bank.sum()} and {stop.sum()}", "raise exp1.games or exp1.max_rounds")
    parts = []
    for layer in sorted(result.states):
        sae = load_sae(layer)
        f = sae.encode(result.states[layer].to(sae.W.device)).cpu().numpy().astype(np.float64)
        a, b = f[bank], f[stop]
        d = cohen_d(a, b)
        parts.append(pd.DataFrame({
            "layer": layer, "feature_id": np.arange(f.shape[1]), "cohen_d": d, "p_value": welch_p(a, b),
            "safe_value": b.mean(0), "risky_value": a.mean(0),
            "label": np.where(d > 0, "risky", "safe"), "source": source}))
    out = pd.concat(parts, ignore_index=True)
    out = out[np.isfinite(out["cohen_d"])].reset_index(drop=True)
    return out[list(CANONICAL)]
