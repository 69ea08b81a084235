# Which features to replay, and on which prompts. Both are checkpoints: the replay's shards and
# prompts are known only once they have run.


checkpoint select_features:
    input:
        selection_input(),
    output:
        "results/features/selected.tsv",
    log:
        "results/logs/select_features.log",
    conda:
        "../../envs/pathreplay.yaml"
    params:
        select=pick("select"),
        layers=LAYERS,
        columns=table_columns(selection_input()),
        # a clamp's targets are checked against the features' thresholds (other modes take any)
        clamp=(
            {"conditions": config["replay"]["conditions"], "saes": sae_source()}
            if config["replay"]["mode"] == "clamp"
            else None
        ),
    script:
        "../scripts/select_features.py"


TOP_ACTIVATION = config["prompts"]["strategy"] == "top_activation"


checkpoint select_prompts:
    input:
        selected="results/features/selected.tsv",
        prompts=config["prompts"]["file"],
    output:
        plan="results/replay/plan.tsv",
    log:
        "results/logs/select_prompts.log",
    conda:
        "../../envs/pathreplay.yaml"
    resources:
        gpu=1 if TOP_ACTIVATION else 0,
    params:
        per_feature=config["prompts"]["per_feature"],
        strategy=config["prompts"]["strategy"],
        # the model and SAEs only where the prompts are chosen by the feature's activation
        model=pick("model") if TOP_ACTIVATION else None,
        device=config["device"] if TOP_ACTIVATION else None,
        saes=sae_source() if TOP_ACTIVATION else None,
    script:
        "../scripts/select_prompts.py"
