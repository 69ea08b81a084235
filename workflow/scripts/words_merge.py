"""Snakemake script: merge the word-effect shards into the table, the JSON and the plots."""

import logging

from pathreplay.errors import run_cli
from pathreplay.words import merge_shards, words_config

sm = snakemake  # type: ignore[name-defined]  # noqa: F821 (injected by Snakemake)


def main() -> None:
    logging.basicConfig(filename=sm.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = words_config(sm.config.get("words"))
    effects = merge_shards(list(sm.input), cfg, sm.output.effects, sm.output.json, sm.output.plots)
    significant = int((effects.q_value < cfg.alpha).sum())
    logging.info("%d tested rows, %d with q < %g, %d features", len(effects), significant, cfg.alpha,
                 effects[["layer", "feature_id"]].drop_duplicates().shape[0])


run_cli(main)
