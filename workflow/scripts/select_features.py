import logging

from pathreplay.features import feature_slices, read_feature_table
from pathreplay.io import write_table
from pathreplay.errors import fail
from pathreplay.plan import check_targets, empty_selection, parse_conditions, select_features
from pathreplay.sae import SAESource
from pathreplay.workflow import run_script


def main(sm):
    s = sm.params.select
    table = read_feature_table(sm.input[0], sm.params.columns or None)
    sel = select_features(table, top_n=s["top_n"], shard_size=s["shard_size"], sae_layers=sm.params.layers,
                          layers=s["layers"] or None, labels=s["labels"] or None,
                          per_layer_cap=s["per_layer_cap"] or None, min_abs_d=s["min_abs_d"])
    logging.info("selected %d of %d features into %d shards", len(sel), len(table), sel["shard"].nunique())
    if sel.empty:
        fail("select", f"no feature of {sm.input[0]} passes the selection "
             f"({empty_selection(table, s, sm.params.layers)})",
             "loosen select.layers, select.labels or select.min_abs_d")
    if sm.params.clamp:  # a clamp's targets must be readable: refused here, before any replay
        feats = feature_slices(SAESource(**sm.params.clamp["saes"]), sel, "cpu")
        check_targets(sel, parse_conditions(sm.params.clamp["conditions"]),
                      {n: f.threshold for n, (_, f) in feats.items()}, "replay.conditions")
    write_table(sel, sm.output[0])


run_script(snakemake, main)  # noqa: F821
