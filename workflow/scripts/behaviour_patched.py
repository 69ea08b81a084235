import pandas as pd

from pathreplay.io import read_table, write_table
from pathreplay.replay.coupled import run_behaviour
from pathreplay.replay.plan import parse_conditions
from pathreplay.replay.prompts import read_prompts
from pathreplay.replay.trials import ReplaySettings
from pathreplay.sae.exact import SAESource
from pathreplay.workflow import open_model, run_script


def main(sm):
    p = sm.params
    prompts = {q.id: q for q in read_prompts(sm.input.prompts)}
    selected = pd.DataFrame(p.features).set_index("feature")
    model, tok = open_model(p.device, **p.model)
    feats = SAESource(**p.saes).slices(selected.reset_index(), next(model.parameters()).device)
    trials = run_behaviour(model, tok, selected, read_table(sm.input.plan), prompts, feats,
                           parse_conditions(p.conditions), p.seed, ReplaySettings(**p.settings))
    write_table(trials, sm.output[0])


run_script(snakemake, main)  # noqa: F821
