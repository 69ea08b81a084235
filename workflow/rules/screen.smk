# The Exp2 screen redone fast: patched vs baseline decisions only, no capture.


rule screen:
    input:
        features_table(),
    output:
        features="results/screen/features.parquet",
        behaviour="results/screen/behaviour.parquet",
    log:
        "results/logs/screen.log",
    params:
        model=config["model"],
        saes=config["saes"],
        prompts=config["prompts"],
        screen=config["screen"],
        columns=table_columns(features_table()),
        replay=config["replay"],
        seed=config["seed"],
        device=config["device"],
        parser=config["parser"],
    resources:
        gpu=1,
    script:
        "../scripts/screen.py"
