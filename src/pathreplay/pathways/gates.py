"""Quality gates before claims: checks on the baselines that, failing, stop the run before any edge
is claimed (rule qc_gates, an input of pathways). An SAE that reconstructs nothing, or a prompt
the model does not answer, would still give edges (the tests compare codes, whatever they are
worth), so these are verdicts, not warnings:

- every SAE layer's FVU on the baselines' states at most `qc.max_fvu`, its dead fraction at most
  `qc.max_dead` (sae_quality.tsv);
- every replayed prompt's share of valid baseline answers at least `qc.min_valid`.

Each verdict, passed or not, is a row of results/qc/gates.tsv (gate, subject, value, limit, key,
passed); the report's first page shows them. A failed gate is one line naming the layer or
prompt, its figure, and the key that overrides it.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from ..errors import fail

GATE_COLUMNS = ["gate", "subject", "value", "limit", "key", "passed"]


def gate_rows(quality: pd.DataFrame, baseline: pd.DataFrame, qc: Mapping[str, float]) -> pd.DataFrame:
    """Every gate's verdict: per SAE layer its FVU and dead fraction, per prompt its valid share."""
    rows = []
    for q in quality.itertuples():
        rows.append(("sae_fvu", f"L{q.layer}", float(q.fvu), qc["max_fvu"], "qc.max_fvu", bool(q.fvu <= qc["max_fvu"])))
        rows.append(("sae_dead", f"L{q.layer}", float(q.dead_fraction), qc["max_dead"], "qc.max_dead",
                     bool(q.dead_fraction <= qc["max_dead"])))
    main = baseline[(baseline["condition"] == "baseline") & (baseline["run"] == "generated")]
    for pid, v in main.groupby("prompt_id")["valid"].mean().items():
        rows.append(("valid_answers", str(pid), float(v), qc["min_valid"], "qc.min_valid", bool(v >= qc["min_valid"])))
    return pd.DataFrame(rows, columns=GATE_COLUMNS)


def check_gates(gates: pd.DataFrame) -> None:
    """One line for the first failed gate (and how many others failed), or nothing."""
    bad = gates[~gates["passed"].astype(bool)]
    if bad.empty:
        return
    g = bad.iloc[0]
    what = {"sae_fvu": f"the SAE at layer {g.subject[1:]} explains too little of the baselines' states: FVU "
                       f"{g.value:.3g} above {g.limit:g}",
            "sae_dead": f"{g.value:.1%} of the SAE's features at layer {g.subject[1:]} never fire on the baselines "
                        f"(more than {g.limit:.0%})",
            "valid_answers": f"prompt {g.subject!r} gets a valid answer in {g.value:.1%} of its baseline trials "
                             f"(below {g.limit:.0%})"}[g.gate]
    others = [f"{r.gate} {r.subject}" for r in bad.iloc[1:6].itertuples()]
    more = f" ({len(bad) - 1} other gates failed too: {', '.join(others)}{', ...' if len(bad) > 6 else ''})" \
        if len(bad) > 1 else ""
    fix = ("check saes.path and saes.format against the model (are these the SAEs of this model and layer?)"
           if g.gate.startswith("sae") else "check the prompt, the model and the task's parser on its responses")
    fail("qc gate", what + more, f"{fix}; or set {g.key} to accept it")
