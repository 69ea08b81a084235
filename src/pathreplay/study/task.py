"""The slot-machine study as a task (pathreplay.task): its answers read by study.decision (a
fixed-betting prompt's option fills in a bare "1"'s amount), judged on the stop rate among valid
answers and the mean bet; a feature whose patch raises the stop rate with the dose is `safe`."""

from __future__ import annotations

from ..task import Answer, Mean, Rate, Task
from .decision import MODES, fixed_bet, parse_decision


def parse(text: str, prompt: str, parser: str) -> Answer:
    """One response to `prompt` read with the named parser (study.decision's modes)."""
    return Answer(*parse_decision(text, parser, fixed_bet=fixed_bet(prompt)))  # type: ignore[arg-type]


SLOT_MACHINE = Task("slot_machine", parse, MODES, (Rate("stop", "stop"), Mean("bet", "bet")), ("safe", "risky"),
                    amount="bet", exp1=True)
