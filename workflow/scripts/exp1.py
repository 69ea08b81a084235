from pathreplay.exp1 import feature_table, play_games
from pathreplay.io import write_table
from pathreplay.sae import load_sae, sae_dir
from pathreplay.workflow import open_model, run_script


def main(sm):
    p, s, e = sm.params, sm.params.saes, sm.params.exp1
    model, tok = open_model(p)
    dev = next(model.parameters()).device
    result = play_games(model, tok, list(s["layers"]), games=e["games"], max_rounds=e["max_rounds"],
                        temperature=e["temperature"], max_new_tokens=e["max_new_tokens"],
                        batch_size=e["batch_size"], seed=p.seed, parser=p.parser,
                        stop_at_newline=e["stop_at_newline"])
    table = feature_table(result, lambda layer: load_sae(sae_dir(s["path"], layer), s["format"], layer, dev))
    write_table(result.games, sm.output.games)
    write_table(table, sm.output.features)


run_script(snakemake, main)  # noqa: F821
