"""A source's decisions in the powered behaviour replay: per prompt, the task's first rate among
valid answers under each real condition beside its random control and the baseline of the same
seeds, with their Wilson intervals, the q of each change against the baseline and against the
random control, and the valid share of every arm."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ..replay.plan import control_of

COLOURS = {"baseline": "0.6", "real": "tab:purple", "random": "tab:orange"}


def _q(v: float) -> str:
    return "q n/a" if not np.isfinite(v) else f"q {v:.2g}"


def behaviour_plot(behaviour: pd.DataFrame, feature: str, out: str | os.PathLike[str], rate: str) -> None:
    """The figure (format by suffix) of one source's rows of behavior/effects.parquet."""
    from matplotlib.patches import Patch

    from .canvas import pyplot, savefig

    plt = pyplot()
    b = behaviour[behaviour["feature"] == feature]
    prompts = sorted(b["prompt_id"].unique())
    real = sorted(c for c in b["condition"].unique() if control_of(c) == "real")
    fig, axes = plt.subplots(1, max(1, len(prompts)), figsize=(3.6 * max(1, len(prompts)), 3.8), sharey=True,
                             squeeze=False)
    for ax, p in zip(axes[0], prompts):
        rows = b[b["prompt_id"] == p].set_index("condition")
        first = rows.iloc[0]
        arms = [("baseline", "baseline", first[f"{rate}_rate_baseline"], first[f"{rate}_rate_baseline_lo"],
                 first[f"{rate}_rate_baseline_hi"], first["valid_rate_baseline"])]
        for c in real:
            for name, kind in ((c, "real"), (f"random:{c}", "random")):
                if name in rows.index:
                    r = rows.loc[name]
                    arms.append((name, kind, r[f"{rate}_rate"], r[f"{rate}_rate_lo"], r[f"{rate}_rate_hi"],
                                 r["valid_rate"]))
        xs = np.arange(len(arms))
        vals = np.array([a[2] for a in arms], dtype=float)
        lo, hi = (np.array([a[i] for a in arms], dtype=float) for i in (3, 4))
        ax.bar(xs, np.nan_to_num(vals), color=[COLOURS[a[1]] for a in arms], edgecolor="black", linewidth=0.4)
        # points and intervals drawn over the bars: a rate of 0 shows as a point on the axis
        ax.errorbar(xs, vals, yerr=np.abs(np.nan_to_num([vals - lo, hi - vals])), fmt="o", ms=3, color="black",
                    ecolor="black", capsize=2, lw=0.8)
        for x, a in zip(xs, arms):
            ax.text(x, 1.02, f"{a[5]:.2f}", ha="center", va="bottom", fontsize=5.5, color="0.35")
            if a[1] == "real":
                r = rows.loc[a[0]]
                ax.text(x, min(1.0, float(np.nan_to_num(hi[x])) + 0.03), f"{_q(r[f'q_{rate}'])}\nvs random "
                        f"{_q(r.get('q_vs_random', np.nan))}", ha="center", va="bottom", fontsize=5, color="tab:purple")
        ax.set_xticks(xs, [a[0] for a in arms], rotation=60, ha="right", fontsize=6)
        n = int(rows["n_trials"].max())
        ax.set_title(f"{p} ({first['context']}), up to {n} trials an arm", fontsize=7)
        ax.set_ylim(0, 1.25)
        ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    axes[0][0].set_ylabel(f"{rate} rate among valid answers (95% Wilson)\nvalid share of each arm on top", fontsize=7)
    fig.legend(handles=[Patch(color=COLOURS["baseline"], label="baseline (same seeds, unpatched)"),
                        Patch(color=COLOURS["real"], label="patched: q against the baseline, and against its random "
                              "control"),
                        Patch(color=COLOURS["random"], label="random control (as far along another line)")],
               loc="lower center", ncol=3, fontsize=6, frameon=False)
    fig.suptitle(f"{feature}: decisions in the powered behaviour replay", fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    savefig(fig, out)
