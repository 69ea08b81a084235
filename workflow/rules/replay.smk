# Replay: baseline trials per prompt (shared by every feature replayed on it) and patched trials
# per shard, with the residual captured after every SAE layer. A baseline reads its prompt and
# the generation settings only: a new selection or other SAEs leave it complete.


rule replay_baseline:
    input:
        prompts=config["prompts"]["file"],
    output:
        trials="results/replay/baseline/{prompt}/trials.parquet",
        states=expand(
            "results/replay/baseline/{{prompt}}/L{layer}.safetensors", layer=LAYERS
        ),
    log:
        "results/logs/replay_baseline/{prompt}.log",
    conda:
        "../../envs/pathreplay.yaml"
    resources:
        gpu=1,
    params:
        model=pick("model"),
        device=config["device"],
        settings=replay_settings("replay"),
        trials=config["replay"]["trials"],
        placebo=config["replay"]["placebo"],
        seed=config["seed"],
    script:
        "../scripts/replay_baseline.py"


rule replay_patched:
    input:
        unpack(patched_inputs),
    output:
        trials="results/replay/patched/{shard}/trials.parquet",
        states=expand(
            "results/replay/patched/{{shard}}/L{layer}.safetensors", layer=LAYERS
        ),
    log:
        "results/logs/replay_patched/{shard}.log",
    conda:
        "../../envs/pathreplay.yaml"
    resources:
        gpu=1,
    params:
        model=pick("model"),
        device=config["device"],
        saes=sae_source(),
        settings=replay_settings("replay"),
        conditions=config["replay"]["conditions"],
        trials=config["replay"]["trials"],
        seed=config["seed"],
        plan=lambda w: plan_rows(["feature", "prompt_id"], shard=w.shard),
        features=lambda w: selection_rows(shard=w.shard),
    script:
        "../scripts/replay_patched.py"
