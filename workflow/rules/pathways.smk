# Effects per source feature, then edges, paths, behaviour and the quality checks.


rule effects:
    input:
        unpack(effects_inputs),
    output:
        effects="results/effects/{feature}.parquet",
        placebo="results/effects/{feature}.placebo.parquet",
    log:
        "results/logs/effects/{feature}.log",
    params:
        stats=pick("stats", "min_delta", "min_prompts"),
    script:
        "../scripts/effects.py"


rule pathways:
    input:
        unpack(pathway_inputs),
    output:
        edges="results/pathways/edges.parquet",
        paths="results/pathways/paths.tsv",
        behaviour="results/behavior/effects.parquet",
        placebo="results/qc/placebo.tsv",
        fidelity="results/qc/patch_fidelity.tsv",
    log:
        "results/logs/pathways.log",
    params:
        stats=pick("stats", "alpha", "min_delta"),
    script:
        "../scripts/pathways.py"
