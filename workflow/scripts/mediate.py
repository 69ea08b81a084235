import logging

import pandas as pd

from pathreplay.features import parse_feature_name
from pathreplay.io import read_table, read_tables, write_table
from pathreplay.pathways.mediation import PATH_COLUMNS, Slice, mediate, to_mediate
from pathreplay.replay.plan import parse_conditions, patched_jobs
from pathreplay.replay.prompts import read_prompts
from pathreplay.replay.trials import ReplaySettings
from pathreplay.sae.exact import SAESource
from pathreplay.workflow import open_model, run_script


def main(sm):
    p = sm.params
    chains = to_mediate(read_table(sm.input.chains), p.max_chains)
    if chains.empty:
        logging.info("no chain to mediate")
        write_table(pd.DataFrame(columns=PATH_COLUMNS), sm.output.paths)
        return
    settings = ReplaySettings(**p.settings)
    prompts = {q.id: q for q in read_prompts(sm.input.prompts)}
    plan = pd.read_csv(sm.input.plan, sep="\t")
    selected = pd.read_csv(sm.input.selected, sep="\t").set_index("feature")
    base = read_tables(sm.input.baseline)
    conditions = {c.name: c for c in parse_conditions(p.conditions)}
    model, tok = open_model(p.device, **p.model)
    dev = next(model.parameters()).device
    saes = SAESource(**p.saes)
    names = sorted(set(chains["a"]) | set(chains["b"]) | set(chains["c"]))
    slices = {}
    for n in names:
        layer, fid = parse_feature_name(n)
        slices[n] = Slice(n, layer, saes.feature(layer, fid, dev))
    jobs = {}
    for a, cond in chains[["a", "condition"]].drop_duplicates().itertuples(index=False):
        mine = [prompts[i] for i in plan.loc[plan["feature"] == a, "prompt_id"]]
        jobs[(a, cond)] = patched_jobs(mine, selected.loc[a], [conditions[cond]], p.trials, p.seed)
    paths = mediate(model, tok, chains, slices, jobs, base, settings, p.alpha, p.min_delta)
    logging.info("%d chains mediated of %d tested", int(paths["mediated"].sum()), len(paths))
    write_table(paths, sm.output.paths)


run_script(snakemake, main)  # noqa: F821
