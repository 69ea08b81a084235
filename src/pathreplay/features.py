"""Ingest a user's feature table (patching screen or Exp1 Cohen's d) into one canonical table."""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import fail, first_line
from .io import iter_jsonl

CANONICAL: tuple[str, ...] = (
    "layer", "feature_id", "cohen_d", "p_value", "safe_value", "risky_value", "label", "source",
)
INT_COLS = ("layer", "feature_id")
FLOAT_COLS = ("cohen_d", "p_value", "safe_value", "risky_value")

# File column names (lower case) tried in order for each canonical field; first present wins.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "layer": ("layer",),
    "feature_id": ("feature_id", "feature_idx", "feature_index"),
    "cohen_d": ("cohen_d", "cohens_d", "d"),
    "p_value": ("p_value", "pvalue", "p"),
    "safe_value": ("safe_value", "safe_mean"),
    "risky_value": ("risky_value", "risky_mean", "bankrupt_mean"),
    "label": ("label", "classified_as", "effect_type", "direction", "original_direction"),
    "feature": ("feature",),
}
LABEL_MAP = {"safe": "safe", "risky": "risky", "neutral": "neutral", "disruptive": "disruptive", "": "",
             "increases_risk": "risky", "decreases_risk": "safe"}
# "L25-10096", "L25/10096", "L25:10096", "L25_F10096", "25-10096": layer first, then the SAE
# feature id. The one reader of feature names, for feature tables and trial logs alike.
FEATURE_RE = re.compile(r"^\s*L?(\d+)\s*[-_/:]\s*F?(\d+)\s*$", re.IGNORECASE)
# Columns that mark per-trial logs (one row per generation), which are not feature tables.
TRIAL_COLS = ("response", "trial", "trial_index")
SUFFIXES = (".csv", ".tsv", ".tab", ".json", ".jsonl", ".ndjson", ".parquet", ".pq")
OVERRIDE = "features.allow_suspicious: true"


def feature_name(layer: int, feature_id: int) -> str:
    """The one spelling of a feature's name: L{layer}-{feature_id}."""
    return f"L{int(layer)}-{int(feature_id)}"


