# Words each causal feature adds or removes (RQ2), from logged trials: no model, SAE or GPU.
# Features are hashed into `words.shards` buckets (no checkpoint); each shard job streams all
# logs and counts only its own features, then one job merges, writes the JSON and the plots.
from pathreplay.errors import run_cli as _run_cli
from pathreplay.words import log_paths as _words_log_paths, words_config as _words_config

WORDS_CFG = _run_cli(lambda: _words_config(config.get("words")))
# Globs are expanded once, here, so the DAG knows every input file.
WORDS_LOGS = _run_cli(lambda: _words_log_paths(WORDS_CFG.logs, REPO)) if WORDS_CFG.logs else []
WORDS_OUTPUTS = [
    "results/words/word_effects.parquet",
    "results/words/causal_word_effects.json",
    "results/words/volcano",
]
WORDS_TARGETS = WORDS_OUTPUTS if WORDS_LOGS else []


rule words_shard:
    input:
        WORDS_LOGS,
    output:
        "results/words/shards/{shard}.parquet",
    params:
        shard=lambda wc: int(wc.shard),
        logs=WORDS_LOGS,
        words=config.get("words"),  # a changed setting reruns the shards
    log:
        "results/logs/words/shard_{shard}.log",
    wildcard_constraints:
        shard=r"\d+",
    script:
        "../scripts/words_shard.py"


rule words_merge:
    input:
        expand("results/words/shards/{shard}.parquet", shard=range(WORDS_CFG.shards)),
    output:
        effects="results/words/word_effects.parquet",
        json="results/words/causal_word_effects.json",
        plots=directory("results/words/volcano"),
    params:
        words=config.get("words"),
    log:
        "results/logs/words/merge.log",
    script:
        "../scripts/words_merge.py"


rule words:
    input:
        rules.words_merge.output,
