# Exp1: the model plays whole games; Cohen's d per SAE feature, bankrupt vs stopped games.


rule exp1:
    output:
        features="results/exp1/features.parquet",
        games="results/exp1/games.parquet",
    log:
        "results/logs/exp1.log",
    conda:
        "../../envs/pathreplay.yaml"
    resources:
        gpu=1,
    params:
        model=pick("model"),
        device=config["device"],
        saes=sae_source(),
        layers=LAYERS,
        exp1=pick("exp1"),
        seed=config["seed"],
        parser=config["parser"],
    script:
        "../scripts/exp1.py"
