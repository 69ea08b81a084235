import logging

import pandas as pd

from pathreplay.io import write_table
from pathreplay.replay.plan import PATCH_COLUMNS, prompts_for_features
from pathreplay.replay.prompts import read_prompts
from pathreplay.runtime.patch import last_position_values
from pathreplay.sae.exact import SAESource
from pathreplay.workflow import open_model, run_script


def main(sm):
    p = sm.params
    selected = pd.read_csv(sm.input.selected, sep="\t")
    prompts = read_prompts(sm.input.prompts)
    activations = None
    if p.strategy == "top_activation" and len(selected):
        model, tok = open_model(p.device, **p.model)
        feats = SAESource(**p.saes).slices(selected, next(model.parameters()).device)
        activations = last_position_values(model, tok, [q.text for q in prompts], feats)
    plan = prompts_for_features(selected, prompts, p.per_feature, p.strategy, activations)
    plan = plan.merge(selected[list(PATCH_COLUMNS)], on="feature")
    logging.info("%d features x %d prompts each; %d distinct prompts need a baseline",
                 plan["feature"].nunique(), p.per_feature, plan["prompt_id"].nunique())
    write_table(plan[[*PATCH_COLUMNS, "prompt_id", "context"]], sm.output.plan)


run_script(snakemake, main)  # noqa: F821
