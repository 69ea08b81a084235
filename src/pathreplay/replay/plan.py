"""What the replay will do: which features, on which prompts, under which conditions, and what
the captures will cost, all decided before any GPU work."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd

from ..errors import fail
from ..features import feature_name
from .prompts import Prompt

VALUE_COLUMNS = ("safe_value", "risky_value")
# what a patch reads of a selected feature; the replay plan carries them, so a job needs no other table
PATCH_COLUMNS = ("feature", "layer", "feature_id", "shard", *VALUE_COLUMNS)
Strategy = Literal["fixed", "top_activation"]  # how prompts.strategy picks a feature's prompts
_COND = re.compile(r"^\s*(?:(?P<k>[0-9]*\.?[0-9]+)\s*\*\s*)?(?P<col>[a-z_]+)\s*$")


class Condition(NamedTuple):
    """A patch target: `scale` times a value column of the feature table."""

    name: str
    column: str
    scale: float


SHAM, PLACEBO = "sham", "placebo"  # the replay's controls, beside random:<condition>


def random_condition(condition: str) -> str:
    """The name of a condition's random-direction control."""
    return f"random:{condition}"


def control_of(condition: str) -> str:
    """What a condition is: `real` (a replay condition), or the control `sham`, `random`, `placebo`."""
    if condition in (SHAM, PLACEBO):
        return condition
    return "random" if condition.startswith("random:") else "real"


def parse_conditions(names: Sequence[str], where: str = "replay.conditions") -> list[Condition]:
    """Parse condition names such as `risky_value` or `2*safe_value`."""
    out = []
    for name in names:
        m = _COND.match(name)
        if not m or m.group("col") not in VALUE_COLUMNS:
            fail(where, f"unknown condition {name!r}",
                 f"name a value column ({', '.join(VALUE_COLUMNS)}) or a multiple like 2*risky_value")
        out.append(Condition(name.replace(" ", ""), m.group("col"), float(m.group("k") or 1.0)))
    return out


def check_targets(table: pd.DataFrame, conditions: Sequence[Condition], thresholds: Mapping[str, float],
                  where: str) -> None:
    """A clamp reads its target back, so a target the feature can never read (non-zero, at or
    below its threshold; thresholds: feature name -> threshold) is refused before any patch;
    0 (ablation) stays allowed. Other modes move h by an amount the SAE defines for any value."""
    for row in table.itertuples():
        name = feature_name(row.layer, row.feature_id)
        for c in conditions:
            v = c.scale * float(getattr(row, c.column))
            if v != 0 and v <= thresholds[name]:
                fail(where, f"{name}'s target under {c.name} is {v:.4g}, at or below its threshold "
                     f"{thresholds[name]:.4g}: a clamp can never read it back",
                     "use a larger multiple (e.g. 3*" + c.column + "), replay.mode: decoder (the SAE's own edit, "
                     "for any value), or leave the feature out")


def _filters(table: pd.DataFrame, sae_layers: Sequence[int], layers: Sequence[int] | None,
             labels: Sequence[str] | None, min_abs_d: float) -> list[tuple[str, Callable[[pd.DataFrame], Any]]]:
    """The selection's filters in turn: (why a feature is left out, the rows it keeps)."""
    out: list[tuple[str, Callable[[pd.DataFrame], Any]]] = [
        ("at or past the last SAE layer (nothing downstream to read)", lambda x: x["layer"] < max(sae_layers))]
    if layers:
        out.append((f"not in select.layers {list(layers)}", lambda x: x["layer"].isin(layers)))
    if labels:
        out.append((f"not labelled {list(labels)} (labels here: {sorted(set(table['label'].astype(str)))})",
                    lambda x: x["label"].isin(labels)))
    out.append((f"|cohen_d| below select.min_abs_d {min_abs_d}", lambda x: x["cohen_d"].abs() >= min_abs_d))
    return out


def select_features(table: pd.DataFrame, *, top_n: int, shard_size: int, sae_layers: Sequence[int],
                    layers: Sequence[int] | None = None, labels: Sequence[str] | None = None,
                    per_layer_cap: int | None = None, min_abs_d: float = 0.0) -> pd.DataFrame:
    """Top features by |cohen_d| after the filters, with a rank and a shard each.

    Features at the last SAE layer are left out: nothing downstream of them can be read."""
    t = table
    for _, keep in _filters(table, sae_layers, layers, labels, min_abs_d):
        t = t[keep(t)]
    t = t.assign(abs_d=t["cohen_d"].abs()).sort_values(["abs_d", "layer", "feature_id"],
                                                       ascending=[False, True, True])
    if per_layer_cap:
        t = t.groupby("layer", sort=False).head(per_layer_cap)
    t = t.head(top_n).drop(columns="abs_d").reset_index(drop=True)
    t.insert(0, "feature", [feature_name(a, b) for a, b in zip(t["layer"], t["feature_id"])])
    t["rank"] = np.arange(len(t))
    t["shard"] = [f"s{r // shard_size:03d}" for r in t["rank"]]
    return t


