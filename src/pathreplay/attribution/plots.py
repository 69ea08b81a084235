"""The report's attribution section: per source, the predicted against the measured computed
part of every tested target (forced scope), headline edges marked; pooled over sources, the
precision-recall curve of |predicted computed part| as a score for being a headline edge, per
variant, readout and dose."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..io import atomic_path
from .agreement import rho

COLOURS = {"virtual": "tab:gray", "frozen": "tab:blue", "jacobian": "tab:red"}


def _pyplot() -> Any:  # pragma: no cover - trivial
    """pyplot on Agg, SVG ids and text fixed (the same figure makes the same file)."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "pathreplay"
    matplotlib.rcParams["svg.fonttype"] = "none"
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: str | os.PathLike[str]) -> None:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=Path(out).suffix.lstrip("."), metadata={"Date": None})
    _pyplot().close(fig)


def scatter(joined: pd.DataFrame, source: str, out: str | os.PathLike[str]) -> None:
    """One source's tested targets: measured against predicted computed part, one panel per
    variant that runs blocks (recomputed readout), a colour per condition, edges as rings.
    `joined`: columns source, condition, variant, pred, meas, edge (agreement's rows)."""
    plt = _pyplot()
    j = joined[joined["source"] == source]
    variants = [v for v in ("frozen", "jacobian") if v in set(j["variant"])]
    fig, axes = plt.subplots(1, max(1, len(variants)), figsize=(4.2 * max(1, len(variants)), 4), squeeze=False)
    for ax, v in zip(axes[0], variants):
        g = j[j["variant"] == v]
        for i, (cond, c) in enumerate(g.groupby("condition")):
            colour = f"C{i}"
            ax.scatter(c["pred"], c["meas"], s=4, alpha=0.4, color=colour, lw=0, label=f"{cond} (rho {rho(c['pred'].to_numpy(), c['meas'].to_numpy()):.2f})")
            e = c[c["edge"]]
            ax.scatter(e["pred"], e["meas"], s=14, facecolors="none", edgecolors=colour, lw=0.6)
        lim = float(np.nanmax(np.abs(g[["pred", "meas"]].to_numpy()))) if len(g) else 1.0
        ax.plot([-lim, lim], [-lim, lim], color="0.6", lw=0.6, ls="--")
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_yscale("symlog", linthresh=0.01)
        ax.set_xlabel(f"predicted computed part ({v})")
        ax.set_ylabel("measured delta_computed (forced)")
        ax.set_title(f"{source}: {v}, rings = headline edges", fontsize=8)
        ax.legend(fontsize=6, loc="upper left")
    _save(fig, out)


def precision_recall(joined: pd.DataFrame, out: str | os.PathLike[str]) -> None:
    """Pooled precision-recall curves of |predicted computed part| for headline edges, a panel per
    dose, a line per variant (solid: recomputed, dashed: gated), the edge rate dotted."""
    plt = _pyplot()
    doses = sorted(joined["dose"].dropna().unique())
    fig, axes = plt.subplots(1, max(1, len(doses)), figsize=(4.2 * max(1, len(doses)), 3.8), squeeze=False)
    for ax, dose in zip(axes[0], doses):
        d = joined[joined["dose"] == dose]
        for (v, readout), g in d.groupby(["variant", "readout"]):
            score, label = np.abs(g["pred"].to_numpy(float)), g["edge"].to_numpy(bool)
            if not label.any() or not score.any():
                continue
            order = np.argsort(-score, kind="stable")
            hits = np.cumsum(label[order])
            ax.plot(hits / label.sum(), hits / np.arange(1, len(order) + 1), color=COLOURS.get(v, "k"),
                    ls="-" if readout == "recomputed" else "--", lw=0.9, label=f"{v}, {readout}")
        rate = float(d["edge"].mean()) if len(d) else 0.0
        ax.axhline(rate, color="0.5", ls=":", lw=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall of headline edges")
        ax.set_ylabel("precision")
        ax.set_title(f"dose {dose:g}x, every source (edge rate {rate:.3f})", fontsize=8)
        ax.legend(fontsize=6)
    _save(fig, out)

