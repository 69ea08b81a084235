# Attribution against intervention: per source, what a linearisation of the model predicts its
# patch does to every downstream feature (teacher-forced on the baseline trials, the patch's own
# step pushed through as a tangent: frozen and full Jacobian, beside the virtual read-through),
# the holds of its mediated chains included; then, on the CPU, the agreement with what the
# replay measured, the noise ceiling of the measurements, and the recall of triage.


rule attribute:
    input:
        prompts=config["prompts"]["file"],
        plan=lambda w: plan_file(),
        baseline=lambda w: baseline_trials(_plan().feature_prompts[w.feature]),
        chains="results/pathways/chains.tsv",
    output:
        predictions="results/attribution/{feature}.parquet",
        shares="results/attribution/{feature}.shares.tsv",
    log:
        "results/logs/attribute/{feature}.log",
    conda:
        "../../envs/pathreplay.yaml"
    resources:
        gpu=1,
    params:
        model=pick("model", "path", "trust_remote_code"),
        device=config["device"],
        saes=sae_source(),
        layers=LAYERS,
        settings={
            "mode": config["replay"]["mode"],
            "positions": config["replay"]["positions"],
            "capture": config["replay"]["capture"]["generated"],
            "max_new_tokens": config["replay"]["max_new_tokens"],
            "batch_size": config["replay"]["batch_size"],
        },
        attribution=pick("attribution", "method", "variants"),
        conditions=config["replay"]["conditions"],
        seed=config["seed"],
        max_chains=config["stats"]["max_chains"],
        features=lambda w: selection_rows(feature=w.feature),
    script:
        "../scripts/attribute.py"


rule attribution_agreement:
    input:
        unpack(attribution_inputs),
    output:
        agreement="results/attribution/agreement.tsv",
        triage="results/attribution/triage.tsv",
        figures=report(
            directory("results/report/attribution"),
            patterns=["{name}.{ext}"],
            caption="../../report/attribution.rst",
            category="4. Attribution",
            labels={"figure": "{name}"},
        ),
    log:
        "results/logs/attribution_agreement.log",
    conda:
        "../../envs/pathreplay.yaml"
    params:
        min_delta=config["stats"]["min_delta"],
        conditions=config["replay"]["conditions"],
        screen_top=config["attribution"]["screen_top"],
    script:
        "../scripts/attribution_agreement.py"
