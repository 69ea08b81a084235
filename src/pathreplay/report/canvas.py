"""One matplotlib set-up and one atomic save for every figure of the report (and the words')."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..io import atomic_path


def pyplot() -> Any:  # pragma: no cover - trivial
    """matplotlib's pyplot on the Agg backend (no display), chosen before pyplot first loads;
    SVG text kept as text (searchable, and the tests measure where labels sit)."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "pathreplay"  # the same figure, the same file: no random ids
    matplotlib.rcParams["svg.fonttype"] = "none"
    import matplotlib.pyplot as plt

    return plt


def savefig(fig: Any, out: str | os.PathLike[str], **kw: Any) -> None:
    """Save and close a figure atomically, in the format its suffix names, without a date (the same
    figure makes the same file)."""
    fmt = Path(out).suffix.lstrip(".")
    meta = {"Date": None} if fmt in ("svg", "pdf") else {}
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=fmt, metadata=meta, **kw)
    pyplot().close(fig)
