"""Snakemake script: word effects of the features hashed into one shard."""

import logging

from pathreplay.errors import fail, run_cli
from pathreplay.io import write_table
from pathreplay.words import run_shard, words_config

sm = snakemake  # type: ignore[name-defined]  # noqa: F821 (injected by Snakemake)


def main() -> None:
    logging.basicConfig(filename=sm.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = words_config(sm.config.get("words"))
    logs = list(sm.params.logs)
    if not logs:
        fail("config words.logs", "is empty", "list your trial logs (paths or globs) under words.logs")
    shard = int(sm.params.shard)
    effects = run_shard(logs, cfg, shard)
    write_table(effects, sm.output[0])
    logging.info("shard %d of %d: %d tested rows from %d log files", shard, cfg.shards, len(effects), len(logs))


run_cli(main)
