# The Exp2 screen redone fast: patched vs baseline decisions only, no capture.


rule screen:
    input:
        features_table(),
    output:
        features="results/screen/features.parquet",
        behaviour="results/screen/behaviour.parquet",
    log:
        "results/logs/screen.log",
    conda:
        "../../envs/pathreplay.yaml"
    resources:
        gpu=1,
    params:
        model=pick("model"),
        device=config["device"],
        saes=sae_source(),
        layers=LAYERS,
        prompts=config["prompts"]["file"],
        screen=pick(
            "screen", "top_n", "prompts", "conditions", "trials", "alpha", "min_delta"
        ),
        columns=table_columns(features_table()),
        settings=replay_settings("screen"),
        seed=config["seed"],
    script:
        "../scripts/screen.py"
