# Shared setup and input functions. Included first by the Snakefile.
import sys
from pathlib import Path

import pandas as pd
from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.0")

REPO = Path(workflow.basedir)
sys.path.insert(0, str(REPO / "src"))

from pathreplay.config import check_config, replay_estimate, schema_message  # noqa: E402
from pathreplay.errors import UserError, run_cli  # noqa: E402


def _check_config():
    """Schema, then what it cannot express; the capture estimate. Bad input: one line, exit 2."""
    try:
        validate(config, schema=str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    except WorkflowError as err:
        raise UserError(schema_message(err)) from err
    check_config(config, REPO)
    return replay_estimate(config)


ESTIMATE = run_cli(_check_config)
if ESTIMATE:
    print(f"pathreplay: {ESTIMATE}", file=sys.stderr)

LAYERS = list(config["saes"]["layers"])


def features_table():
    """The feature table downstream stages read: the user's, else the one Exp1 computes."""
    return config["features"].get("table") or "results/exp1/features.parquet"


def selection_input():
    """What select_features ranks: the screen's verdicts when the screen runs."""
    return "results/screen/features.parquet" if config["screen"]["enabled"] else features_table()


def table_columns(path):
    """The user's column mapping applies to the user's table only, not to tables we wrote."""
    return config["features"].get("columns") or {} if path == config["features"].get("table") else {}


def _plan():
    return pd.read_csv(checkpoints.select_prompts.get().output.plan, sep="\t")


def replay_shards(wildcards=None):
    return sorted(_plan()["shard"].unique())


def replay_prompts(wildcards=None):
    return sorted(_plan()["prompt_id"].unique())


def selected_features(wildcards=None):
    return sorted(_plan()["feature"].unique())


def layer_states(wildcards):
    """Every captured state file of one layer, baseline and patched."""
    return ([f"results/replay/baseline/{p}/L{wildcards.layer}.safetensors" for p in replay_prompts()]
            + [f"results/replay/patched/{s}/L{wildcards.layer}.safetensors" for s in replay_shards()])


def effects_inputs(wildcards):
    plan = _plan()
    mine = plan[plan["feature"] == wildcards.feature]
    layer = int(mine["layer"].iloc[0])
    return {
        "plan": checkpoints.select_prompts.get().output.plan,
        "patched": f"results/replay/patched/{mine['shard'].iloc[0]}/trials.parquet",
        "baseline": [f"results/replay/baseline/{p}/trials.parquet" for p in sorted(mine["prompt_id"].unique())],
        "codes": [f"results/encode/L{t}.parquet" for t in LAYERS if t > layer],
    }


def pathway_inputs(wildcards=None):
    return {
        "effects": [f"results/effects/{f}.parquet" for f in selected_features()],
        "placebo": [f"results/effects/{f}.placebo.parquet" for f in selected_features()],
        "patched": [f"results/replay/patched/{s}/trials.parquet" for s in replay_shards()],
        "baseline": [f"results/replay/baseline/{p}/trials.parquet" for p in replay_prompts()],
    }


def default_targets():
    """The pathways and their checks; the demo's figures when the demo model is in use."""
    demo = config["model"]["path"] == str((REPO / "resources" / "demo" / "model").resolve())
    return ((["results/qc/demo_figures.tsv"] if demo else []) + [
        "results/pathways/edges.parquet",
        "results/pathways/paths.tsv",
        "results/behavior/effects.parquet",
        "results/qc/placebo.tsv",
        "results/qc/patch_fidelity.tsv",
        "results/qc/sae_quality.tsv",
    ] + WORDS_TARGETS)
