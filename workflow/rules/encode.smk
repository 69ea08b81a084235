# Encode captured states one part a job, a part being a baseline prompt or a patched shard, layer
# by layer with one SAE resident at a time: a lost shard re-encodes that shard alone, and a
# cluster gets one job per part, not one per (layer, part). (Snakemake's group-components would
# batch per-layer jobs, but it builds wrong groups downstream of a checkpoint: snakemake issues
# 1217 and 1628; a forced re-encode here stopped with "Out of jobs ready to be started".) A
# baseline part also keeps its share of each layer's quality sums, which sae_quality merges.


rule encode_baseline:
    input:
        expand("results/replay/baseline/{{prompt}}/L{layer}.safetensors", layer=LAYERS),
    output:
        codes=expand(
            "results/encode/baseline/{{prompt}}/L{layer}.parquet", layer=LAYERS
        ),
        quality=expand(
            "results/qc/sae_quality/{{prompt}}/L{layer}.safetensors", layer=LAYERS
        ),
    log:
        "results/logs/encode/baseline/{prompt}.log",
    conda:
        "../../envs/pathreplay.yaml"
    resources:
        gpu=1,
    params:
        saes=sae_source(),
        device=config["device"],
        layers=LAYERS,
    script:
        "../scripts/encode.py"


use rule encode_baseline as encode_patched with:
    input:
        expand("results/replay/patched/{{shard}}/L{layer}.safetensors", layer=LAYERS),
    output:
        codes=expand("results/encode/patched/{{shard}}/L{layer}.parquet", layer=LAYERS),
    log:
        "results/logs/encode/patched/{shard}.log",


rule sae_quality:
    input:
        quality_inputs,
    output:
        "results/qc/sae_quality.tsv",
    log:
        "results/logs/sae_quality.log",
    conda:
        "../../envs/pathreplay.yaml"
    script:
        "../scripts/sae_quality.py"
