"""Configuration checks that the JSON schema cannot express, run once when the workflow starts."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from .errors import fail
from .io import iter_jsonl
from .sae import SAEMeta, check_hook, read_meta, sae_dir


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


_SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]+$")  # ids name the baseline's files


class Prompt(NamedTuple):
    """One candidate prompt."""

    id: str
    text: str
    context: str


def read_prompts(path: str) -> list[Prompt]:
    """Read and check a prompts JSONL file (fields id, text, context)."""
    if not Path(path).exists():
        fail(f"prompts.file={path!r}", "file not found", "point prompts.file at a JSONL file")
    out: list[Prompt] = []
    seen: set[str] = set()
    for n, rec in iter_jsonl(path, "prompt"):
        for key in ("id", "text", "context"):
            if key not in rec:
                fail(f"{path}:{n}", f"field {key!r} missing", 'give every line {"id", "text", "context"}')
        pid, text = str(rec["id"]), str(rec["text"])
        if not _SAFE_ID.match(pid):
            fail(f"{path}:{n}", f"prompt id {pid!r} cannot name a file", "use letters, digits, '_', '-' and '.' only")
        if not text.strip():
            fail(f"{path}:{n}", f"prompt {pid!r} is empty", "remove it or give it text")
        if pid in seen:
            fail(f"{path}:{n}", f"id {pid!r} appears twice", "give every prompt its own id")
        seen.add(pid)
        out.append(Prompt(pid, text, str(rec["context"])))
    if not out:
        fail(f"prompts.file={path!r}", "no prompts", "add at least one line")
    return out


def sae_metas(config: Mapping[str, Any]) -> dict[int, SAEMeta]:
    """Metadata of every configured SAE layer, each checked against its own hook point."""
    s = config["saes"]
    metas = {}
    for layer in s["layers"]:
        meta = read_meta(sae_dir(s["path"], layer), s["format"], layer)
        check_hook(meta, layer, s["path"])
        metas[layer] = meta
    return metas


def check_config(config: dict[str, Any], repo: Path) -> None:
    """Resolve paths in place and check everything that needs no model weights."""
    for section, key in (("model", "path"), ("saes", "path"), ("prompts", "file"),
                         ("features", "table")):
        sec = config.get(section) or {}
        if sec.get(key):
            if section == "saes":
                base, _, rest = sec[key].partition("{layer}")
                parent = resolve(os.path.dirname(base) or ".", repo)
                if parent != (os.path.dirname(base) or "."):
                    sec[key] = os.path.join(parent, os.path.basename(base)) + "{layer}" + rest
            else:
                sec[key] = resolve(sec[key], repo)
    if "saes" in config:
        metas = sae_metas(config)
        d_models = {m.d_model for m in metas.values()}
        if len(d_models) > 1:
            fail(f"saes.path={config['saes']['path']!r}", f"the SAEs disagree on d_model ({sorted(d_models)})",
                 "use SAEs of one model")
    if config.get("prompts", {}).get("file"):
        check_prompts(config)
    table = (config.get("features") or {}).get("table")
    if table and "saes" in config:
        from .features import read_feature_table, validate_feature_table

        f = config["features"]
        df = read_feature_table(table, f.get("columns") or None)
        validate_feature_table(df, table, sae_layers={k: (m.d_model, m.d_sae) for k, m in metas.items()},
                               relu_family=all(m.activation != "topk" for m in metas.values()),
                               allow_suspicious=bool(f.get("allow_suspicious")))


def check_prompts(config: Mapping[str, Any]) -> None:
    """The prompts file, the screen's prompt ids, and every prompt's length with its generation
    against the model's context (its tokenizer and config only, no weights)."""
    from .model import check_prompt_lengths

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
        check_prompt_lengths(prompts, path, m["path"], longest, bool(m.get("trust_remote_code")))


def schema_message(err: BaseException) -> str:
    """Snakemake's report of a config that breaks the schema, as one line: the key and what is wrong."""
    cause = err.__cause__ or err.__context__  # snakemake raises while handling jsonschema's error
    if hasattr(cause, "absolute_path") and hasattr(cause, "message"):
        key = ".".join(map(str, cause.absolute_path)) or "(top level)"
        return f"config {key}: {cause.message}; see config/README.md for what it takes"
    return str(err).strip().splitlines()[0]


def replay_estimate(config: Mapping[str, Any]) -> str:
    """The most the replay's captures can write, refused above replay.max_capture_gb."""
    from .plan import CaptureSpec, capture_bytes, parse_conditions

    r, sel = config["replay"], config["select"]
    conds = parse_conditions(r["conditions"])
    if config.get("screen", {}).get("enabled"):
        parse_conditions(config["screen"]["conditions"], "screen.conditions")
    spec = CaptureSpec.parse(r["capture"]["generated"])
    positions = len(spec.positions(r["max_new_tokens"]))
    metas = sae_metas(config)
    d_model = next(iter(metas.values())).d_model
    n_prompts = len(read_prompts(config["prompts"]["file"]))
    k = min(config["prompts"]["per_feature"], n_prompts)
    patched = sel["top_n"] * k * len(conds) * r["trials"]
    baseline = min(n_prompts, sel["top_n"] * k) * r["trials"] * (2 if r["placebo"] else 1)
    total = capture_bytes(patched + baseline, positions, len(metas), d_model)
    text = (f"replay captures will write at most {total / 2**20:,.1f} MiB: {patched + baseline:,} trials"
            f" x {1 + positions} positions x {len(metas)} layers x d_model {d_model} (fp16)")
    if total > r["max_capture_gb"] * 2**30:
        fail("replay.max_capture_gb", f"the plan needs {total / 2**30:,.1f} GiB ({text})",
             "lower select.top_n, replay.trials or capture fewer positions (replay.capture.generated: first:K), "
             "or raise replay.max_capture_gb")
    return text
