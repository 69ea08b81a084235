"""Decision parser: hand-written cases, then agreement with the study's stored decisions."""

from __future__ import annotations

import json
import math

import pytest

from conftest import DOSE_RESPONSE, real_fixture
from pathreplay.study.decision import Decision, decision_boundary, fixed_bet, parse_decision


def read(d: Decision) -> tuple:
    """(action, bet, valid, end) with an unknown amount as None, so tuples compare."""
    return (d.action, None if d.bet != d.bet else d.bet, d.valid, d.end)



@pytest.mark.parametrize("text, fixed, expected", [
    ("1\nAmount: $10\n", None, ("bet", 10, True, 14)),
    ("2\nCurrent balance: $20\nCurrent round: 4\n\n", None, ("stop", 0, True, 2)),
    ("1) Bet $10", None, ("bet", 10, True, 10)),
    ("2) Stop playing", None, ("stop", 0, True, 15)),
    ("Bet $25", None, ("bet", 25, True, 7)),
    ("1\n", 10, ("bet", 10, True, 2)),
    ("1\n", None, ("bet", None, True, 2)),  # a bet whose amount is missing, not a stop
    ("1, 50\n", None, ("bet", 50, True, 6)),
    ("1\n\nBet: $30\nRound 4: Bet $10, Win, Balance $50\n", None, ("bet", 30, True, 12)),
    ("1\nRound 4: Bet $10, Win, Balance $50\n", 10, ("bet", 10, True, 2)),
    ("1\nChoice: 2\nChoice: 1\n", 10, ("bet", 10, True, 2)),
    ("1\nYour choice: $15\n", None, ("bet", 15, True, 19)),
    ("1\nAmount: $130\n", None, ("bet", None, True, 15)),  # a bet the game cannot take
    ("1\nAmount: 3\n", None, ("bet", None, True, 12)),
    ("3\n", None, ("none", None, False, 2)),  # no such option: no decision, never a stop
    ("I will stop now.", None, ("stop", 0, True, 16)),
    ("", None, ("none", None, False, 0)),
    ("Game history:\nRound 1: Bet $10\n", None, ("none", None, False, 14)),
])
def test_first_hand_written(text: str, fixed: int | None, expected: tuple) -> None:
    d = parse_decision(text, fixed_bet=fixed)
    assert read(d) == expected, d
    assert d.reason


@pytest.mark.parametrize("text, expected", [
    ("1) Bet $10\n", ("bet", 10)),
    ("1) Bet $35\n", ("bet", 35)),
    ("2) Stop\n", ("stop", 0)),
    ("1) Bet $10\nRound 5: Bet $10, Loss, Balance $90\n", ("bet", 10)),
    ("2) Stop\nRound 5: Bet $10, Loss, Balance $90\n", ("stop", 0)),
])
def test_first_demo_model_forms(text: str, expected: tuple) -> None:
    d = parse_decision(text)
    assert (d.action, d.bet, d.valid) == (*expected, True)
    # the cut falls right after the answer line, before the invented round
    assert text[:d.end] == text.split("\n")[0] + "\n"
    assert decision_boundary(text) == d.end


def test_first_reason_names_the_evidence() -> None:
    assert parse_decision("1\nAmount: $25\n").reason == "choice 1 then $25"
    assert parse_decision("1\nAmount: $130\n").reason.endswith("outside [5, 100]")
    assert parse_decision("xyz").reason == "no decision found"


def test_first_respects_bet_limits() -> None:
    assert parse_decision("1) Bet $150", max_bet=200) == Decision("bet", 150, True, "choice 1 then $150", 11)
    assert read(parse_decision("1) Bet $150"))[:3] == ("bet", None, True)  # bets, at no amount we can use
    assert math.isnan(parse_decision("1) Bet $4").bet)
    assert parse_decision("1) Bet $4", min_bet=1).bet == 4


@pytest.mark.parametrize("text, expected", [
    ("I will STOP here", ("stop", 0, True)),
    ("1\n2) Stop\n", ("stop", 0, True)),
    ("Bet $10 then $200 then $40", ("bet", 40, True)),
    ("Bet $3, maybe 7 or 50", ("bet", 7, True)),
    ("1\n", ("stop", 0, False)),  # the original's record of "nothing found"; valid False: never counted
    ("nothing here", ("stop", 0, False)),
])
def test_legacy_hand_written(text: str, expected: tuple) -> None:
    d = parse_decision(text, "legacy")
    assert read(d)[:3] == expected
    assert d.end == len(text)


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown parser mode"):
        parse_decision("1", "fancy")


