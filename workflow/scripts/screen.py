from pathreplay.behaviour.screen import classify, screen_features
from pathreplay.features import read_feature_table
from pathreplay.io import write_table
from pathreplay.replay.plan import check_targets, parse_conditions, select_features
from pathreplay.replay.prompts import read_prompts
from pathreplay.replay.trials import ReplaySettings
from pathreplay.sae.exact import SAESource
from pathreplay.task import load_task
from pathreplay.workflow import open_model, run_script


def main(sm):
    p, s = sm.params, sm.params.screen
    table = read_feature_table(sm.input[0], p.columns or None)
    candidates = select_features(table, top_n=s["top_n"], shard_size=s["top_n"], sae_layers=p.layers)
    prompts = read_prompts(p.prompts)
    if s["prompts"]:  # ids checked at the start
        known = {q.id: q for q in prompts}
        prompts = [known[i] for i in s["prompts"]]
    model, tok = open_model(p.device, **p.model)
    dev = next(model.parameters()).device
    feats = SAESource(**p.saes).slices(candidates, dev)
    conds = parse_conditions(s["conditions"], "screen.conditions")
    if p.settings["mode"] == "clamp":  # a clamp's targets must be readable: refused before any patch
        check_targets(candidates, conds, {n: f.threshold for n, (_, f) in feats.items()}, "screen.conditions")
    effects, _ = screen_features(model, tok, candidates, feats, prompts, conds, s["trials"],
                                 ReplaySettings(**p.settings), p.seed)
    verdict = classify(candidates, effects, s["alpha"], s["min_delta"], load_task(p.settings["task"]))
    write_table(effects, sm.output.behaviour)
    write_table(verdict, sm.output.features)


run_script(snakemake, main)  # noqa: F821
