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
        "../scripts/encode_baseline.py"


# A patched shard's codes, and the read-through of every patch: the codes of its baseline
# partner's states plus the patch's own step at each layer above the source (what an SAE there
# reads with no block run), the SAE's quality on the patched states, and at the source's own
# layer the check that a teacher-forced patched state is its baseline plus that step.
rule encode_patched:
    input:
        unpack(encode_patched_inputs),
    output:
        codes=expand("results/encode/patched/{{shard}}/L{layer}.parquet", layer=LAYERS),
        passthrough=expand(
            "results/encode/passthrough/{{shard}}/L{layer}.parquet", layer=LAYERS
        ),
        quality="results/qc/patched_quality/{shard}.tsv",
    log:
        "results/logs/encode/patched/{shard}.log",
    conda:
        "../../envs/pathreplay.yaml"
    resources:
        gpu=1,
    params:
        saes=sae_source(),
        device=config["device"],
        layers=LAYERS,
        mode=config["replay"]["mode"],
        seed=config["seed"],
        dtype=config["model"]["dtype"],
    script:
        "../scripts/encode_patched.py"


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
