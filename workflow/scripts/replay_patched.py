import pandas as pd

from pathreplay.io import read_tables
from pathreplay.replay.coupled import run_features
from pathreplay.replay.plan import parse_conditions
from pathreplay.replay.prompts import read_prompts
from pathreplay.replay.trials import ReplaySettings, write_result
from pathreplay.sae.exact import SAESource
from pathreplay.workflow import open_model, run_script


def main(sm):
    p = sm.params
    prompts = {q.id: q for q in read_prompts(sm.input.prompts)}
    settings = ReplaySettings(**p.settings)
    plan = pd.DataFrame(p.plan)  # the shard's (feature, prompt_id) rows
    selected = pd.DataFrame(p.features).set_index("feature")
    baseline = read_tables(sm.input.baseline)
    model, tok = open_model(p.device, **p.model)
    dev = next(model.parameters()).device
    saes = SAESource(**p.saes)
    feats = saes.slices(selected.reset_index(), dev)
    res = run_features(model, tok, selected, plan, prompts, feats, parse_conditions(p.conditions), p.trials, p.seed,
                       settings, baseline, saes=saes, device=dev)
    write_result(res, settings.capture_layers, sm.output.states, sm.output.trials)


run_script(snakemake, main)  # noqa: F821
