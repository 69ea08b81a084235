"""User-facing errors: one line naming the file, the field and the fix, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

T = TypeVar("T")


class UserError(Exception):
    """Bad input from the user; its message is the whole report."""


def fail(where: str, what: str, fix: str) -> NoReturn:
    """Raise a UserError formatted as `where: what; fix`."""
    raise UserError(f"{where}: {what}; {fix}")


def first_line(err: BaseException) -> str:
    """An exception's message as one line: its first, or its type's name when it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def run_cli(fn: Callable[[], T]) -> T:
    """Run fn, turning a UserError into one line on stderr and exit status 2."""
    try:
        return fn()
    except UserError as err:
        print(f"pathreplay: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
