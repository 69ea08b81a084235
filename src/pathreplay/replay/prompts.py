"""The candidate prompts a replay runs: a JSONL file of {"id", "text", "context"}."""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from ..errors import fail
from ..io import iter_jsonl

SAFE_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")  # ids name folders: no dot first (., .., hidden)


class Prompt(NamedTuple):
    """One candidate prompt."""

    id: str
    text: str
    context: str


def read_prompt_ids(path: str) -> list[str]:
    """The ids of a prompts file (read_prompts' checks included)."""
    return [p.id for p in read_prompts(path)]


def read_prompts(path: str) -> list[Prompt]:
    """Read and check a prompts JSONL file (fields id, text, context)."""
    if not Path(path).is_file():
        fail(f"prompts.file={path!r}", "is a folder" if Path(path).exists() else "file not found",
             "point prompts.file at a JSONL file")
    out: list[Prompt] = []
    seen: set[str] = set()
    for n, rec in iter_jsonl(path, "prompt"):
        for key in ("id", "text", "context"):
            if rec.get(key) is None:
                fail(f"{path}:{n}", f"field {key!r} missing or null", 'give every line {"id", "text", "context"}')
        pid, text = str(rec["id"]), str(rec["text"])
        if not SAFE_ID.match(pid):
            fail(f"{path}:{n}", f"prompt id {pid!r} cannot name a folder",
                 "use letters, digits, '_', '-' and '.' only, not starting with '.'")
        if not text.strip():
            fail(f"{path}:{n}", f"prompt {pid!r} is empty", "remove it or give it text")
        if pid in seen:
            fail(f"{path}:{n}", f"id {pid!r} appears twice", "give every prompt its own id")
        seen.add(pid)
        out.append(Prompt(pid, text, str(rec["context"])))
    if not out:
        fail(f"prompts.file={path!r}", "no prompts", "add at least one line")
    return out
