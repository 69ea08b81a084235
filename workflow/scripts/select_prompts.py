import logging

import numpy as np
import pandas as pd

from pathreplay.config import read_prompts
from pathreplay.io import write_table
from pathreplay.plan import prompts_for_features
from pathreplay.workflow import feature_slices, open_model, run_script


def main(sm):
    p = sm.params
    selected = pd.read_csv(sm.input.selected, sep="\t")
    prompts = read_prompts(p.prompts["file"])
    activations = None
    if p.prompts["strategy"] == "top_activation" and len(selected):
        from pathreplay.generate import encode_prompts
        from pathreplay.patch import Interventions

        model, tok = open_model(p)
        dev = next(model.parameters()).device
        feats = feature_slices(p.saes, selected, dev)
        layers = sorted({b for b, _ in feats.values()})
        vals = {name: np.zeros(len(prompts)) for name in feats}
        for i in range(0, len(prompts), 16):
            chunk = prompts[i: i + 16]
            ids, mask = encode_prompts(tok, [q.text for q in chunk], dev)
            iv = Interventions(model, capture=layers)
            with iv.active():
                model(input_ids=ids, attention_mask=mask)
            for name, (b, f) in feats.items():
                vals[name][i: i + len(chunk)] = f.value(iv.states(b)[:, -1].to(dev)).cpu().numpy()
        activations = vals
    plan = prompts_for_features(selected, prompts, p.prompts["per_feature"], p.prompts["strategy"], activations)
    plan = plan.merge(selected[["feature", "layer", "feature_id", "shard"]], on="feature")
    logging.info("%d features x %d prompts each; %d distinct prompts need a baseline",
                 plan["feature"].nunique(), p.prompts["per_feature"], plan["prompt_id"].nunique())
    write_table(plan[["feature", "layer", "feature_id", "shard", "prompt_id", "context"]], sm.output.plan)


run_script(snakemake, main)  # noqa: F821