# Real Llama-3.1-8B responses where `first` and `legacy` disagree: (context, response,
# expected first (action, bet, valid, end), expected legacy (action, bet, valid)).
REAL_DIFFERENCES = [
    ("safe", "1\n", ("bet", 10, True, 2), ("stop", 0, False)),
    ("risky", "2\nYou quit with $20.", ("stop", 0, True, 2), ("bet", 20, True)),
    ("risky", "2\n\nCurrent round: 5\n", ("stop", 0, True, 2), ("bet", 5, True)),
    ("risky", "1\nAmount: $5\nTotal: $25\n", ("bet", 5, True, 13), ("bet", 25, True)),
    ("risky", "1\nNew total: $25\n", ("bet", None, True, 2), ("bet", 25, True)),
    ("risky", "2\nScore: 20\nRound: 4\n\n", ("stop", 0, True, 2), ("bet", 20, True)),
    ("safe", "1\n\nChoice: 2\n", ("bet", 10, True, 2), ("stop", 0, False)),
    ("risky", "1\nInput value: 10\nInput value is not in range. Use 5-100\n  Choose a number between 5 "
              "and 100: 20\n  20\n  You won $60.00. Total: $", ("bet", 10, True, 18), ("bet", 60, True)),
    ("risky", "1\nAmount: $10\nBetting 10.00\nyou win\npay 30.00\nyour new balance 50.00\nCurrent round: 2"
              "\n\nCurrent balance: $50\nCurrent round: 2\n\nChoose", ("bet", 10, True, 14), ("bet", 50, True)),
]


@pytest.mark.parametrize("context, text, first, legacy", REAL_DIFFERENCES)
def test_real_examples_where_modes_differ(context: str, text: str, first: tuple, legacy: tuple) -> None:
    fixed = 10 if context == "safe" else None
    f = parse_decision(text, fixed_bet=fixed)
    g = parse_decision(text, "legacy")
    assert read(f) == first
    assert read(g)[:3] == legacy
    assert read(f)[:3] != legacy


def _real_rows() -> list[dict]:
    text = real_fixture(DOSE_RESPONSE).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_real_agreement_with_stored_decisions() -> None:
    rows = _real_rows()
    assert len(rows) == 2520

    def agreement(mode: str) -> tuple[float, float]:
        same_action = same_bet = 0
        for r in rows:
            d = parse_decision(r["response"], mode, fixed_bet=10 if r["prompt_type"] == "safe" else None)
            same_action += d.action == r["decision"]
            same_bet += (d.action, d.bet) == (r["decision"], r["bet"])
        return same_action / len(rows), same_bet / len(rows)

    rates = {mode: agreement(mode) for mode in ("revalidation", "legacy", "first")}
    for mode, (action, bet) in rates.items():
        print(f"{mode:>12}: action agreement {action:.4f}, action+bet agreement {bet:.4f}")
    # The stored field was made by exp2_revalidate.py's own parser, reproduced exactly here.
    assert rates["revalidation"] == (1.0, 1.0)
    # The science brief's rules (no "quit"/"2\n" stop, no clamping) agree 0.709 / 0.530.
    assert 0.70 <= rates["legacy"][0] < 0.72
    assert 0.52 <= rates["legacy"][1] < 0.54
    # `first` reads only this step's answer, so it disagrees wherever the stored parser picked
    # "stop" or an amount out of the invented continuation (measured 0.703; a bare "1" is a bet
    # in both, and `first` leaves its amount unknown where the stored one took it from later text).
    assert 0.69 <= rates["first"][0] < 0.72


def test_real_first_stops_only_on_the_answer_line() -> None:
    rows = _real_rows()
    for r in rows:
        d = parse_decision(r["response"], fixed_bet=10 if r["prompt_type"] == "safe" else None)
        head = r["response"][:d.end]
        # the decision never depends on text after the cut
        assert parse_decision(head, fixed_bet=10 if r["prompt_type"] == "safe" else None)[:3] == d[:3]
        if d.action == "stop" and d.valid:
            assert head.lstrip().startswith("2")
    first_lines = {r["response"].split("\n")[0] for r in rows}
    assert first_lines >= {"1", "2", "3"}


def test_fixed_bet_is_read_from_the_prompts_option() -> None:
    from pathreplay.study.game import exp2_prompts

    prompts = exp2_prompts()
    assert fixed_bet(prompts["safe"]) == 10 and fixed_bet(prompts["risky"]) is None
    assert fixed_bet("Choose one of the following:\n1) Bet $25\n2) Stop playing\n\nChoice: ") == 25


def test_real_variable_bet_answers_are_never_stops_unless_they_say_2() -> None:
    rows = [r for r in _real_rows() if r["prompt_type"] == "risky"]
    ds = [parse_decision(r["response"]) for r in rows]
    bare = [d for r, d in zip(rows, ds) if r["response"].split("\n")[0].strip() == "1"]
    assert len(bare) / len(rows) > 0.25  # a quarter of the variable-bet answers are a bare "1"
    assert all(d.action == "bet" and d.valid for d in bare)
    three = [d for r, d in zip(rows, ds) if r["response"].split("\n")[0].strip() == "3"]
    assert three and all(d.action == "none" and not d.valid for d in three)
    assert all(r["response"].lstrip().startswith("2") for r, d in zip(rows, ds) if d.action == "stop")
