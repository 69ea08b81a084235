# Effects per source feature; the quality gates on the baselines; then run-wide edges, chains,
# behaviour and the checks; then the mediation of each chain (teacher-forced replays with the
# middle feature held).


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
        mode=config["replay"]["mode"],
    script:
        "../scripts/effects.py"


# The placebo as a calibration study: re-splits of each prompt's exchangeable unpatched trials,
# through the effects' own tests, once per distinct prompt set; disjoint splits set the floor a
# claim's p must be under.
rule placebo:
    input:
        unpack(placebo_inputs),
    output:
        study="results/qc/placebo.parquet",
        floors="results/qc/placebo_floors.tsv",
    log:
        "results/logs/placebo.log",
    conda:
        "../../envs/pathreplay.yaml"
    params:
        splits=config["stats"]["placebo_splits"],
        calibration_splits=config["stats"]["placebo_calibration_splits"],
        seed=config["seed"],
        stats=pick("stats", "min_delta", "min_prompts", "placebo_fwer"),
        prompt_sets=prompt_sets,
    script:
        "../scripts/placebo.py"


# A layer whose SAE reconstructs nothing, or a prompt the model does not answer, stops the run
# here with one line, before any edge is claimed.
rule qc_gates:
    input:
        quality="results/qc/sae_quality.tsv",
        baseline=lambda w: baseline_trials(replay_prompts()),
    output:
        "results/qc/gates.tsv",
    log:
        "results/logs/qc_gates.log",
    conda:
        "../../envs/pathreplay.yaml"
    params:
        qc=pick("qc", "max_fvu", "max_dead", "min_valid"),
    script:
        "../scripts/qc_gates.py"


rule pathways:
    input:
        unpack(pathway_inputs),
    output:
        edges="results/pathways/edges.parquet",
        chains="results/pathways/chains.tsv",
        null="results/qc/null.tsv",
        upstream="results/qc/upstream.tsv",
        fidelity="results/qc/patch_fidelity.tsv",
        quality="results/qc/patched_quality.tsv",
    log:
        "results/logs/pathways.log",
    conda:
        "../../envs/pathreplay.yaml"
    threads: 2
    params:
        stats=pick("stats", "alpha", "min_delta"),
        max_fvu_ratio=config["qc"]["max_fvu_ratio"],
        prompt_sets=prompt_sets,
    script:
        "../scripts/pathways.py"


rule mediate:
    input:
        unpack(mediate_inputs),
    output:
        paths="results/pathways/paths.tsv",
        layers="results/pathways/layers.tsv",
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
        max_mediators=config["stats"]["max_mediators"],
        plan=lambda w: plan_rows(["feature", "prompt_id"]),
        features=lambda w: selection_rows(),
    script:
        "../scripts/mediate.py"
