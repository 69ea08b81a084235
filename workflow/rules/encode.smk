# Encode every captured state of one layer with that layer's SAE alone.


rule encode:
    input:
        layer_states,
    output:
        codes="results/encode/L{layer}.parquet",
        quality="results/qc/sae_quality/L{layer}.tsv",
    log:
        "results/logs/encode/L{layer}.log",
    conda:
        "../../envs/pathreplay.yaml"
    resources:
        gpu=1,
    params:
        saes=sae_source(),
        device=config["device"],
    script:
        "../scripts/encode.py"


rule sae_quality:
    input:
        expand("results/qc/sae_quality/L{layer}.tsv", layer=LAYERS),
    output:
        "results/qc/sae_quality.tsv",
    log:
        "results/logs/sae_quality.log",
    conda:
        "../../envs/pathreplay.yaml"
    script:
        "../scripts/sae_quality.py"
