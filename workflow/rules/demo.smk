# The embedded demo: rebuild it from scratch (not part of the default target: resources/demo/
# is committed), and report its figures.


rule build_demo:
    output:
        directory("results/demo_build"),
    log:
        "results/logs/build_demo.log",
    conda:
        "../../envs/pathreplay.yaml"
    threads: 4  # capped at --cores
    params:
        seed=config["seed"],
    script:
        "../scripts/build_demo.py"


rule demo_figures:
    output:
        "results/qc/demo_figures.tsv",
    log:
        "results/logs/demo_figures.log",
    conda:
        "../../envs/pathreplay.yaml"
    resources:
        gpu=1,
    params:
        model=config["model"]["path"],
        saes=sae_source(),
        layers=LAYERS,
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/demo_figures.py"
