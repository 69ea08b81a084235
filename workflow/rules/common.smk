# Shared setup: the config checked once, the params each rule's job reads, and the input
# functions that read the selection checkpoints. Included first by the Snakefile.
import os
import sys
from functools import cache
from pathlib import Path
from typing import NamedTuple

import pandas as pd
from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.0")

REPO = Path(workflow.basedir).parent  # the Snakefile sits in workflow/

try:
    from pathreplay.config import check_config, replay_estimate
    from pathreplay.errors import UserError, run_cli
    from pathreplay.replay.prompts import SAFE_ID, read_prompt_ids
    from pathreplay.schema import SCHEMA, schema_message
    from pathreplay.words.logs import log_paths
    from pathreplay.words.settings import words_config
except ImportError as err:
    sys.exit(
        f"pathreplay: error: cannot import pathreplay ({err}); install it into this Python "
        f"first: pip install -e {REPO}"
    )


def _check_config():
    """Schema, then what it cannot express; the capture estimate. Bad input: one line, exit 2.
    A cluster job re-reads this file: it resolves the paths and trusts the checks of the start.
    """
    try:
        validate(config, schema=str(SCHEMA))
    except WorkflowError as err:
        raise UserError(schema_message(err)) from err
    main = workflow.is_main_process
    checked = check_config(
        config,
        REPO,
        jobs_here=workflow.local_exec,
        cache=Path(".snakemake") / "pathreplay-weights.json",
        full=main,
    )
    return replay_estimate(config, checked) if main else ""


ESTIMATE = run_cli(_check_config)
if ESTIMATE:
    print(f"pathreplay: {ESTIMATE}", file=sys.stderr)

LAYERS = list(config["saes"]["layers"])
DEMO = config["model"]["path"] == str((REPO / "resources" / "demo" / "model").resolve())

# Words (RQ2): globs expanded once, here, so the DAG knows every log file.
WORDS_CFG = run_cli(lambda: words_config(config["words"]))
WORDS_LOGS = run_cli(lambda: log_paths(WORDS_CFG.logs, REPO)) if WORDS_CFG.logs else []
WORDS_OUTPUTS = [
    "results/words/word_effects.parquet",
    "results/words/causal_word_effects.json",
    "results/words/volcano",
]


wildcard_constraints:
    layer=r"\d+",
    shard=r"s\d+",
    feature=r"L\d+-\d+",
    prompt=SAFE_ID.pattern.strip("^$"),


# --- params: each job gets only the keys it reads, so changing a key reruns only its readers ---


def pick(section, *keys):
    """The named keys of one config section (every key when none are named)."""
    s = config[section]
    return {k: s[k] for k in keys} if keys else dict(s)


def sae_source():
    """Where the SAEs are: sae.SAESource(**sae_source())."""
    return pick("saes", "path", "format")


def replay_settings(stage):
    """replay.ReplaySettings(**replay_settings(stage)) for the replay or the screen (which uses
    its own max_new_tokens and captures nothing)."""
    r = config["replay"]
    out = dict(
        temperature=r["temperature"],
        batch_size=r["batch_size"],
        task=config["task"],
        parser=config["parser"],
        mode=r["mode"],
        positions=r["positions"],
        engine=r["engine"],
    )
    if stage == "screen":
        return {**out, "max_new_tokens": config["screen"]["max_new_tokens"]}
    return {
        **out,
        "max_new_tokens": r["max_new_tokens"],
        "capture_layers": LAYERS,
        "capture": r["capture"]["generated"],
        "top_logits": r["top_logits"],
    }


# --- inputs -------------------------------------------------------------------------------------


def features_table():
    """The feature table downstream stages read: the user's, else the one Exp1 computes."""
    return config["features"].get("table") or "results/exp1/features.parquet"


def selection_input():
    """What select_features ranks: the screen's verdicts when the screen runs."""
    return (
        "results/screen/features.parquet"
        if config["screen"]["enabled"]
        else features_table()
    )


def table_columns(path):
    """The user's column mapping applies to the user's table only, not to tables we wrote."""
    return (
        config["features"].get("columns") or {}
        if path == config["features"].get("table")
        else {}
    )


class Plan(NamedTuple):
    """The replay plan as the input functions ask for it: built once per version of the file."""

    path: str
    shards: list  # sorted
    prompts: list  # sorted
    features: list  # sorted
    shard_prompts: dict  # shard -> its prompts, sorted
    feature_shard: dict  # feature -> its shard
    feature_prompts: dict  # feature -> its prompts, sorted


@cache
def _read_plan(path, mtime_ns):
    df = pd.read_csv(path, sep="\t", usecols=["feature", "shard", "prompt_id"])

    def prompts_by(key):
        return {k: sorted(set(g)) for k, g in df.groupby(key)["prompt_id"]}

    return Plan(
        path,
        sorted(df["shard"].unique()),
        sorted(df["prompt_id"].unique()),
        sorted(df["feature"].unique()),
        prompts_by("shard"),
        dict(zip(df["feature"], df["shard"])),
        prompts_by("feature"),
    )


def _plan():
    """The replay plan, read once per version of the file however many jobs ask for it."""
    path = checkpoints.select_prompts.get().output.plan
    return _read_plan(path, os.stat(path).st_mtime_ns)


def replay_shards(wildcards=None):
    return _plan().shards


def replay_prompts(wildcards=None):
    return _plan().prompts


def selected_features(wildcards=None):
    return _plan().features


def baseline_trials(prompts):
    return [f"results/replay/baseline/{p}/trials.parquet" for p in sorted(prompts)]


