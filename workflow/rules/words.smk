# Words each causal feature adds or removes (RQ2), from logged trials: no model, SAE or GPU.
# Features are hashed into `words.shards` buckets (no checkpoint); each shard job streams all
# logs and counts only its own features, then one job merges, writes the JSON and the plots.
# WORDS_CFG and WORDS_LOGS are set up in common.smk.


rule words_shard:
    input:
        WORDS_LOGS,
    output:
        "results/words/shards/{shard}.parquet",
    log:
        "results/logs/words/shard_{shard}.log",
    wildcard_constraints:
        shard=r"\d+",
    conda:
        "../../envs/pathreplay.yaml"
    params:
        words=config["words"],  # a changed setting reruns the shards
        task=config["task"],  # where an answer ends (the `cut` texts)
    script:
        "../scripts/words_shard.py"


rule words_merge:
    input:
        expand("results/words/shards/{shard}.parquet", shard=range(WORDS_CFG.shards)),
    output:
        effects="results/words/word_effects.parquet",
        json="results/words/causal_word_effects.json",
        plots=report(
            directory("results/words/volcano"),
            patterns=["{feature}.png"],
            caption="../../report/volcano.rst",
            category="5. Words",
            labels={"feature": "{feature}"},
        ),
    log:
        "results/logs/words/merge.log",
    conda:
        "../../envs/pathreplay.yaml"
    params:
        words=config["words"],
    script:
        "../scripts/words_merge.py"


rule words:
    input:
        rules.words_merge.output,
