import logging

from pathreplay.words.report import merge_shards
from pathreplay.words.settings import words_config
from pathreplay.workflow import run_script


def main(sm):
    cfg = words_config(sm.params.words)
    effects = merge_shards(list(sm.input), cfg, sm.output.effects, sm.output.json, sm.output.plots)
    significant = int((effects.q_value < cfg.alpha).sum())
    logging.info("%d tested rows, %d with q < %g, %d features", len(effects), significant, cfg.alpha,
                 effects[["layer", "feature_id"]].drop_duplicates().shape[0])


run_script(snakemake, main)  # noqa: F821
