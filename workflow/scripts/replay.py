import pandas as pd
import torch

from pathreplay.config import read_prompts
from pathreplay.io import write_table, write_tensors
from pathreplay.plan import parse_conditions
from pathreplay.replay import run_baseline, run_features
from pathreplay.workflow import feature_slices, open_model, replay_settings, run_script


def main(sm):
    p, r = sm.params, sm.params.replay
    prompts = {q.id: q for q in read_prompts(p.prompts["file"])}
    settings = replay_settings(p)
    model, tok = open_model(p)
    dev = next(model.parameters()).device
    if "prompt" in sm.wildcards.keys():
        res = run_baseline(model, tok, prompts[sm.wildcards.prompt], r["trials"], p.seed, settings,
                           placebo=r["placebo"])
    else:
        plan = pd.read_csv(sm.input.plan, sep="\t")
        plan = plan[plan["shard"] == sm.wildcards.shard]
        selected = pd.read_csv(sm.input.selected, sep="\t").set_index("feature").loc[plan["feature"].unique()]
        feats = feature_slices(p.saes, selected.reset_index(), dev)
        res = run_features(model, tok, selected, plan, prompts, feats, parse_conditions(r["conditions"]),
                           r["trials"], p.seed, settings, saes=p.saes, device=dev)
    n_pos = torch.tensor(res.trials["n_positions"].to_numpy(), dtype=torch.int32)
    for b, path in zip(settings.capture_layers, sm.output.states):
        write_tensors({"states": res.states[b], "n_positions": n_pos}, path, metadata={"layer": str(b)})
    write_table(res.trials, sm.output.trials)


run_script(snakemake, main)  # noqa: F821
