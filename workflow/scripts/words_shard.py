import logging

from pathreplay.errors import fail
from pathreplay.io import write_table
from pathreplay.task import load_task
from pathreplay.words.effects import run_shard
from pathreplay.words.settings import words_config
from pathreplay.workflow import run_script


def main(sm):
    cfg = words_config(sm.params.words)
    logs = list(sm.input)
    if not logs:
        fail("config words.logs", "is empty", "list your trial logs (paths or globs) under words.logs")
    shard = int(sm.wildcards.shard)
    effects = run_shard(logs, cfg, load_task(sm.params.task).answer_end, shard)
    write_table(effects, sm.output[0])
    logging.info("shard %d of %d: %d tested rows from %d log files", shard, cfg.shards, len(effects), len(logs))


run_script(snakemake, main)  # noqa: F821
