from pathreplay.config import read_prompts
from pathreplay.features import read_feature_table
from pathreplay.io import write_table
from pathreplay.plan import parse_conditions, select_features
from pathreplay.screen import classify, screen_features
from pathreplay.workflow import feature_slices, open_model, replay_settings, run_script


def main(sm):
    p, s = sm.params, sm.params.screen
    table = read_feature_table(sm.input[0], p.columns or None)
    candidates = select_features(table, top_n=s["top_n"], shard_size=s["top_n"],
                                 sae_layers=p.saes["layers"])
    prompts = read_prompts(p.prompts["file"])
    if s["prompts"]:  # ids checked at the start
        known = {q.id: q for q in prompts}
        prompts = [known[i] for i in s["prompts"]]
    model, tok = open_model(p)
    dev = next(model.parameters()).device
    feats = feature_slices(p.saes, candidates, dev)
    conds = parse_conditions(s["conditions"], "screen.conditions")
    effects, _ = screen_features(model, tok, candidates, feats, prompts, conds, s["trials"],
                                 replay_settings(p, "screen"), p.seed)
    verdict = classify(candidates, effects, s["alpha"], s["min_delta"])
    write_table(effects, sm.output.behaviour)
    write_table(verdict, sm.output.features)


run_script(snakemake, main)  # noqa: F821
