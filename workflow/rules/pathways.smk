# Effects per source feature, then run-wide edges, chains, behaviour and the checks; then the
# mediation of each chain (teacher-forced replays with the middle feature held).


rule effects:
    input:
        unpack(effects_inputs),
    output:
        effects="results/effects/{feature}.parquet",
        upstream="results/effects/{feature}.upstream.parquet",
    log:
        "results/logs/effects/{feature}.log",
    conda:
        "../../envs/pathreplay.yaml"
    params:
        stats=pick("stats", "min_delta", "min_prompts"),
    script:
        "../scripts/effects.py"


rule pathways:
    input:
        unpack(pathway_inputs),
    output:
        edges="results/pathways/edges.parquet",
        chains="results/pathways/chains.tsv",
        behaviour="results/behavior/effects.parquet",
        null="results/qc/null.tsv",
        upstream="results/qc/upstream.tsv",
        fidelity="results/qc/patch_fidelity.tsv",
    log:
        "results/logs/pathways.log",
    conda:
        "../../envs/pathreplay.yaml"
    threads: 2
    params:
        stats=pick("stats", "alpha", "min_delta"),
        task=config["task"],
    script:
        "../scripts/pathways.py"


rule mediate:
    input:
        unpack(mediate_inputs),
    output:
        paths="results/pathways/paths.tsv",
    log:
        "results/logs/mediate.log",
    conda:
        "../../envs/pathreplay.yaml"
    resources:
        gpu=1,
    params:
        model=pick("model"),
        device=config["device"],
        saes=sae_source(),
        settings=replay_settings("replay"),
        conditions=config["replay"]["conditions"],
        trials=config["replay"]["trials"],
        seed=config["seed"],
        alpha=config["stats"]["alpha"],
        min_delta=config["stats"]["min_delta"],
        max_chains=config["stats"]["max_chains"],
    script:
        "../scripts/mediate.py"
