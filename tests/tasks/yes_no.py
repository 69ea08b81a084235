"""A second task, whole in one file: a yes/no choice. It proves that a study plugs into the
workflow through pathreplay.task alone (`task: tests/tasks/yes_no.py` in a config), with its own
prompts (yes_no_prompts.jsonl) and parser; tests/test_tasks.py runs the whole DAG with it.

A response answers on its first non-blank line: option 1 or "yes" is yes, option 2 or "no" is no,
anything else chooses nothing (invalid). Its one measure is the share of yes among valid answers."""

from __future__ import annotations

import re

from pathreplay.task import Answer, Rate, Task

_LINE = re.compile(r"\s*(?:(?:your\s+)?(?:choice|answer)\s*[:=]\s*)?(?:([12])(?!\d)|(yes|no)\b)", re.I)


def parse(text: str, prompt: str, parser: str) -> Answer:
    """The first non-blank line's choice; the answer ends with that line."""
    start = len(text) - len(text.lstrip())
    nl = text.find("\n", start)
    end = len(text) if nl < 0 else nl + 1
    m = _LINE.match(text[start:end])
    if not m:
        return Answer("none", float("nan"), False, "no yes or no found", end)
    yes = m.group(1) == "1" or (m.group(2) or "").lower() == "yes"
    return Answer("yes" if yes else "no", float("nan"), True, f"answered {m.group(0).strip()!r}", end)


TASK = Task("yes_no", parse, ("first",), (Rate("yes", "yes"),), ("yes", "no"))