def select_or_fail(table: pd.DataFrame, sel: Mapping[str, Any], sae_layers: Sequence[int], where: str
                   ) -> pd.DataFrame:
    """select_features with the config's `select` section; an empty selection is one line that
    says how many of the table's features each filter removed."""
    kept = select_features(table, top_n=sel["top_n"], shard_size=sel["shard_size"], sae_layers=sae_layers,
                           layers=sel["layers"] or None, labels=sel["labels"] or None,
                           per_layer_cap=sel["per_layer_cap"] or None, min_abs_d=sel["min_abs_d"])
    if kept.empty:
        t, why = table, []
        for what, keep in _filters(table, sae_layers, sel["layers"], sel["labels"], sel["min_abs_d"]):
            left = t[keep(t)]
            if len(left) < len(t):
                why.append(f"{len(t) - len(left)} {what}")
            t = left
        counts = f"{len(table)} features" + (": " + "; ".join(why) if why else "")
        fail("select", f"no feature of {where} passes the selection ({counts})",
             "loosen select.layers, select.labels or select.min_abs_d")
    return kept


def stable_seed(*parts: Any) -> int:
    """A seed derived from names, identical on every machine and Python run."""
    h = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") & 0x7FFF_FFFF_FFFF


Stream = Literal["screen", "replay", "placebo", "behaviour"]  # seed streams: the screen's trials never reappear


def trial_seed(seed: int, prompt_id: str, trial: int, stream: Stream) -> int:
    """The seed of trial `trial` on a prompt in one stream: shared by the baseline and every
    patched condition of that stream (coupled sampling). The screen and the replay draw from
    streams of their own, so a replay never re-draws the trials that selected its features."""
    return stable_seed(seed, stream, prompt_id, trial)


class Job(NamedTuple):
    """One trial to run: a prompt, a seed, and the patch target (NaN: no patch)."""

    prompt_id: str
    context: str
    text: str
    condition: str
    trial: int
    seed: int
    value: float = math.nan


def baseline_jobs(prompts: Sequence[Prompt], trials: int, seed: int, stream: Stream = "replay",
                  condition: str = "baseline") -> list[Job]:
    """Unpatched jobs: every prompt x trial on one seed stream."""
    return [Job(p.id, p.context, p.text, condition, t, trial_seed(seed, p.id, t, stream))
            for p in prompts for t in range(trials)]


def patched_jobs(prompts: Sequence[Prompt], row: Any, conditions: Sequence[Condition],
                 trials: int, seed: int, stream: Stream = "replay") -> list[Job]:
    """Jobs of one feature (a feature-table row): every prompt x condition x trial, each trial on
    the seed of the baseline trial it is compared with."""
    return [Job(p.id, p.context, p.text, c.name, t, trial_seed(seed, p.id, t, stream),
                c.scale * float(getattr(row, c.column)))
            for p in prompts for c in conditions for t in range(trials)]


def trial_blocks(trials: int, batch_size: int) -> list[range]:
    """Trials 0 .. trials - 1 cut into blocks of at most batch_size: how every job batches a
    prompt's trials, so a trial and its coupled partners share a batch's shapes."""
    return [range(a, min(a + batch_size, trials)) for a in range(0, trials, batch_size)]


def prompts_for_features(features: pd.DataFrame, prompts: Sequence[Prompt], k: int,
                         strategy: Strategy = "fixed", activations: Mapping[str, np.ndarray] | None = None
                         ) -> pd.DataFrame:
    """K prompts per feature, alternating between contexts so each is represented.

    `fixed` takes prompts in file order; `top_activation` takes those where the feature is most
    active at the last prompt position (activations: feature name -> one value per prompt)."""
    by_ctx: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        by_ctx.setdefault(p.context, []).append(i)
    rows = []
    for feat in features["feature"]:
        if strategy == "top_activation":
            if activations is None:
                raise ValueError("top_activation needs activations")
            act = activations[feat]
            order = {c: sorted(ix, key=lambda i: -act[i]) for c, ix in by_ctx.items()}
        elif strategy == "fixed":
            order = by_ctx
        else:
            fail("prompts.strategy", f"unknown strategy {strategy!r}", "use fixed or top_activation")
        picked: list[int] = []
        queues = [list(v) for v in order.values()]
        while len(picked) < min(k, len(prompts)):
            for q in queues:
                if q and len(picked) < k:
                    picked.append(q.pop(0))
        rows += [{"feature": feat, "prompt_id": prompts[i].id, "context": prompts[i].context}
                 for i in picked]
    return pd.DataFrame(rows, columns=["feature", "prompt_id", "context"])


