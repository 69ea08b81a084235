"""Parse the slot-machine decision out of a generated response.

The prompt ends with ``Choice: ``; a base model answers with its choice on the first line
("1", "2", "1) Bet $10", "1, 50"), sometimes the amount on the next line ("Amount: $10"),
and then often goes on to invent the rest of the game (outcomes, balances, later rounds,
new ``Choice:`` prompts). Three modes:

- ``first`` (default): only this step's answer decides: the first line, plus the next
  non-empty line when it states the amount. ``end`` is where that answer ends; everything
  after it is text the model invented. Option 1 is a bet even when no amount follows (the
  amount is then NaN: in a variable-bet prompt a bare "1" is a real answer, about a quarter of
  Llama-3.1-8B's), and an amount outside the allowed range leaves the bet's amount NaN; an
  answer that names no option (nothing parseable, or "3") is no decision at all: action
  ``none``, never a stop.
- ``legacy``: the original study's rules (science brief, section 1), read anywhere in the text,
  with its record for a response where they find nothing: "stop" with ``valid`` false (the
  original counted those as stops, a bare "2" among them; here no invalid decision is counted).
- ``revalidation``: the parser of the original ``exp2_revalidate.py``, which made the stored
  ``decision`` / ``bet`` / ``source`` fields of ``exp2_revalidation_trials.jsonl`` (it also
  stops on "quit" and "2\\n" and clamps amounts into range instead of rejecting them).
"""

from __future__ import annotations

import re
from typing import Literal, NamedTuple, get_args

Parser = Literal["first", "legacy", "revalidation"]
MODES = get_args(Parser)


Action = Literal["bet", "stop", "none"]
NAN = float("nan")


class Decision(NamedTuple):
    """A parsed game decision: `valid` when the response chose an option (bet or stop)."""

    action: Action  # "none": the response chose no option
    bet: float  # amount bet; 0 for stop; NaN when unknown (no or an impossible amount, no decision)
    valid: bool
    reason: str
    end: int  # offset where this step's decision ends (the cut); len(text) for legacy modes


_NUM = r"(\d+(?:\.\d+)?)"
_FIXED = re.compile(r"1\)\s*Bet \$(\d+)\s*$", re.M)  # the fixed-betting option of a prompt
# The choice line: an optional echo of the prompt label, then the option number.
_CHOICE = re.compile(r"[ \t]*(?:(?:your\s+)?choice\s*[:=]\s*)?(\$)?[ \t]*(\d+)(?![\d.]\d)", re.I)
# An amount given right after the option on the same line: "1) Bet $10", "1, 50", "1 - $20".
_SAME_LINE_AMOUNT = re.compile(rf"\s*[).:,\-]?\s*(?:bet\b\s*[:=]?)?\s*(\$)?\s*{_NUM}(?!\s*%)", re.I)
# A line that only states the amount: "Amount: $10", "Bet: 50", "Bet $25", "Your bet: $5",
# "Value: 100", "Input value: 10" (not "Number: 2": the model drawing slot numbers). "Your choice: $10" counts only with a `$`,
# since "Your choice: 1" is the model re-prompting itself.
_AMOUNT_LINE = re.compile(
    rf"\s*(?:(?:your|my)\s+)?"
    rf"(?:(?:bet(?:ting)?(?:\s+amount)?|amount|wager|value|input(?:\s+value)?)\s*[:=]?\s*(\$)?"
    rf"|choice\s*[:=]\s*(\$))"
    rf"\s*{_NUM}\s*(?:dollars?)?\s*[.!]?\s*$",
    re.I,
)
_BARE_DOLLAR_LINE = re.compile(rf"\s*\$\s*{_NUM}\s*[.!]?\s*$")
# A first line in words: "Bet $25", "I will bet $20", "Stop", "I choose to stop".
_WORD_DECISION = re.compile(
    r"\s*(?:i\s*(?:will|'ll|would\s+like\s+to|want\s+to|choose\s+to|decide\s+to)?\s+)?"
    rf"(bet|stop|quit)\b(?:\s*[:=]?\s*(\$)?\s*{_NUM})?",
    re.I,
)


def _line_end(text: str, start: int) -> int:
    """Offset just past the line starting at `start` (its newline included)."""
    nl = text.find("\n", start)
    return len(text) if nl < 0 else nl + 1


def _skip_blank(text: str, pos: int) -> int:
    """Offset of the first non-blank line at or after `pos` (len(text) if none)."""
    while pos < len(text):
        end = _line_end(text, pos)
        if text[pos:end].strip():
            return pos
        pos = end
    return len(text)


def _whole(amount: str) -> int | None:
    value = float(amount)
    return int(value) if value.is_integer() else None


def _bet(amount: str, why: str, end: int, min_bet: int, max_bet: int) -> Decision:
    """A bet; an amount the game cannot take leaves the action (a bet) and drops the amount."""
    value = _whole(amount)
    if value is None:
        return Decision("bet", NAN, True, f"{why}: amount ${amount} is not whole dollars", end)
    if not min_bet <= value <= max_bet:
        return Decision("bet", NAN, True, f"{why}: amount ${value} outside [{min_bet}, {max_bet}]", end)
    return Decision("bet", value, True, f"{why} ${value}", end)


