# Shared setup: the config checked once, the params each rule's job reads, and the input
# functions that read the selection checkpoints. Included first by the Snakefile.
import atexit
import os
import sys
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.0")

REPO = Path(workflow.basedir).parent  # the Snakefile sits in workflow/
# envs/pathreplay.yaml installs the package from here (its copy in .snakemake/conda/ cannot say ..)
os.environ.update(PATHREPLAY_ROOT=str(REPO))  # set here, for conda: no user need set it

try:
    from pathreplay.config import check_config, replay_estimate
    from pathreplay.errors import UserError, run_cli
    from pathreplay.replay.plan import (
        PATCH_COLUMNS,
        describe,
        index_plan,
        is_dry_run,
        records,
    )
    from pathreplay.replay.prompts import SAFE_ID, read_prompt_ids
    from pathreplay.report.links import link_templates
    from pathreplay.sae.registry import apply_release
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
    # a sae-lens release fills path and format
    neuronpedia = apply_release(config["saes"])
    links = link_templates(
        config["features"]["links"], config["saes"]["layers"], neuronpedia
    )
    main = workflow.is_main_process
    checked = check_config(
        config,
        REPO,
        jobs_here=workflow.local_exec,
        cache=Path(".snakemake") / "pathreplay-weights.json",
        full=main,
    )
    return (replay_estimate(config, checked) if main else ""), links


ESTIMATE, FEATURE_LINKS = run_cli(_check_config)
if ESTIMATE:
    print(f"pathreplay: {ESTIMATE}", file=sys.stderr)
    # a dry run ends with what the run will do, after the table of jobs
    if is_dry_run(sys.argv):
        N_PROMPTS = len(read_prompt_ids(config["prompts"]["file"]))
        atexit.register(
            print, describe(config, N_PROMPTS, ESTIMATE, str(REPO)), flush=True
        )

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


# Cheap rules run where snakemake runs, never as a cluster job (plans, gates, summaries, pages).
localrules:
    all,
    select_features,
    behaviour_plan,
    sae_quality,
    qc_gates,
    behaviour,
    report_checks,
    report_overview,


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


# The replay plan (a checkpoint), read once per version of the file. A job takes its rows of it as
# params and the file as an `ancient` input (which orders the job after it and never reruns it by
# the file's time): a re-made plan with the same rows reruns nothing, one with new rows reruns
# the jobs whose rows changed. The plan carries what a patch reads of each feature (PATCH_COLUMNS),
# so no job past it reads the selection.


@cache
def _read_tsv(path, mtime_ns):
    return pd.read_csv(path, sep="\t")


def plan_file():
    """The replay plan as an input: after it, never rerun by its time."""
    return ancient(checkpoints.select_prompts.get().output[0])


def plan_rows(columns, **where):
    """The replay plan's rows whose columns equal (or, given a list, are in) `where`, as records of
    `columns`, in its order."""
    path = checkpoints.select_prompts.get().output[0]
    return records(_read_tsv(path, os.stat(path).st_mtime_ns), columns, **where)


def selection_rows(**where):
    """The replayed features' rows whose columns equal `where` (what a patch reads of each: the plan
    carries it), once each, in the plan's order."""
    first = {}
    for row in plan_rows(PATCH_COLUMNS, **where):
        first.setdefault(row["feature"], row)
    return list(first.values())


@cache
def _plan_of(path, mtime_ns):
    return index_plan(_read_tsv(path, mtime_ns))


def _plan():
    path = checkpoints.select_prompts.get().output[0]
    return _plan_of(path, os.stat(path).st_mtime_ns)


def replay_shards(wildcards=None):
    return _plan().shards


def replay_prompts(wildcards=None):
    return _plan().prompts


def selected_features(wildcards=None):
    return _plan().features


def prompt_sets(wildcards=None):
    """Each distinct set of prompts a feature was replayed on, once, sorted."""
    return [
        list(s) for s in sorted({tuple(v) for v in _plan().feature_prompts.values()})
    ]


def baseline_trials(prompts):
    return [f"results/replay/baseline/{p}/trials.parquet" for p in sorted(prompts)]


def codes(parts, layers=LAYERS):
    """The codes files of the given parts (`baseline/<prompt>`, `patched/<shard>`), layer by layer."""
    return [f"results/encode/{p}/L{t}.parquet" for t in layers for p in parts]


