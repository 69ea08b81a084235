from pathreplay.io import read_table, write_table
from pathreplay.replay.coupled import behaviour_baseline
from pathreplay.replay.prompts import read_prompts
from pathreplay.replay.trials import ReplaySettings
from pathreplay.workflow import open_model, run_script


def main(sm):
    p = sm.params
    prompts = {q.id: q for q in read_prompts(sm.input.prompts)}
    model, tok = open_model(p.device, **p.model)
    trials = behaviour_baseline(model, tok, read_table(sm.input.plan), prompts, p.seed, ReplaySettings(**p.settings))
    write_table(trials, sm.output[0])


run_script(snakemake, main)  # noqa: F821