class CaptureSpec(NamedTuple):
    """Which generated positions to keep: all, the first k, or every stride-th."""

    kind: Literal["all", "first", "stride"]
    k: int

    @classmethod
    def parse(cls, text: str) -> "CaptureSpec":
        if text == "all":
            return cls("all", 0)
        m = re.fullmatch(r"(first|stride):(\d+)", text)
        if not m or int(m.group(2)) < 1:
            fail("replay.capture.generated", f"unknown value {text!r}", "use all, first:K or stride:K")
        return cls("first" if m.group(1) == "first" else "stride", int(m.group(2)))

    def positions(self, max_new_tokens: int) -> list[int]:
        """Generated-token indices kept (token t's residual is read when it is fed back)."""
        n = max(0, max_new_tokens - 1)  # the last sampled token is never fed back
        idx = list(range(n))
        if self.kind == "first":
            return idx[: self.k]
        if self.kind == "stride":
            return idx[:: self.k]
        return idx


def capture_bytes(rows: int, positions: int, layers: int, d_model: int) -> int:
    """fp16 bytes of the captured residuals: the last prompt position plus kept positions."""
    return rows * (1 + positions) * layers * d_model * 2


def describe(config: Mapping[str, Any], n_prompts: int, estimate: str, repo: str) -> str:
    """One screen that says what the run will do, for the end of a dry run: the model, the SAEs, the
    task and the prompts (and whose they are), where the features come from, the conditions, the
    trials, and what the captures will write."""
    m, s, r, sel, p = config["model"], config["saes"], config["replay"], config["select"], config["prompts"]
    demo = str(p["file"]).startswith(repo.rstrip("/") + "/resources/demo/")
    whose = "the demo's own" if demo else "yours"
    table = config["features"].get("table")
    source = f"your table {table}" if table else "Exp1's games on this model"
    if config["screen"]["enabled"]:
        source += f", screened ({config['screen']['top_n']} candidates, {len(config['screen']['conditions'])} conditions)"
    rows = [("model", f"{m['path']} ({m['dtype']})"),
            ("SAEs", f"{s.get('release') or s['path']} ({s['format']}, layers {s['layers'][0]}..{s['layers'][-1]}, "
                     f"{len(s['layers'])} of them)"),
            ("task", f"{config['task']} (parser {config['parser']})"),
            ("prompts", f"{p['file']}: {n_prompts} prompts, {whose}; {p['per_feature']} per feature ({p['strategy']})"),
            ("features", f"{source}; at most {sel['top_n']} replayed, {sel['shard_size']} a shard"),
            ("conditions", f"{', '.join(r['conditions'])} (mode {r['mode']}, positions {r['positions']}), each with its "
                           "random control, a sham, sampled and teacher-forced"),
            ("trials", f"{r['trials']} per (feature, prompt, condition), {r['max_new_tokens']} new tokens; behaviour "
                       f"{config['behaviour']['min_trials']}-{config['behaviour']['max_trials']} an arm, planned"),
            ("writes", estimate)]
    width = max(len(k) for k, _ in rows)
    lines = [f"  {k.ljust(width)}  {v}" for k, v in rows]
    return "pathreplay: what this run will do (the replay's jobs join the table above once select_prompts has run)\n" \
        + "\n".join(lines)


def is_dry_run(argv: Sequence[str]) -> bool:
    """Whether Snakemake's command line asks for a dry run (-n, --dry-run, or -n among short flags);
    the Snakefile is read before Snakemake says so itself."""
    return any(a in ("-n", "--dry-run", "--dryrun") or (a.startswith("-") and not a.startswith("--") and "n" in a)
               for a in argv[1:])


class PlanIndex(NamedTuple):
    """The replay plan as the workflow's input functions ask for it."""

    shards: list[str]  # sorted
    prompts: list[str]  # sorted
    features: list[str]  # sorted
    shard_prompts: dict[str, list[str]]  # shard -> its prompts, sorted
    feature_shard: dict[str, str]  # feature -> its shard
    feature_prompts: dict[str, list[str]]  # feature -> its prompts, sorted
    shard_features: dict[str, list[str]]  # shard -> its features, in the plan's order


def index_plan(plan: pd.DataFrame) -> PlanIndex:
    """Index a plan table (feature, shard, prompt_id) by shard, prompt and feature."""
    def prompts_by(key: str) -> dict[str, list[str]]:
        return {k: sorted(set(g)) for k, g in plan.groupby(key)["prompt_id"]}

    return PlanIndex(sorted(plan["shard"].unique()), sorted(plan["prompt_id"].unique()),
                     sorted(plan["feature"].unique()), prompts_by("shard"), dict(zip(plan["feature"], plan["shard"])),
                     prompts_by("feature"), {k: list(dict.fromkeys(g)) for k, g in plan.groupby("shard")["feature"]})


def records(table: pd.DataFrame, columns: Sequence[str], **where: Any) -> list[dict[str, Any]]:
    """The rows whose columns equal (or, given a list, are in) `where`, as records of `columns`, in
    the table's order: what a job gets of a plan as its params."""
    for key, value in where.items():
        table = table[table[key].isin(value) if isinstance(value, list) else table[key] == value]
    return table[list(columns)].to_dict("records")
