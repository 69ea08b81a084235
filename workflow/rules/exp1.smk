# Exp1: the model plays whole games; Cohen's d per SAE feature, bankrupt vs stopped games.


rule exp1:
    output:
        features="results/exp1/features.parquet",
        games="results/exp1/games.parquet",
    log:
        "results/logs/exp1.log",
    params:
        model=config["model"],
        saes=config["saes"],
        exp1=config["exp1"],
        seed=config["seed"],
        device=config["device"],
        parser=config["parser"],
    resources:
        gpu=1,
    script:
        "../scripts/exp1.py"
