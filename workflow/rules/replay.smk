# Replay: baseline trials per prompt (shared by every feature replayed on it) and patched trials
# per shard, with the residual captured after every SAE layer.


rule replay_baseline:
    input:
        plan="results/replay/plan.tsv",
    output:
        trials="results/replay/baseline/{prompt}/trials.parquet",
        states=expand("results/replay/baseline/{{prompt}}/L{layer}.safetensors", layer=LAYERS),
    log:
        "results/logs/replay_baseline/{prompt}.log",
    params:
        model=config["model"],
        saes=config["saes"],
        prompts=config["prompts"],
        replay=config["replay"],
        seed=config["seed"],
        device=config["device"],
        parser=config["parser"],
    resources:
        gpu=1,
    script:
        "../scripts/replay.py"


rule replay_patched:
    input:
        plan="results/replay/plan.tsv",
        selected="results/features/selected.tsv",
    output:
        trials="results/replay/patched/{shard}/trials.parquet",
        states=expand("results/replay/patched/{{shard}}/L{layer}.safetensors", layer=LAYERS),
    log:
        "results/logs/replay_patched/{shard}.log",
    params:
        model=config["model"],
        saes=config["saes"],
        prompts=config["prompts"],
        replay=config["replay"],
        seed=config["seed"],
        device=config["device"],
        parser=config["parser"],
    resources:
        gpu=1,
    script:
        "../scripts/replay.py"
