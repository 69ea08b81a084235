import logging

import pandas as pd

from pathreplay.attribution.agreement import agreement, scored, share_table
from pathreplay.attribution.plots import precision_recall, scatter
from pathreplay.attribution.reliability import halves
from pathreplay.attribution.triage import triage
from pathreplay.effects.codes import read_codes
from pathreplay.effects.layers import COLUMNS
from pathreplay.io import atomic_dir, read_table, read_tables, write_table
from pathreplay.replay.plan import parse_conditions
from pathreplay.report.figures import html_table
from pathreplay.sae.encode import part_of
from pathreplay.workflow import run_script

EFFECT_COLUMNS = ["source_layer", "source_feature", "condition", "control", "scope", "target_layer", "target_feature",
                  "mean_baseline", "delta", "delta_passthrough", "delta_computed", "p_value", "p_computed"]


def noise_halves(sm, plan):
    """Every source's split halves, from its shard's trials and codes and its prompts' baselines."""
    trials = {part_of(f): f for f in [*sm.input.patched, *sm.input.baseline]}
    out = []
    for name, g in plan.groupby("feature"):
        shard = g["shard"].iloc[0]
        patched = read_table(trials[f"patched/{shard}"])
        patched = patched[patched["feature"] == name].assign(part=f"patched/{shard}")
        base = pd.concat([read_table(trials[f"baseline/{q}"]).assign(part=f"baseline/{q}")
                          for q in sorted(g["prompt_id"])])
        parts = sorted({f"patched/{shard}"} | set(base["part"]))
        rows = {f"patched/{shard}": patched["row"]}
        codes = read_codes([c for c in sm.input.codes if part_of(c) in parts], parts, rows=rows)
        through = read_codes([c for c in sm.input.passthrough if part_of(c) == f"passthrough/{shard}"],
                             [f"patched/{shard}"], rows=rows)
        out.append(halves(patched, base, codes, through))
    return pd.concat(out, ignore_index=True) if out else None


def main(sm):
    p = sm.params
    plan = pd.read_csv(sm.input.plan, sep="\t")
    effects = read_tables([f for f in sm.input.effects], pd.DataFrame(columns=COLUMNS))[EFFECT_COLUMNS] \
        if sm.input.effects else pd.DataFrame(columns=EFFECT_COLUMNS)
    edges = read_table(sm.input.edges)
    pred = read_tables(sm.input.predictions)
    doses = {c.name: c.scale for c in parse_conditions(p.conditions)}
    shares = share_table(read_tables(sm.input.shares), read_table(sm.input.paths))
    half = noise_halves(sm, plan)
    table = agreement(effects, edges, pred, doses, p.min_delta, half, shares)
    sources = sorted(plan["feature"].unique())
    tri = triage(pred, edges, sources, p.screen_top, p.min_delta)
    write_table(table, sm.output.agreement)
    write_table(tri, sm.output.triage)
    t = scored(effects, edges, pred, doses)
    t = t[(t["part"] == "computed")] if len(t) else t
    with atomic_dir(sm.output.figures) as tmp:
        for s in sources:
            scatter(t[t["readout"] == "recomputed"], s, tmp / f"{s}.scatter.svg")
        precision_recall(t[t["variant"] != "virtual"], tmp / "precision_recall.svg")
        pooled = table[(table["source"] == "all") & (table["layer_gap"] == "all")]
        html_table(pooled, tmp / "agreement.html", empty="nothing to compare")
        html_table(tri, tmp / "triage.html", empty="no source to rank")
    best = pooled[(pooled["part"] == "computed") & (pooled["readout"] == "recomputed")]
    for r in best.itertuples():
        logging.info("%s %s: Spearman %.3f over %d tested targets, %.3f over %d edges, precision@50 %.3f, AUPRC %.3f",
                     r.variant, r.condition, r.spearman_targets, r.n_targets, r.spearman_edges, r.n_edges,
                     r.precision_at_50, r.auprc)


run_script(snakemake, main)  # noqa: F821
