import logging

import pandas as pd

from pathreplay.features import feature_name, parse_feature_name
from pathreplay.io import read_table, read_tables, write_table
from pathreplay.pathways.edges import headline
from pathreplay.pathways.mediation import LAYER_COLUMNS, PATH_COLUMNS, Slice, mediate, to_mediate
from pathreplay.replay.plan import parse_conditions, patched_jobs
from pathreplay.replay.prompts import read_prompts
from pathreplay.replay.trials import ReplaySettings
from pathreplay.sae.exact import SAESource
from pathreplay.workflow import open_model, run_script


def candidates(edges, chains, most):
    """(A, condition) -> A's forced headline targets, the `most` strongest per layer."""
    e = edges[headline(edges) & (edges["scope"] == "forced")]
    e = e.assign(a=[feature_name(x, y) for x, y in zip(e["source_layer"], e["source_feature"])],
                 size=e["delta_computed"].abs())
    e = e.sort_values("size", ascending=False).groupby(["a", "condition", "target_layer"]).head(most)
    return {k: [feature_name(x, y) for x, y in zip(g["target_layer"], g["target_feature"])]
            for k, g in e.groupby(["a", "condition"]) if k in set(zip(chains["a"], chains["condition"]))}


def main(sm):
    p = sm.params
    chains = to_mediate(read_table(sm.input.chains), p.max_chains)
    if chains.empty:
        logging.info("no chain to mediate")
        write_table(pd.DataFrame(columns=PATH_COLUMNS), sm.output.paths)
        write_table(pd.DataFrame(columns=LAYER_COLUMNS), sm.output.layers)
        return
    settings = ReplaySettings(**p.settings)
    prompts = {q.id: q for q in read_prompts(sm.input.prompts)}
    plan = pd.DataFrame(p.plan)
    selected = pd.DataFrame(p.features).set_index("feature")
    base = read_tables(sm.input.baseline)
    conditions = {c.name: c for c in parse_conditions(p.conditions)}
    cands = candidates(read_table(sm.input.edges), chains, p.max_mediators)
    model, tok = open_model(p.device, **p.model)
    dev = next(model.parameters()).device
    saes = SAESource(**p.saes)
    names = set(chains["a"]) | set(chains["c"]) | {m for ms in chains["mids"] for m in ms.split("|")}
    names |= {n for ns in cands.values() for n in ns}
    slices = {}
    for n in sorted(names):
        layer, fid = parse_feature_name(n)
        slices[n] = Slice(n, layer, saes.feature(layer, fid, dev))
    jobs = {}
    for a, cond in chains[["a", "condition"]].drop_duplicates().itertuples(index=False):
        mine = [prompts[i] for i in plan.loc[plan["feature"] == a, "prompt_id"]]
        jobs[(a, cond)] = patched_jobs(mine, selected.loc[a], [conditions[cond]], p.trials, p.seed)
    out = mediate(model, tok, chains, {k: [slices[n] for n in v] for k, v in cands.items()}, slices, jobs, base,
                  settings, p.alpha, p.min_delta)
    logging.info("%d of %d (chain, mediator) rows mediated; %d of %d (source, target, layer) rows",
                 int(out.paths["mediated"].sum()), len(out.paths), int(out.layers["mediated"].sum()), len(out.layers))
    write_table(out.paths, sm.output.paths)
    write_table(out.layers, sm.output.layers)


run_script(snakemake, main)  # noqa: F821
