"""The task seam: what a study supplies, and nothing else does.

Everything from the replay to the pathways is generic; a study (a task) supplies its prompts (a
JSONL file, `prompts.file`), how a response is read (`parse`: an option of the task, or `none`
when it chose no option) and which behaviour measures its trials are judged on (`measures`,
tested paired against the baseline trials of the same seeds by behaviour.measures). A task is a
`Task` bound to the name `TASK` in one module, selected by the config key `task`: the name of an
installed task (entry point group `pathreplay.tasks`; this package installs `slot_machine`), a
Python file, or a module path. tests/tasks/yes_no.py is a whole task in one file.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import NamedTuple

from .errors import fail, first_line

GROUP = "pathreplay.tasks"


class Answer(NamedTuple):
    """What one response chose: `valid` when it chose one of the task's options."""

    action: str  # an option of the task, or "none": no option chosen (never counted as one)
    amount: float  # the answer's amount (a bet's dollars); NaN: none, or not known
    valid: bool
    reason: str
    end: int  # where this step's answer ends in the text: what follows is the model's own invention


class Rate(NamedTuple):
    """A measure: the share of valid answers that choose `action`, tested by McNemar's exact test
    on the pairs valid in both arms. Columns `{name}_rate`, `delta_{name}`, `p_{name}`, `q_{name}`."""

    name: str
    action: str


class Mean(NamedTuple):
    """A measure: the mean amount of the answers choosing `action` with a known amount, tested by
    Wilcoxon's signed-rank test on the pairs known in both arms. Columns `mean_{name}`,
    `delta_{name}`, `p_{name}`, `q_{name}`."""

    name: str
    action: str


Measure = Rate | Mean


class Task(NamedTuple):
    """A study's prompts' reading and its behaviour measures.

    `parse(text, prompt, parser)` reads one response to `prompt` with the parser named `parser`
    (one of `parsers`, the first the default; config key `parser`). `amount` names the trial
    table's column for an answer's amount (None: answers have none; a `Mean` needs one). The
    first `Rate` of `measures` is the screen's verdict: a feature whose patch raises it with the
    dose is `labels[0]`, one that lowers it `labels[1]`. `exp1`: the task can play the games
    that make a feature table (rule exp1); without it, `features.table` is required."""

    name: str
    parse: Callable[[str, str, str], Answer]
    parsers: tuple[str, ...]
    measures: tuple[Measure, ...]
    labels: tuple[str, str]
    amount: str | None = None
    exp1: bool = False

    @property
    def primary(self) -> Rate:
        """The first Rate measure: what the screen judges a feature by."""
        return next(m for m in self.measures if isinstance(m, Rate))

    def answer_end(self, text: str) -> int:
        """Where this step's answer ends in `text`, read with the default parser and no prompt."""
        return self.parse(text, "", self.parsers[0]).end


def _from_file(path: Path) -> object:
    spec = importlib.util.spec_from_file_location(f"pathreplay_task_{path.stem}", path)
    if spec is None or spec.loader is None:
        fail(f"task={str(path)!r}", "cannot be imported as Python", "name a .py file that defines TASK")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _installed() -> str:
    names = sorted(e.name for e in entry_points(group=GROUP))
    return ("an installed task (" + ", ".join(names) + ")" if names
            else "an installed task (none is registered: install pathreplay with pip install -e .)")


@cache
def load_task(spec: str) -> Task:
    """The task `spec` names: an installed task (entry point), a .py file, or `module[:attr]`;
    the attribute is TASK unless named. A spec that names none is one line."""
    where = f"task={spec!r}"
    found = [e for e in entry_points(group=GROUP) if e.name == spec]
    try:
        if found:
            obj = found[0].load()
        else:
            mod_name, _, attr = spec.partition(":")
            if spec.endswith(".py"):
                if not Path(spec).is_file():
                    fail(where, "no such file", f"give a path to a .py file that defines TASK, or use {_installed()}")
                mod = _from_file(Path(spec))
            else:
                mod = importlib.import_module(mod_name)
            obj = getattr(mod, attr or "TASK", None)
    except ImportError as err:
        fail(where, f"names no installed task and no importable module ({first_line(err)})",
             f"use {_installed()}, a .py file defining TASK, or module:attr")
    if not isinstance(obj, Task):
        fail(where, f"does not define a pathreplay.task.Task (found {type(obj).__name__})",
             "bind TASK = Task(...) in the module")
    return obj


def check_task(task: Task, parser: str) -> None:
    """A task whose measures cannot be computed, or a parser it does not have, is one line."""
    if parser not in task.parsers:
        fail("parser", f"task {task.name} has no parser {parser!r}", f"use one of {', '.join(task.parsers)}")
    if not any(isinstance(m, Rate) for m in task.measures):
        fail(f"task={task.name!r}", "has no Rate measure for the screen to judge by", "add one to its measures")
    if any(isinstance(m, Mean) for m in task.measures) and not task.amount:
        fail(f"task={task.name!r}", "has a Mean measure but no amount column", "set Task.amount")
