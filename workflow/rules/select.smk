# Which features to replay, and on which prompts. Both are checkpoints: the replay's shards and
# prompts are known only once they have run.


checkpoint select_features:
    input:
        selection_input(),
    output:
        "results/features/selected.tsv",
    log:
        "results/logs/select_features.log",
    params:
        select=config["select"],
        saes=config["saes"],
        columns=table_columns(selection_input()),
    script:
        "../scripts/select_features.py"


checkpoint select_prompts:
    input:
        selected="results/features/selected.tsv",
    output:
        plan="results/replay/plan.tsv",
    log:
        "results/logs/select_prompts.log",
    params:
        model=config["model"],
        saes=config["saes"],
        prompts=config["prompts"],
        replay=config["replay"],
        device=config["device"],
    resources:
        gpu=1 if config["prompts"]["strategy"] == "top_activation" else 0,
    script:
        "../scripts/select_prompts.py"
