# What `snakemake --report report.html` shows: the pathway graph, each source's graph, decisions
# and top edges, and the checks as tables. The figures are made with the run, the report after.


rule report_figures:
    input:
        unpack(report_inputs),
    output:
        graph=report(
            "results/report/pathways.svg",
            caption="../../report/pathway_graph.rst",
            category="1. Pathways",
            labels={"figure": "pathway graph", "source": "every source"},
        ),
        explore=report(
            "results/report/pathways.html",
            caption="../../report/pathway_explore.rst",
            category="1. Pathways",
            labels={"figure": "pathway graph to explore", "source": "every source"},
        ),
        sources=report(
            directory("results/report/sources"),
            patterns=["{source}.{figure}.{ext}"],
            caption="../../report/source.rst",
            category="2. Sources",
            subcategory="{source}",
            labels={"source": "{source}", "figure": "{figure}"},
        ),
    log:
        "results/logs/report_figures.log",
    conda:
        "../../envs/pathreplay.yaml"
    params:
        cap=120,
        task=config["task"],
        links=FEATURE_LINKS,
        sources=selected_features,
    script:
        "../scripts/report_figures.py"


rule report_checks:
    input:
        quality="results/qc/sae_quality.tsv",
        null="results/qc/null.tsv",
        upstream="results/qc/upstream.tsv",
        fidelity="results/qc/patch_fidelity.tsv",
        patched_quality="results/qc/patched_quality.tsv",
        gates="results/qc/gates.tsv",
    output:
        quality=report(
            "results/report/checks/sae_quality.html",
            caption="../../report/sae_quality.rst",
            category="3. Checks",
            labels={"check": "SAE quality per layer"},
        ),
        null=report(
            "results/report/checks/controls.html",
            caption="../../report/controls.rst",
            category="3. Checks",
            labels={"check": "controls: sham, placebo, random"},
        ),
        upstream=report(
            "results/report/checks/upstream.html",
            caption="../../report/upstream.rst",
            category="3. Checks",
            labels={"check": "upstream layers"},
        ),
        fidelity=report(
            "results/report/checks/patch_fidelity.html",
            caption="../../report/patch_fidelity.rst",
            category="3. Checks",
            labels={"check": "patch fidelity"},
        ),
        patched_quality=report(
            "results/report/checks/patched_quality.html",
            caption="../../report/patched_quality.rst",
            category="3. Checks",
            labels={"check": "SAE quality on patched states"},
        ),
        gates=report(
            "results/report/checks/gates.html",
            caption="../../report/gates.rst",
            category="3. Checks",
            labels={"check": "quality gates"},
        ),
    log:
        "results/logs/report_checks.log",
    conda:
        "../../envs/pathreplay.yaml"
    script:
        "../scripts/report_checks.py"


# The report's first page: the findings table in front of report/workflow.rst (workflow/Snakefile
# shows it once it exists).
rule report_overview:
    input:
        unpack(overview_inputs),
    output:
        "results/report/overview.rst",
    log:
        "results/logs/report_overview.log",
    conda:
        "../../envs/pathreplay.yaml"
    params:
        alpha=config["stats"]["alpha"],
        task=config["task"],
        sources=selected_features,
    script:
        "../scripts/report_overview.py"
