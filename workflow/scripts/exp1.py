from pathreplay.io import write_table
from pathreplay.sae.exact import SAESource
from pathreplay.study.exp1 import feature_table, play_games
from pathreplay.workflow import open_model, run_script


def main(sm):
    p = sm.params
    model, tok = open_model(p.device, **p.model)
    dev = next(model.parameters()).device
    result = play_games(model, tok, list(p.layers), **p.exp1, seed=p.seed, parser=p.parser)
    saes = SAESource(**p.saes)
    table = feature_table(result, lambda layer: saes.load(layer, dev))
    write_table(result.games, sm.output.games)
    write_table(table, sm.output.features)


run_script(snakemake, main)  # noqa: F821