def patched_inputs(wildcards):
    """A shard's baseline trials (their tokens are what its teacher-forced runs are fed)."""
    return {
        "prompts": config["prompts"]["file"],
        "plan": plan_file(),
        "baseline": baseline_trials(_plan().shard_prompts[wildcards.shard]),
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
        "patched": f"results/replay/patched/{shard}/trials.parquet",
        "baseline": baseline_trials(prompts),
        "codes": codes([f"baseline/{p}" for p in prompts] + [f"patched/{shard}"]),
        "passthrough": codes([f"passthrough/{shard}"]),
    }


def placebo_inputs(wildcards=None):
    """Every replayed prompt's baseline trials and codes."""
    prompts = replay_prompts()
    return {
        "plan": plan_file(),
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
    """The replay plan (its features are the ones planned), and the screen's behaviour (the effect
    sizes the trials are planned from)."""
    out = {
        "plan": plan_file(),
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
        "placebo_floors": "results/qc/placebo_floors.tsv",
        "plan": plan_file(),
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
        "plan": plan_file(),
        "baseline": baseline_trials(replay_prompts()),
    }


def attribution_inputs(wildcards=None):
    """Every source's predictions and effects, the edges and the mediation, and for the noise
    ceiling every replay part's trials and codes (forced pairs split in halves)."""
    plan = _plan()
    parts = [f"baseline/{p}" for p in plan.prompts]
    parts += [f"patched/{s}" for s in plan.shards]
    return {
        "plan": plan_file(),
        "edges": "results/pathways/edges.parquet",
        "paths": "results/pathways/paths.tsv",
        "predictions": [f"results/attribution/{f}.parquet" for f in plan.features],
        "shares": [f"results/attribution/{f}.shares.tsv" for f in plan.features],
        "effects": [f"results/effects/{f}.parquet" for f in plan.features],
        "patched": [f"results/replay/patched/{s}/trials.parquet" for s in plan.shards],
        "baseline": baseline_trials(plan.prompts),
        "codes": codes(parts),
        "passthrough": codes([f"passthrough/{s}" for s in plan.shards]),
    }


def report_inputs(wildcards=None):
    return {
        "edges": "results/pathways/edges.parquet",
        "paths": "results/pathways/paths.tsv",
        "behaviour": "results/behavior/effects.parquet",
        "plan": plan_file(),
    }


def overview_inputs(wildcards=None):
    """What the first page's findings are read from, and the report's own text."""
    return {
        "text": str(REPO / "report" / "workflow.rst"),
        "edges": "results/pathways/edges.parquet",
        "paths": "results/pathways/paths.tsv",
        "layers": "results/pathways/layers.tsv",
        "behaviour": "results/behavior/effects.parquet",
        "gates": "results/qc/gates.tsv",
        "null": "results/qc/null.tsv",
        "upstream": "results/qc/upstream.tsv",
        "plan": plan_file(),
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
            "results/report/overview.rst",
            "results/attribution/agreement.tsv",
            "results/attribution/triage.tsv",
            "results/report/attribution",
        ]
        + (WORDS_OUTPUTS if WORDS_LOGS else [])
    )


def every_file(wildcards=None):
    """Every file the default targets are made from (rule all names both). Snakemake leaves a lost
    intermediate alone while what was made from it is up to date, and re-makes it once a target
    names it: so a deleted part is re-made by a plain rerun, and only it and what reads it.
    """
    each = [
        pathway_inputs(),
        mediate_inputs(),
        placebo_inputs(),
        behaviour_inputs(),
        behaviour_plan_inputs(),
        attribution_inputs(),
        {"quality": quality_inputs(), "tables": [selection_input(), features_table()]},
        {"selected": "results/features/selected.tsv"},
    ]
    each += [effects_inputs(SimpleNamespace(feature=f)) for f in selected_features()]
    each += [encode_patched_inputs(SimpleNamespace(shard=s)) for s in replay_shards()]
    words = [f"results/words/shards/{i}.parquet" for i in range(WORDS_CFG.shards)]
    files = set(words if WORDS_LOGS else [])
    for inputs in each:
        for v in inputs.values():
            files.update([str(v)] if isinstance(v, str) else map(str, v))
    return sorted(files)