def codes(parts, layers=LAYERS):
    """The codes files of the given parts (`baseline/<prompt>`, `patched/<shard>`), layer by layer."""
    return [f"results/encode/{p}/L{t}.parquet" for t in layers for p in parts]


def patched_inputs(wildcards):
    """A shard's plan, and the baseline trials of its prompts (their tokens are what its
    teacher-forced runs are fed)."""
    plan = _plan()
    return {
        "prompts": config["prompts"]["file"],
        "plan": plan.path,
        "selected": "results/features/selected.tsv",
        "baseline": baseline_trials(plan.shard_prompts[wildcards.shard]),
    }


def encode_patched_inputs(wildcards):
    """A shard's states and trials, and the states and trials of its prompts' baselines (the
    read-through adds each patch's step to its baseline partner's states)."""
    prompts = _plan().shard_prompts[wildcards.shard]
    return {
        "states": [
            f"results/replay/patched/{wildcards.shard}/L{t}.safetensors" for t in LAYERS
        ],
        "trials": f"results/replay/patched/{wildcards.shard}/trials.parquet",
        "baseline_states": [
            f"results/replay/baseline/{p}/L{t}.safetensors"
            for t in LAYERS
            for p in prompts
        ],
        "baseline_trials": baseline_trials(prompts),
    }


def effects_inputs(wildcards):
    """A feature's trials and the codes of only the parts they sit in: its shard and its
    prompts' baselines, at every layer (upstream layers: a control)."""
    plan = _plan()
    shard = plan.feature_shard[wildcards.feature]
    prompts = plan.feature_prompts[wildcards.feature]
    return {
        "plan": plan.path,
        "patched": f"results/replay/patched/{shard}/trials.parquet",
        "baseline": baseline_trials(prompts),
        "codes": codes([f"baseline/{p}" for p in prompts] + [f"patched/{shard}"]),
        "passthrough": codes([f"passthrough/{shard}"]),
    }


def placebo_inputs(wildcards=None):
    """Every replayed prompt's baseline trials and codes, and the plan (which prompt sets exist)."""
    prompts = replay_prompts()
    return {
        "plan": _plan().path,
        "baseline": baseline_trials(prompts),
        "codes": codes([f"baseline/{p}" for p in prompts]),
    }


def behaviour_prompts():
    """The prompts the behaviour replay runs on: behaviour.prompts, else the screen's, else all."""
    b, s = config["behaviour"], config["screen"]
    if b["prompts"]:
        return list(b["prompts"])
    if s["enabled"] and s["prompts"]:
        return list(s["prompts"])
    return sorted(read_prompt_ids(config["prompts"]["file"]))


def behaviour_plan_inputs(wildcards=None):
    """The selection, and the screen's behaviour (the effect sizes the trials are planned from)."""
    out = {
        "selected": "results/features/selected.tsv",
        "prompts": config["prompts"]["file"],
    }
    if config["screen"]["enabled"]:
        out["screen"] = "results/screen/behaviour.parquet"
    return out


def behaviour_inputs(wildcards=None):
    return {
        "plan": "results/behavior/plan.tsv",
        "baseline": "results/behavior/trials/baseline.parquet",
        "trials": [f"results/behavior/trials/{s}.parquet" for s in replay_shards()],
    }


def quality_inputs(wildcards=None):
    """Every baseline part's partial quality sums, layer by layer, prompts sorted: the order
    sae_quality merges them in."""
    return [
        f"results/qc/sae_quality/{p}/L{t}.safetensors"
        for t in LAYERS
        for p in replay_prompts()
    ]


def pathway_inputs(wildcards=None):
    return {
        "gates": "results/qc/gates.tsv",
        "placebo": "results/qc/placebo.parquet",
        "plan": _plan().path,
        "sae_quality": "results/qc/sae_quality.tsv",
        "patched_quality": [
            f"results/qc/patched_quality/{s}.tsv" for s in replay_shards()
        ],
        "effects": [f"results/effects/{f}.parquet" for f in selected_features()],
        "upstream": [
            f"results/effects/{f}.upstream.parquet" for f in selected_features()
        ],
        "patched": [
            f"results/replay/patched/{s}/trials.parquet" for s in replay_shards()
        ],
    }


def mediate_inputs(wildcards=None):
    return {
        "chains": "results/pathways/chains.tsv",
        "edges": "results/pathways/edges.parquet",
        "prompts": config["prompts"]["file"],
        "plan": checkpoints.select_prompts.get().output.plan,
        "selected": "results/features/selected.tsv",
        "baseline": baseline_trials(replay_prompts()),
    }


def report_inputs(wildcards=None):
    return {
        "edges": "results/pathways/edges.parquet",
        "paths": "results/pathways/paths.tsv",
        "behaviour": "results/behavior/effects.parquet",
        "plan": checkpoints.select_prompts.get().output.plan,
    }


def default_targets():
    """The pathways and their checks; the demo's figures when the demo model is in use; the
    words when words.logs lists files."""
    return (
        (["results/qc/demo_figures.tsv"] if DEMO else [])
        + [
            "results/pathways/edges.parquet",
            "results/pathways/paths.tsv",
            "results/pathways/layers.tsv",
            "results/behavior/effects.parquet",
            "results/qc/null.tsv",
            "results/qc/upstream.tsv",
            "results/qc/patch_fidelity.tsv",
            "results/qc/patched_quality.tsv",
            "results/qc/gates.tsv",
            "results/qc/sae_quality.tsv",
            "results/report/pathways.svg",
            "results/report/sources",
            "results/report/checks/sae_quality.html",
        ]
        + (WORDS_OUTPUTS if WORDS_LOGS else [])
    )
