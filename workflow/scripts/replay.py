import pandas as pd
import torch

from pathreplay.config import read_prompts
from pathreplay.io import write_table, write_tensors
from pathreplay.plan import parse_conditions
from pathreplay.replay import run_jobs
from pathreplay.sae import load_sae, sae_dir
from pathreplay.screen import baseline_jobs, patched_jobs
from pathreplay.workflow import feature_slices, open_model, replay_settings, run_script


def main(sm):
    p, r = sm.params, sm.params.replay
    prompts = {q.id: q for q in read_prompts(p.prompts["file"])}
    settings = replay_settings(p)
    model, tok = open_model(p)
    dev = next(model.parameters()).device
    if "prompt" in sm.wildcards.keys():
        q = prompts[sm.wildcards.prompt]
        jobs = baseline_jobs([q], r["trials"], p.seed)
        if r["placebo"]:
            jobs += baseline_jobs([q], r["trials"], p.seed, stream="placebo", condition="placebo")
        res = run_jobs(model, tok, jobs, settings, desc=f"baseline {q.id}")
        trials = res.trials.assign(feature="", layer=-1, feature_id=-1)
        states = res.states
    else:
        plan = pd.read_csv(sm.input.plan, sep="\t")
        plan = plan[plan["shard"] == sm.wildcards.shard]
        selected = pd.read_csv(sm.input.selected, sep="\t").set_index("feature").loc[plan["feature"].unique()]
        feats = feature_slices(p.saes, selected.reset_index(), dev)
        conds = parse_conditions(r["conditions"])
        parts, state_parts = [], {b: [] for b in settings.capture_layers}
        for name, row in selected.iterrows():
            block, feat = feats[name]
            sae = None
            if settings.mode == "reconstruct":
                sae = load_sae(sae_dir(p.saes["path"], block), p.saes["format"], block, dev)
            mine = [prompts[i] for i in plan.loc[plan["feature"] == name, "prompt_id"]]
            res = run_jobs(model, tok, patched_jobs(mine, row, conds, r["trials"], p.seed), settings,
                           feature=feat, block=block, sae=sae, desc=f"patched {name}")
            offset = sum(len(t) for t in parts)
            parts.append(res.trials.assign(feature=name, layer=block, feature_id=int(row["feature_id"]),
                                           row=res.trials["row"] + offset))
            for b in state_parts:
                state_parts[b].append(res.states[b])
        trials = pd.concat(parts, ignore_index=True)
        states = {b: torch.cat(v) for b, v in state_parts.items()}
    n_pos = torch.tensor(trials["n_positions"].to_numpy(), dtype=torch.int32)
    for b, path in zip(settings.capture_layers, sm.output.states):
        write_tensors({"states": states[b], "n_positions": n_pos}, path, metadata={"layer": str(b)})
    write_table(trials, sm.output.trials)


run_script(snakemake, main)  # noqa: F821
