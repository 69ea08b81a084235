"""Configuration checks that the JSON schema cannot express, run once when the workflow starts."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .errors import UserError, fail, first_line
from .features import read_feature_table, validate_feature_table
from .io import write_json
from .replay.plan import CaptureSpec, capture_bytes, parse_conditions, select_or_fail
from .replay.prompts import Prompt, read_prompts
from .runtime.model import check_model, check_prompt_lengths
from .sae.exact import SAESource
from .sae.files import SAEMeta, check_tensors, nonfinite_weights, weights_file
from .task import check_task, load_task


def resolve(path: str, repo: Path) -> str:
    """A relative path that exists under the working directory or else the repository, made
    absolute; anything else (a hub id, an output yet to be made) is returned unchanged."""
    p = Path(path)
    if p.is_absolute():
        return str(p)
    for base in (Path.cwd(), repo):
        if (base / p).exists():
            return str((base / p).resolve())
    return path


def sae_metas(config: Mapping[str, Any]) -> dict[int, SAEMeta]:
    """Metadata of every configured SAE layer, each checked against its own hook point and
    against its weights' shapes and dtypes (their file's header)."""
    s = config["saes"]
    source = SAESource(s["path"], s["format"])
    metas = {layer: source.meta(layer) for layer in s["layers"]}
    for meta in metas.values():
        check_tensors(meta)
    return metas


def check_weights(metas: Iterable[SAEMeta], cache: Path | None = None) -> None:
    """Refuse an SAE whose weights are not all finite (or cannot be read whole). Each file is
    read once: `cache` (a JSON file) remembers the files that passed by their size and mtime; a
    cache that cannot be read is taken as empty."""
    seen = _read_cache(cache)
    passed = dict(seen)
    try:
        for meta in metas:
            f = weights_file(meta)
            st = f.stat()
            key, stamp = str(f.resolve()), [st.st_size, st.st_mtime_ns]
            if seen.get(key) == stamp:
                continue
            bad = {name: n for name, n in nonfinite_weights(meta).items() if n}
            if bad:
                fail(str(f), f"holds non-finite weights ({', '.join(f'{k}: {v} values' for k, v in bad.items())})",
                     "download the SAE again, or leave this layer out of saes.layers")
            passed[key] = stamp
    finally:  # the files that passed are remembered even when a later one fails
        if cache is not None and passed != seen:
            write_json(passed, cache)


def _read_cache(cache: Path | None) -> dict[str, Any]:
    """The weights cache's {file: [size, mtime]}; {} when absent, unreadable or not such a map
    (it is only ever a shortcut: the files are read again)."""
    try:
        seen = json.loads(cache.read_text()) if cache is not None and cache.exists() else {}
    except (OSError, ValueError):
        return {}
    return seen if isinstance(seen, dict) else {}


class Checked(NamedTuple):
    """What the start's checks read, for the capture estimate: the SAEs' metadata and the prompts."""

    metas: dict[int, SAEMeta]
    prompts: list[Prompt]


@contextmanager
def _checking(what: str) -> Iterator[None]:
    """Run one start-of-run check; an exception that its readers did not turn into a UserError
    becomes one naming `what` (the last line of defence: each reader names its own errors)."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever a reader let through is still one line
        fail(what, f"the start-of-run checks failed on it ({type(e).__name__}: {first_line(e)})",
             "check the files it names; if they are right, report this line as a pathreplay bug")


def resolve_paths(config: dict[str, Any], repo: Path) -> None:
    """Make the config's relative paths absolute in place where they exist under the working
    directory or the repository (an SAE template by its folder above `{layer}`); hub ids and
    paths that exist nowhere are kept."""
    for section, key in (("model", "path"), ("saes", "path"), ("prompts", "file"), ("features", "table")):
        sec = config.get(section) or {}
        if not sec.get(key):
            continue
        if section != "saes":
            sec[key] = resolve(sec[key], repo)
            continue
        base, _, rest = sec[key].partition("{layer}")
        parent = resolve(os.path.dirname(base) or ".", repo)
        if parent != (os.path.dirname(base) or "."):
            sec[key] = os.path.join(parent, os.path.basename(base)) + "{layer}" + rest
        elif not os.path.isabs(base):  # a typo under a local folder is no hub id
            first = Path(base).parts[0] if Path(base).parts else ""
            local = [b for b in (Path.cwd(), repo) if first and (b / first).is_dir()]
            if local:
                sec[key] = str(local[0] / sec[key])
    if str(config.get("task", "")).endswith(".py"):  # a task in a file of the user's
        config["task"] = resolve(config["task"], repo)


