import logging

from pathreplay.features import read_feature_table
from pathreplay.io import write_table
from pathreplay.plan import select_features
from pathreplay.workflow import run_script


def main(sm):
    s = sm.params.select
    table = read_feature_table(sm.input[0], sm.params.columns or None)
    sel = select_features(table, top_n=s["top_n"], shard_size=s["shard_size"], sae_layers=sm.params.layers,
                          layers=s["layers"] or None, labels=s["labels"] or None,
                          per_layer_cap=s["per_layer_cap"] or None, min_abs_d=s["min_abs_d"])
    logging.info("selected %d of %d features into %d shards", len(sel), len(table), sel["shard"].nunique())
    if sel.empty:
        logging.warning("no feature passed the selection filters (select.*)")
    write_table(sel, sm.output[0])


run_script(snakemake, main)  # noqa: F821
