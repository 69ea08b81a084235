# Behaviour: what the model then decides, tested with the power planned for it. The selected
# features are replayed (decisions only, nothing captured) on the behaviour prompts with as many
# trials as the screen's effect sizes say a powered test needs, each beside its random control,
# on a seed stream of their own: the screen's trials, which selected the features, test nothing.


rule behaviour_plan:
    input:
        unpack(behaviour_plan_inputs),
    output:
        "results/behavior/plan.tsv",
    log:
        "results/logs/behaviour_plan.log",
    conda:
        "../../envs/pathreplay.yaml"
    params:
        behaviour=pick("behaviour"),
        prompts=behaviour_prompts(),
        features=lambda w: [r["feature"] for r in selection_rows()],
        conditions=config["replay"]["conditions"],
        alpha=config["stats"]["alpha"],
        task=config["task"],
    script:
        "../scripts/behaviour_plan.py"


rule behaviour_baseline:
    input:
        plan="results/behavior/plan.tsv",
        prompts=config["prompts"]["file"],
    output:
        "results/behavior/trials/baseline.parquet",
    log:
        "results/logs/behaviour_baseline.log",
    conda:
        "../../envs/pathreplay.yaml"
    resources:
        gpu=1,
    params:
        model=pick("model"),
        device=config["device"],
        settings=replay_settings("screen"),
        seed=config["seed"],
    script:
        "../scripts/behaviour_baseline.py"


rule behaviour_patched:
    input:
        plan="results/behavior/plan.tsv",
        prompts=config["prompts"]["file"],
        replay_plan=lambda w: plan_file(),
    output:
        "results/behavior/trials/{shard}.parquet",
    log:
        "results/logs/behaviour_patched/{shard}.log",
    conda:
        "../../envs/pathreplay.yaml"
    resources:
        gpu=1,
    params:
        model=pick("model"),
        device=config["device"],
        saes=sae_source(),
        settings=replay_settings("screen"),
        conditions=config["replay"]["conditions"],
        seed=config["seed"],
        features=lambda w: selection_rows(shard=w.shard),
    script:
        "../scripts/behaviour_patched.py"


rule behaviour:
    input:
        unpack(behaviour_inputs),
    output:
        "results/behavior/effects.parquet",
    log:
        "results/logs/behaviour.log",
    conda:
        "../../envs/pathreplay.yaml"
    params:
        task=config["task"],
        alpha=config["stats"]["alpha"],
    script:
        "../scripts/behaviour.py"