def check_config(config: dict[str, Any], repo: Path, *, jobs_here: bool = True, cache: Path | None = None,
                 full: bool = True) -> Checked:
    """Resolve paths in place and (unless not `full`: a job of a cluster run, checked when the run
    started) check everything that needs no model weights: the SAEs (their metadata, against
    their weights' headers and the model's config, their weights once), the model's tokenizer,
    the device where jobs run here, the prompts, the feature table and, where it is the user's,
    the selection. Every refusal is one UserError; none of these checks raises anything else."""
    with _checking("the config's paths (model.path, saes.path, prompts.file, features.table, task)"):
        resolve_paths(config, repo)
    if not full:
        return Checked({}, [])
    if config.get("task"):
        with _checking(f"task={config['task']!r}"):
            _check_task(config)
    if jobs_here and config.get("device") == "cuda" and not torch.cuda.is_available():
        fail("device", "cuda was asked for but no GPU is visible here, where the jobs run",
             "set device: auto or cpu, or run where a GPU is")
    metas: dict[int, SAEMeta] = {}
    if "saes" in config:
        with _checking(f"saes.path={config['saes']['path']!r}"):
            metas = _check_saes(config, cache)
    prompts: list[Prompt] = []
    if config.get("prompts", {}).get("file"):
        with _checking(f"prompts.file={config['prompts']['file']!r}"):
            prompts = check_prompts(config)
    table = (config.get("features") or {}).get("table")
    if table and "saes" in config:
        with _checking(f"features.table={table!r}"):
            _check_table(config, table, metas)
    return Checked(metas, prompts)


def _check_task(config: Mapping[str, Any]) -> None:
    """The task loads, knows the parser, and has a way to find features."""
    task = load_task(config["task"])
    check_task(task, config.get("parser", "first"))
    if not task.exp1 and not (config.get("features") or {}).get("table"):
        fail("features.table", f"task {config['task']!r} plays no Exp1 games to find features with",
             "give a feature table (features.table), or use task: slot_machine")


def _check_saes(config: Mapping[str, Any], cache: Path | None) -> dict[int, SAEMeta]:
    """The SAEs' metadata (against their weights' headers), one d_model, finite weights, and the
    model's config against them (an error no check named there is named for model.path)."""
    metas = sae_metas(config)
    d_models = {m.d_model for m in metas.values()}
    if len(d_models) > 1:
        fail(f"saes.path={config['saes']['path']!r}", f"the SAEs disagree on d_model ({sorted(d_models)})",
             "use SAEs of one model")
    check_weights(metas.values(), cache)
    m = config.get("model") or {}
    if m.get("path"):
        with _checking(f"model.path={m['path']!r}"):
            check_model(m["path"], sorted(metas), d_models.pop(), bool(m.get("trust_remote_code")))
    return metas


def _check_table(config: Mapping[str, Any], table: str, metas: Mapping[int, SAEMeta]) -> None:
    """The feature table against the SAEs, and the selection where it is the user's."""
    f = config["features"]
    df = read_feature_table(table, f.get("columns") or None)
    validate_feature_table(df, table, sae_layers={k: (m.d_model, m.d_sae) for k, m in metas.items()},
                           relu_family=all(m.activation != "topk" for m in metas.values()),
                           allow_suspicious=bool(f.get("allow_suspicious")))
    if not (config.get("screen") or {}).get("enabled") and "select" in config:
        select_or_fail(df, config["select"], sorted(metas), table)


def check_prompts(config: Mapping[str, Any]) -> list[Prompt]:
    """The prompts file, the screen's prompt ids, and every prompt's length with its generation
    against the model's context (its tokenizer and config only, no weights); the prompts."""
    path = config["prompts"]["file"]
    prompts = read_prompts(path)
    screen = config.get("screen") or {}
    on = bool(screen.get("enabled"))
    missing = [i for i in (screen.get("prompts") or []) if i not in {q.id for q in prompts}] if on else []
    if missing:
        fail("screen.prompts", f"ids {missing} are not in {path}", "use ids from prompts.file")
    if (config.get("model") or {}).get("path"):
        m = config["model"]
        longest = max([config.get("replay", {}).get("max_new_tokens", 0)]
                      + ([screen.get("max_new_tokens", 0)] if on else []))
        if not m.get("trust_remote_code"):  # its tokenizer may run code of its own: only in the jobs
            check_prompt_lengths(prompts, path, m["path"], longest)
    return prompts


def replay_estimate(config: Mapping[str, Any], checked: Checked) -> str:
    """The most the replay's captures can write, refused above replay.max_capture_gb (from the
    SAEs and prompts that check_config read)."""
    r, sel = config["replay"], config["select"]
    conds = parse_conditions(r["conditions"])
    if config.get("screen", {}).get("enabled"):
        parse_conditions(config["screen"]["conditions"], "screen.conditions")
    spec = CaptureSpec.parse(r["capture"]["generated"])
    positions = len(spec.positions(r["max_new_tokens"]))
    metas = checked.metas
    d_model = next(iter(metas.values())).d_model
    n_prompts = len(checked.prompts)
    k = min(config["prompts"]["per_feature"], n_prompts)
    # per condition: sampled and teacher-forced, and the random control both ways; one sham pair
    patched = sel["top_n"] * k * (4 * len(conds) + 2) * r["trials"]
    baseline = min(n_prompts, sel["top_n"] * k) * r["trials"] * (2 if r["placebo"] else 1)
    total = capture_bytes(patched + baseline, positions, len(metas), d_model)
    text = (f"replay captures will write at most {total / 2**20:,.1f} MiB: {patched + baseline:,} trials"
            f" x {1 + positions} positions x {len(metas)} layers x d_model {d_model} (fp16)")
    if total > r["max_capture_gb"] * 2**30:
        fail("replay.max_capture_gb", f"the plan needs {total / 2**30:,.1f} GiB ({text})",
             "lower select.top_n, replay.trials or capture fewer positions (replay.capture.generated: first:K), "
             "or raise replay.max_capture_gb")
    return text
