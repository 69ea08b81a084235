import logging

from pathreplay.features import read_feature_table
from pathreplay.io import write_table
from pathreplay.replay.plan import check_targets, parse_conditions, select_or_fail
from pathreplay.sae.exact import SAESource
from pathreplay.workflow import run_script


def main(sm):
    table = read_feature_table(sm.input[0], sm.params.columns or None)
    sel = select_or_fail(table, sm.params.select, sm.params.layers, sm.input[0])
    logging.info("selected %d of %d features into %d shards", len(sel), len(table), sel["shard"].nunique())
    if sm.params.clamp:  # a clamp's targets must be readable: refused here, before any replay
        feats = SAESource(**sm.params.clamp["saes"]).slices(sel, "cpu")
        check_targets(sel, parse_conditions(sm.params.clamp["conditions"]),
                      {n: f.threshold for n, (_, f) in feats.items()}, "replay.conditions")
    write_table(sel, sm.output[0])


run_script(snakemake, main)  # noqa: F821
