"""The word analysis' outputs: the table, the original JSON layout (extended) and volcano plots."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import fail
from ..features import feature_name
from ..io import atomic_dir, read_tables, write_json, write_table
from ..report.canvas import pyplot, savefig
from .effects import SORT, empty_effects, relabel
from .settings import ORIGINAL_ALL_KEYS, WordsConfig


def _entry(r: Any) -> dict[str, Any]:
    return {"word": r.word, "baseline_freq": float(r.baseline_freq), "patched_freq": float(r.patched_freq),
            "log_odds_ratio": float(r.log_odds_ratio), "p_value": float(r.p_value),
            "baseline_count": int(r.baseline_count), "patched_count": int(r.patched_count),
            "baseline_n": int(r.baseline_n), "patched_n": int(r.patched_n), "log_odds_z": float(r.log_odds_z),
            "q_value": float(r.q_value), "effect": float(r.effect), "test": r.test, "stem": r.stem,
            "baseline": r.baseline, "patched": r.patched}


def _contrast_keys(rows: pd.DataFrame, cfg: WordsConfig) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for name, part in rows.groupby("contrast", sort=True):
        part = part.sort_values("log_odds_z", key=np.abs, ascending=False)
        sig = part[part.q_value < cfg.alpha]
        sign = sig.log_odds_ratio if part.kind.iloc[0] == "pairwise" else sig.effect
        up, down = sig[sign > 0], sig[sign < 0]
        out[f"{name}_adds"] = [_entry(r) for r in up.head(cfg.top_words).itertuples()]
        out[f"{name}_removes"] = [_entry(r) for r in down.head(cfg.top_words).itertuples()]
        out[f"{name}_all"] = [_entry(r) for r in part.head(50).itertuples()]
        if name in ORIGINAL_ALL_KEYS:
            out[ORIGINAL_ALL_KEYS[name]] = out[f"{name}_all"]
    return out


def causal_json(effects: pd.DataFrame, cfg: WordsConfig) -> list[dict[str, Any]]:
    """The original `causal_word_effects` layout, one entry per feature: `<contrast>_adds` /
    `_removes` for the primary text (the first of `words.texts`), every text under `by_text`."""
    out = []
    for (layer, fid), rows in effects.groupby(["layer", "feature_id"], sort=True):
        by_text = {t: _contrast_keys(part, cfg) for t, part in rows.groupby("text")}
        primary = cfg.texts[0]
        out.append({"feature": feature_name(layer, fid), "layer": int(layer), "feature_id": int(fid),
                    "text": primary, **by_text.get(primary, {}), "by_text": by_text})
    return out


def top_features(effects: pd.DataFrame, cfg: WordsConfig) -> list[tuple[int, int]]:
    """Features with the most words at q < alpha in the primary text (ties: smallest p)."""
    e = effects[effects.text == cfg.texts[0]]
    if e.empty:
        return []
    score = e.assign(sig=e.q_value < cfg.alpha).groupby(["layer", "feature_id"]).agg(
        sig=("sig", "sum"), best=("p_value", "min")).reset_index()
    score = score.sort_values(["sig", "best", "layer", "feature_id"], ascending=[False, True, True, True])
    return [(int(a), int(b)) for a, b in score[["layer", "feature_id"]].head(cfg.top_features_plot).to_numpy()]


def label_slots(xs: Sequence[float], ys: Sequence[float], gap: float) -> list[float]:
    """Heights for labels of points (xs, ys) so that no two labels closer than `gap` share a height
    band: each label keeps its point's height unless an earlier, higher label is too close, in
    which case it moves down just below that one."""
    heights = [0.0] * len(ys)
    placed: list[tuple[float, float]] = []
    for i in sorted(range(len(ys)), key=lambda i: -ys[i]):
        h = ys[i]
        for px, py in placed:
            if abs(px - xs[i]) < 4 * gap and abs(py - h) < gap:
                h = py - gap
        placed.append((xs[i], h))
        heights[i] = h
    return heights


LABELS = 8  # top words named per panel


def volcano_plots(effects: pd.DataFrame, out_dir: str | os.PathLike[str], cfg: WordsConfig) -> list[Path]:
    """One PNG per top feature: log-odds ratio vs -log10 p, a panel per contrast on shared axes,
    each saying how many words it tested and how many are discoveries; the top words labelled
    without overlap, the legend outside the panels."""
    plt = pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for layer, fid in top_features(effects, cfg):
        e = effects[(effects.layer == layer) & (effects.feature_id == fid) & (effects.text == cfg.texts[0])]
        names = sorted(e.contrast.unique())
        fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4.4), squeeze=False, sharex=True,
                                 sharey=True)
        y_all = -np.log10(e.p_value.clip(lower=1e-300))
        span = max(1.0, float(y_all.max()) * 1.15)
        for ax, name in zip(axes[0], names):
            part = e[e.contrast == name]
            sig = (part.q_value < cfg.alpha).to_numpy()
            y = y_all[e.contrast == name].to_numpy()
            x = part.log_odds_ratio.to_numpy()
            ax.scatter(x[~sig], y[~sig], s=10, c="0.6", label="q >= alpha")
            ax.scatter(x[sig], y[sig], s=14, c="tab:red", label=f"q < {cfg.alpha:g}")
            top = np.argsort(-y)[:LABELS]
            top = top[sig[top]]
            for i, h in zip(top, label_slots(x[top].tolist(), y[top].tolist(), span / 18)):
                ax.annotate(part.word.iloc[i], (x[i], y[i]), xytext=(x[i], h), fontsize=7, textcoords="data",
                            ha="left", va="bottom", arrowprops={"arrowstyle": "-", "color": "0.7", "lw": 0.5})
            ax.axvline(0, c="0.8", lw=0.8)
            ax.text(0.02, 0.98, f"{len(part)} words tested\n{int(sig.sum())} at q < {cfg.alpha:g}",
                    transform=ax.transAxes, va="top", fontsize=7)
            versus = "highest vs lowest level" if part.kind.iloc[0] == "trend" else "patched vs baseline"
            ax.set(title=name, xlabel=f"log-odds ratio, {versus}", ylim=(0, span))
        axes[0][0].set_ylabel("-log10 p")
        handles, texts = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, texts, loc="lower center", ncol=2, fontsize=7, frameon=False)
        fig.suptitle(f"{feature_name(layer, fid)} ({cfg.texts[0]} text)")
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        path = out_dir / f"{feature_name(layer, fid)}.png"
        savefig(fig, path, dpi=110)
        written.append(path)
    return written


def merge_shards(shard_paths: Sequence[str], cfg: WordsConfig, effects_path: str, json_path: str,
                 plot_dir: str) -> pd.DataFrame:
    """Concatenate shard tables and write the three final outputs, each atomically; no tested
    word at all is one UserError before anything is written, unless words.allow_empty."""
    effects = relabel(read_tables(shard_paths, empty_effects())).sort_values(SORT, ignore_index=True)
    if effects.empty and not cfg.allow_empty:
        fail("config words", f"no word was tested in any shard: no word is said by words.min_count ({cfg.min_count}) "
             "of the responses a contrast compares", "lower words.min_count, check words.contrasts and "
             "words.contexts against the logs (the shard logs say what was not tested), or set "
             "words.allow_empty: true to accept an empty result")
    write_table(effects, effects_path)
    write_json(causal_json(effects, cfg), json_path)
    with atomic_dir(plot_dir) as tmp:
        volcano_plots(effects, tmp, cfg)
    return effects