def _no_amount(why: str, end: int, fixed_bet: int | None) -> Decision:
    if fixed_bet is None:
        return Decision("bet", NAN, True, f"{why} without an amount", end)
    return Decision("bet", fixed_bet, True, f"{why}, fixed bet ${fixed_bet}", end)


def _none(why: str, end: int) -> Decision:
    return Decision("none", NAN, False, why, end)


def _amount_line(text: str, pos: int) -> tuple[str, int] | None:
    """The amount stated by the next non-empty line, and where that line ends."""
    start = _skip_blank(text, pos)
    end = _line_end(text, start)
    line = text[start:end].rstrip("\n")
    m = _AMOUNT_LINE.match(line) or _BARE_DOLLAR_LINE.match(line)
    return (m.group(m.lastindex or 1), end) if m else None


def _parse_first(text: str, fixed_bet: int | None, min_bet: int, max_bet: int) -> Decision:
    start = _skip_blank(text, 0)
    if start == len(text):
        return _none("empty response", len(text))
    line_end = _line_end(text, start)
    line = text[start:line_end].rstrip("\n")

    m = _CHOICE.match(line)
    if m:
        if m.group(1):  # "$25" as the whole answer
            return _bet(m.group(2), "amount", line_end, min_bet, max_bet)
        choice = int(m.group(2))
        if choice == 2:
            return Decision("stop", 0, True, "choice 2", line_end)
        if choice != 1:
            return _none(f"choice {choice} is not an option", line_end)
        same = _SAME_LINE_AMOUNT.match(line, m.end())
        if same:
            return _bet(same.group(2), "choice 1 then", line_end, min_bet, max_bet)
        nxt = _amount_line(text, line_end)
        if nxt:
            return _bet(nxt[0], "choice 1 then", nxt[1], min_bet, max_bet)
        return _no_amount("choice 1", line_end, fixed_bet)

    w = _WORD_DECISION.match(line)
    if w:
        if w.group(1).lower() != "bet":
            return Decision("stop", 0, True, "stop word", line_end)
        if w.group(3):
            return _bet(w.group(3), "bet", line_end, min_bet, max_bet)
        nxt = _amount_line(text, line_end)
        if nxt:
            return _bet(nxt[0], "bet then", nxt[1], min_bet, max_bet)
        return _no_amount("bet", line_end, fixed_bet)
    return _none("no decision found", line_end)


def _parse_legacy(text: str, min_bet: int, max_bet: int) -> Decision:
    n = len(text)
    if "stop" in text.lower():
        return Decision("stop", 0, True, "stop word", n)
    if "2)" in text:
        return Decision("stop", 0, True, "'2)'", n)
    dollars = [int(x) for x in re.findall(r"\$(\d+)", text) if min_bet <= int(x) <= max_bet]
    if dollars:
        return Decision("bet", dollars[-1], True, f"last ${dollars[-1]}", n)
    numbers = [int(x) for x in re.findall(r"\b(\d+)\b", text) if min_bet <= int(x) <= max_bet]
    if numbers:
        return Decision("bet", numbers[0], True, f"first number {numbers[0]}", n)
    return Decision("stop", 0, False, "no decision found", n)  # the original's record; never counted


def _parse_revalidation(text: str, min_bet: int, max_bet: int) -> Decision:
    n = len(text)
    if any(s in text.lower() for s in ("stop", "quit", "2)", "2\n")):
        return Decision("stop", 0, True, "stop", n)
    dollars = re.findall(r"\$(\d+)", text)
    numbers = re.findall(r"\b(\d+)\b", text)
    if dollars:
        bet, source, valid = int(dollars[-1]), "dollar", True
    elif numbers:
        bet, source, valid = int(numbers[0]), "number", True
    else:
        bet, source, valid = 10, "default", False
    return Decision("bet", min(max(bet, min_bet), max_bet), valid, source, n)


def fixed_bet(prompt: str) -> int | None:
    """The bet of a fixed-betting prompt ("1) Bet $10"); None for variable betting."""
    m = _FIXED.search(prompt)
    return int(m.group(1)) if m else None


def parse_decision(text: str, mode: Parser = "first", *, fixed_bet: int | None = None,
                   min_bet: int = 5, max_bet: int = 100) -> Decision:
    """Parse one response; `fixed_bet` fills in the amount of a bare choice 1 (`first` only)."""
    if mode == "first":
        return _parse_first(text, fixed_bet, min_bet, max_bet)
    if mode == "legacy":
        return _parse_legacy(text, min_bet, max_bet)
    if mode == "revalidation":
        return _parse_revalidation(text, min_bet, max_bet)
    raise ValueError(f"unknown parser mode {mode!r}; expected one of {', '.join(MODES)}")


def decision_boundary(text: str) -> int:
    """Offset where this step's answer ends and invented text begins (the `first` cut)."""
    return _parse_first(text, None, 5, 100).end
