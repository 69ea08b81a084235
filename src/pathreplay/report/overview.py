"""The report's first page: what the run found, in one table, before how to read it.

The overview is the report's own text (report/workflow.rst) with a findings table in front of
it: the sources; per dose the edges, computed and specific, general (across prompts),
passthrough, nonspecific and off the SAEs' distribution; mediated chains and layers; the
behaviour changes that pass both tests (against the baseline and the random control) with their
q; every quality gate's verdict; the controls' figures. Each row links to its section."""

from __future__ import annotations

import pandas as pd

from ..pathways.edges import headline
from ..replay.plan import control_of


def _row(what: str, value: str, section: str) -> str:
    return f"   * - {what}\n     - {value}\n     - `{section}`_\n"


def findings(edges: pd.DataFrame, paths: pd.DataFrame, layers: pd.DataFrame, behaviour: pd.DataFrame,
             gates: pd.DataFrame, null: pd.DataFrame, upstream: pd.DataFrame, sources: int, alpha: float,
             rate: str, sections: dict[str, str]) -> str:
    """The findings as an RST list-table (module docstring); `sections` names the report's
    categories (pathways, sources, checks) the rows link to."""
    rows = [_row("sources replayed", str(sources), sections["sources"])]
    for cond, g in edges.groupby("condition", sort=True, observed=True) if len(edges) else []:
        top = headline(g)
        rows.append(_row(f"edges at {cond}", f"{len(g)} significant: **{int(top.sum())} computed and specific** "
                         f"({int((top & g['general'].astype(bool)).sum())} general across prompts), "
                         f"{int((g['kind'] == 'passthrough').sum())} the patch read back (passthrough), "
                         f"{int(((g['kind'] == 'computed') & g['nonspecific'].astype(bool)).sum())} nonspecific, "
                         f"{int(g['off_distribution'].astype(bool).sum())} off the SAEs' distribution",
                         sections["pathways"]))
    if not len(edges):
        rows.append(_row("edges", "none passed the thresholds", sections["pathways"]))
    med, lay = paths[paths["mediated"].astype(bool)] if len(paths) else paths, \
        layers[layers["mediated"].astype(bool)] if len(layers) else layers
    rows.append(_row("mediation", f"{len(med)} of {len(paths)} (chain, intermediate) holds mediated; "
                     f"{len(lay)} of {len(layers)} (source, target, layer) holds", sections["pathways"]))
    real = behaviour[[control_of(c) == "real" for c in behaviour["condition"]]] if len(behaviour) else behaviour
    hits = real[(real[f"q_{rate}"] < alpha) & (real["q_vs_random"] < alpha)] if len(real) else real
    text = "; ".join(f"{r.feature} {r.condition} on {r.prompt_id}: {getattr(r, f'{rate}_rate_baseline'):.2f} -> "
                     f"{getattr(r, f'{rate}_rate'):.2f} (q {getattr(r, f'q_{rate}'):.2g}, against the random "
                     f"control q {r.q_vs_random:.2g}, {r.n_trials} trials)" for r in hits.itertuples())
    rows.append(_row(f"behaviour ({rate} rate)", f"{len(hits)} of {len(real)} arms change it against the baseline "
                     f"and the random control: {text}" if len(hits) else
                     f"none of {len(real)} arms changes it against both the baseline and the random control",
                     sections["sources"]))
    failed = gates[~gates["passed"].astype(bool)] if len(gates) else gates
    rows.append(_row("quality gates", f"{len(gates) - len(failed)} of {len(gates)} passed" + "".join(
        f"; {r.gate} {r.subject} {r.value:.3g} (limit {r.limit:g})" for r in gates.itertuples()
        if r.gate == "sae_fvu"), sections["checks"]))
    rows += _controls(null, upstream, sections["checks"])
    return ".. list-table:: What this run found\n   :header-rows: 1\n   :widths: 18 70 12\n\n" \
           "   * - finding\n     - figures\n     - section\n" + "".join(rows) + "\n"


def _controls(null: pd.DataFrame, upstream: pd.DataFrame, section: str) -> list[str]:
    """The controls' rows: the sham and upstream exactness, the placebo's calibration, the random
    control's computed discoveries beside the real ones'."""
    out = []
    up = upstream[upstream["scope"] == "forced"] if len(upstream) else upstream
    out.append(_row("exactness", f"sham: {int(null.loc[null['contrast'] == 'sham', 'tests'].sum())} tests, every "
                    f"difference exactly 0; upstream, teacher-forced: {int(up['differing'].sum()) if len(up) else 0} "
                    f"of {int(up['features'].sum()) if len(up) else 0} features differ", section))
    plac = null[(null["contrast"] == "placebo") & (null["scope"] == "generated")]
    for r in plac.itertuples():
        out.append(_row(f"placebo ({r.level} level)", f"mean share of p < alpha {r.p_below_alpha:.3f} over {r.splits} "
                        f"re-splits (95th percentile {r.p_below_alpha_p95:.3f}); {r.splits_with_discoveries} splits "
                        f"with a discovery at the real cutoff {r.cutoff:.2g}"
                        + (f" and under the floor {r.floor:.2g}" if pd.notna(r.floor) else ""), section))
    by = null.groupby("contrast")["discoveries_computed"].sum() if len(null) else pd.Series(dtype=float)
    out.append(_row("random control", f"{int(by.get('random', 0))} computed discoveries against the real "
                    f"conditions' {int(by.get('real', 0))}", section))
    return out


def overview(text: str, findings_rst: str) -> str:
    """The first page: the findings, then the report's own text (its title stays on top)."""
    lines = text.splitlines()
    return (findings_rst + "\n" + "\n".join(lines)) if lines else findings_rst