def parse_feature_name(text: str) -> tuple[int, int] | None:
    """(layer, feature_id) of a name in any form FEATURE_RE reads; None if it is not one."""
    m = FEATURE_RE.match(text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _name(df: pd.DataFrame, i: int) -> str:
    """Row label used in messages: 1-based data row plus L{layer}-{id} when known."""
    layer, fid = (df[c].iloc[i] if c in df.columns else None for c in INT_COLS)
    tag = f" ({feature_name(int(layer), int(fid))})" if pd.notna(layer) and pd.notna(fid) else ""
    return f"row {i + 1}{tag}"


def _short(items: Sequence[Any], n: int = 20) -> str:
    """Join items for a one-line message, truncating long lists."""
    head = ", ".join(str(x) for x in list(items)[:n])
    return head + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _load_json(path: Path, where: str) -> pd.DataFrame:
    """Records from a JSON list, or from the one list of records inside a JSON object."""
    data = json.loads(path.read_text())
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if len(lists) != 1:
            fail(where, f"a JSON object must hold exactly one list of feature records, found "
                 f"{len(lists)} lists (keys: {_short(list(data))})",
                 "write the features as a JSON list of records or {\"features\": [...]}")
        data = data[lists[0]]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        fail(where, "JSON is not a list of records (objects)",
             "write one object per feature, e.g. [{\"layer\": 25, \"feature_id\": 10096, ...}]")
    return pd.DataFrame.from_records(data)


def _load_jsonl(path: Path) -> pd.DataFrame:
    """Records from a JSON-lines file, one object per non-empty line."""
    return pd.DataFrame.from_records([rec for _, rec in iter_jsonl(path, "feature")])


def _load(path: Path, where: str) -> pd.DataFrame:
    """Parse the file by suffix; every parse failure becomes a UserError."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        fail(where, f"unsupported suffix {suffix or '(none)'!r}",
             f"give the feature table as one of {', '.join(SUFFIXES)}")
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".tsv", ".tab"):
            return pd.read_csv(path, sep="\t")
        if suffix == ".json":
            return _load_json(path, where)
        if suffix in (".jsonl", ".ndjson"):
            return _load_jsonl(path)
        return pd.read_parquet(path)
    except (ValueError, OSError) as err:  # pandas, json and pyarrow parse errors all land here
        fail(where, f"cannot be parsed as {suffix[1:].upper()} ({first_line(err)})",
             "check the file's format matches its suffix")


def _resolve(df: pd.DataFrame, columns: Mapping[str, str], where: str) -> dict[str, str]:
    """Map each canonical field (plus 'feature') to the file column that supplies it."""
    allowed = (*CANONICAL[:-1], "feature")
    bad = [k for k in columns if k not in allowed]
    if bad:
        fail(where, f"features.columns has unknown key(s) {_short(bad)}",
             f"use keys among {', '.join(allowed)}")
    lower = {str(c).strip().lower(): c for c in reversed(df.columns)}
    found: dict[str, str] = {}
    for key in allowed:
        if key in columns:
            col = columns[key]
            if not col:  # an empty mapping means "do not read this field from the file"
                continue
            if col not in df.columns:
                fail(where, f"features.columns maps {key} to {col!r}, which the file lacks "
                     f"(it has: {_short(list(df.columns))})", "fix features.columns")
            found[key] = col
        else:
            hit = next((lower[s] for s in SYNONYMS[key] if s in lower), None)
            if hit is not None:
                found[key] = hit
    return found


def _numeric(s: pd.Series, key: str, df: pd.DataFrame, where: str) -> pd.Series:
    """Coerce to float, refusing text that is not a number (empty cells stay NaN)."""
    try:
        out = pd.to_numeric(s, errors="coerce")
    except (TypeError, ValueError):  # nested JSON values (lists, objects) are not numbers at all
        out = pd.Series(np.nan, index=s.index)
    bad = np.flatnonzero(out.isna().to_numpy() & s.notna().to_numpy()
                         & (s.astype(str).str.strip() != "").to_numpy())
    if len(bad):
        fail(f"{where} {_name(df, int(bad[0]))} column {key}", f"{s.iloc[bad[0]]!r} is not a number",
             f"put a number (or leave it empty) in column {s.name!r}")
    return out.astype(float)


def _split_feature(s: pd.Series, where: str) -> tuple[pd.Series, pd.Series]:
    """Split a 'feature' column of L{layer}-{id} strings, or take a numeric one as the id."""
    if pd.api.types.is_numeric_dtype(s):
        return pd.Series(np.nan, index=s.index), s.astype(float)
    parts = s.astype(str).str.extract(FEATURE_RE)
    bad = np.flatnonzero(parts[0].isna().to_numpy() & s.notna().to_numpy())
    if len(bad):
        fail(f"{where} row {bad[0] + 1} column {s.name}", f"cannot read {s.iloc[bad[0]]!r} as a feature name",
             "write features as L{layer}-{id} (e.g. L25-10096) or give layer and feature_id columns")
    return parts[0].astype(float), parts[1].astype(float)


def _ints(s: pd.Series, key: str, df: pd.DataFrame, where: str) -> pd.Series:
    """Whole numbers as int64 (Int64 while cells are missing, so validation can name them)."""
    bad = np.flatnonzero((s.notna() & (s != np.floor(s))).to_numpy())
    if len(bad):
        fail(f"{where} row {bad[0] + 1} column {key}", f"{s.iloc[bad[0]]!r} is not a whole number",
             f"give {key} as an integer")
    return s.astype("int64") if s.notna().all() else s.astype("Int64")


def read_feature_table(path: str | os.PathLike[str], columns: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Read a feature table (CSV/TSV/JSON/JSONL/Parquet) into the canonical columns."""
    p, where = Path(path), str(path)
    if not p.is_file():
        fail(where, "is a folder, not a feature table" if p.is_dir() else "feature table not found",
             "check features.table")
    raw = _load(p, where).reset_index(drop=True)
    found = _resolve(raw, columns or {}, where)
    trial = [c for c in raw.columns if str(c).strip().lower() in TRIAL_COLS]
    key = [found[k] for k in INT_COLS if k in found] or [found.get("feature", "feature")]
    if trial and all(k in raw.columns for k in key) and raw.duplicated(key).any():
        fail(where, f"looks like per-trial records (it has {_short(trial)} and each feature "
             "repeats), not a feature table", "point features.table at a table with one row per feature")
    out = pd.DataFrame(index=raw.index)
    for k in (*INT_COLS, *FLOAT_COLS):
        out[k] = _numeric(raw[found[k]], k, out, where) if k in found else np.nan
    # A "feature" name column fills layer/feature_id the file lacks, and must agree with them.
    if "feature" in found and ("feature" in (columns or {}) or not all(k in found for k in INT_COLS)):
        feat = found["feature"]
        parsed = dict(zip(INT_COLS, _split_feature(raw[feat], where)))
        for k, v in parsed.items():
            clash = np.flatnonzero((out[k].notna() & v.notna() & (out[k] != v)).to_numpy())
            if len(clash):
                i = int(clash[0])
                fail(f"{where} row {i + 1} column {feat}", f"{raw[feat].iloc[i]!r} disagrees with {k} "
                     f"{out[k].iloc[i]:g}", f"make the feature name and the {k} column agree")
            out[k] = out[k].fillna(v)
    for k in INT_COLS:
        out[k] = _ints(out[k], k, out, where)
    label = pd.Series("", index=raw.index, dtype=str)
    if "label" in found:
        src = raw[found["label"]]
        norm = src.where(src.notna(), "").astype(str).str.strip().str.lower()
        bad = np.flatnonzero(~norm.isin(list(LABEL_MAP)).to_numpy())
        if len(bad):
            i = int(bad[0])
            fail(f"{where} {_name(out, i)} column {found['label']}", f"unknown label {src.iloc[i]!r}",
                 "use safe/risky/neutral (or increases_risk/decreases_risk), or set "
                 f"features.columns.label: '' to ignore column {found['label']!r}")
        label = norm.map(LABEL_MAP)
    out["label"] = label.astype(str)
    out["source"] = pd.Series(p.name, index=raw.index, dtype=str)
    out.attrs["file_columns"] = [str(c) for c in raw.columns]
    return out[list(CANONICAL)]


def _blank(s: pd.Series) -> pd.Series:
    """True where a cell holds nothing (NaN, NA or an empty label)."""
    return s.isna() | (s.astype(str) == "")


def _trap(where: str, what: str, allow_suspicious: bool) -> None:
    """Refuse raw-dimension-looking data, or only warn when the user overrode the check."""
    what += "; this looks like raw hidden-state dimensions rather than SAE features"
    fix = f"give SAE feature data, or set {OVERRIDE} if you are sure"
    if allow_suspicious:
        warnings.warn(f"{where}: {what} (allowed by {OVERRIDE})", UserWarning, stacklevel=3)
    else:
        fail(where, what, fix)


def validate_feature_table(df: pd.DataFrame, path: str, *,
                           required: Sequence[str] = ("layer", "feature_id", "cohen_d", "safe_value", "risky_value"),
                           sae_layers: Mapping[int, tuple[int, int]] | None = None,
                           relu_family: bool = True, allow_suspicious: bool = False) -> None:
    """Raise UserError on the first problem that would waste or corrupt GPU work."""
    if len(df) == 0:
        fail(path, "the feature table has no rows", "give at least one feature")
    required = (*INT_COLS, *(c for c in required if c not in INT_COLS))  # identity is never optional
    has = df.attrs.get("file_columns", [c for c in df.columns if df[c].notna().any()])
    missing = [c for c in required if c not in df.columns or _blank(df[c]).all()]
    if missing:
        fail(f"{path} columns", f"missing required column(s) {', '.join(missing)} (the file has: {_short(has)})",
             f"name the file's columns in features.columns, e.g. features.columns.{missing[0]}: <column>")
    for c in required:
        bad = np.flatnonzero(_blank(df[c]).to_numpy())
        if len(bad):
            fail(f"{path} {_name(df, int(bad[0]))} column {c}", f"{c} is empty ({len(bad)} rows)",
                 "fill it in or drop those rows")
    for c in FLOAT_COLS:
        bad = np.flatnonzero(np.isinf(df[c].to_numpy(float))) if c in df.columns else []
        if len(bad):
            fail(f"{path} {_name(df, int(bad[0]))} column {c}", f"{c} is {df[c].iloc[bad[0]]} ({len(bad)} rows)",
                 "give finite numbers: a patch to an infinite target breaks the model's states")
    ids = df[list(INT_COLS)].astype("int64")
    for c in INT_COLS:
        bad = np.flatnonzero((ids[c] < 0).to_numpy())
        if len(bad):
            fail(f"{path} {_name(df, int(bad[0]))} column {c}", f"{c} {ids[c].iloc[bad[0]]} is negative",
                 f"give {c} as a 0-based index")
    dup = np.flatnonzero(ids.duplicated().to_numpy())
    if len(dup):
        i = int(dup[0])
        first = int(np.flatnonzero((ids == ids.iloc[i]).all(axis=1).to_numpy())[0])
        fail(f"{path} {_name(df, i)}", f"duplicate feature (also row {first + 1})",
             "keep one row per (layer, feature_id)")
    if sae_layers is not None:
        known = sorted(int(k) for k in sae_layers)
        for i, (layer, fid) in enumerate(ids.itertuples(index=False)):
            if layer not in sae_layers:
                fail(f"{path} {_name(df, i)}", f"layer {layer} has no SAE (SAEs exist for layers {_short(known)})",
                     "add the layer to saes.layers or drop its features")
            if fid >= sae_layers[layer][1]:
                fail(f"{path} {_name(df, i)}", f"feature_id {fid} >= d_sae {sae_layers[layer][1]} of layer "
                     f"{layer}'s SAE", "check the feature ids and the SAE width")
        d_model = ids["layer"].map(lambda layer: sae_layers[layer][0])
        if len(df) > 1 and (ids["feature_id"] < d_model).all():
            _trap(f"{path} column feature_id", f"every feature_id is below d_model ({_short(sorted(set(d_model)))})",
                  allow_suspicious)
    if relu_family:
        for c in ("safe_value", "risky_value"):
            bad = np.flatnonzero((df[c] < 0).to_numpy()) if c in df.columns else []
            if len(bad):
                _trap(f"{path} {_name(df, int(bad[0]))} column {c}", f"{len(bad)} negative {c}(s), impossible for "
                      "a ReLU-family SAE", allow_suspicious)
