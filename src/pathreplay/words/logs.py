"""Trial logs in any of the study's layouts, streamed in chunks as canonical trials."""

from __future__ import annotations

import csv
import glob
import gzip
import json
import math
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple, NoReturn

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import fail, first_line
from ..features import parse_feature_name
from .settings import LOG_FIELDS, WordsConfig, level_label


def log_paths(patterns: Sequence[str], repo: Path | None = None) -> list[str]:
    """Expand `words.logs` globs (relative to the working directory, else `repo`), sorted and
    deduplicated; a pattern that matches nothing is a user error."""
    out: list[str] = []
    for pat in patterns:
        bases = [Path(pat)] if os.path.isabs(pat) else [Path.cwd() / pat] + ([repo / pat] if repo else [])
        hits: list[str] = []
        for b in bases:
            hits = sorted(glob.glob(str(b), recursive=True))
            if hits:
                break
        if not hits:
            fail(f"config words.logs: {pat!r}", "matches no file", "fix the path or glob (relative to the working directory)")
        out.extend(h for h in hits if h not in out)
    return out


def _format(path: str) -> str:
    name = path[:-3] if path.endswith(".gz") else path
    suffix = Path(name).suffix.lower()
    kinds = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv",
             ".parquet": "parquet", ".pq": "parquet"}
    if suffix not in kinds:
        fail(path, f"unknown log format {suffix!r}", "use .json (a list of trials), .jsonl, .csv, .tsv or .parquet")
    return kinds[suffix]


def _open(path: str, newline: str | None = None, encoding: str = "utf-8") -> IO[str]:
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding=encoding, newline=newline)
    return open(path, encoding=encoding, newline=newline)


def _source_columns(cfg: WordsConfig) -> dict[str, str]:
    return {c: cfg.columns.get(c, c) for c in LOG_FIELDS}


def _chunks_json(path: str, chunk: int) -> Iterator[list[dict]]:
    with _open(path) as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as e:
            fail(f"{path}:{e.lineno}", f"not valid JSON ({e.msg})", "give a JSON list of trial objects")
    if isinstance(data, Mapping) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))
    if not isinstance(data, list):
        fail(path, "top level is not a list", "give a JSON list of trial objects (or use .jsonl)")
    for i in range(0, len(data), chunk):
        yield data[i:i + chunk]


def _chunks_jsonl(path: str, chunk: int) -> Iterator[list[dict]]:
    def parse(lines: list[str], numbers: list[int]) -> list[dict]:
        try:  # one call per chunk is ~1.5x faster than a call per line
            return json.loads("[" + ",".join(lines) + "]")
        except json.JSONDecodeError:
            for n, line in zip(numbers, lines):
                try:
                    json.loads(line)
                except json.JSONDecodeError as e:
                    fail(f"{path}:{n}", f"not valid JSON ({e.msg})", "write one JSON object per line")
            raise

    lines: list[str] = []
    numbers: list[int] = []
    with _open(path) as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                lines.append(line)
                numbers.append(n)
            if len(lines) >= chunk:
                yield parse(lines, numbers)
                lines, numbers = [], []
    if lines:
        yield parse(lines, numbers)


def _columns_chunks(path: str, kind: str, wanted: set[str], chunk: int) -> Iterator[dict[str, list]]:
    """Chunks as {source column: values} for the wanted columns that the file has."""
    if kind in ("json", "jsonl"):
        reader = _chunks_json(path, chunk) if kind == "json" else _chunks_jsonl(path, chunk)
        for recs in reader:
            if not all(isinstance(r, Mapping) for r in recs[:50]):
                fail(path, "a trial is not a JSON object", "give one {field: value} object per trial")
            present = {k for r in recs[:50] for k in r} & wanted
            yield {k: [r.get(k) for r in recs] for k in present}
    elif kind in ("csv", "tsv"):
        yield from _chunks_csv(path, "," if kind == "csv" else "\t", wanted, chunk)
    else:
        pf = pq.ParquetFile(path)
        use = [c for c in pf.schema_arrow.names if c in wanted]
        for batch in pf.iter_batches(batch_size=chunk, columns=use):
            yield {c: batch.column(c).to_pylist() for c in use}


def _chunks_csv(path: str, sep: str, wanted: set[str], chunk: int) -> Iterator[dict[str, list]]:
    """Chunks of a CSV/TSV log's wanted columns as text; a row with more or fewer fields than
    the header, or broken quoting, is one UserError naming its line (blank lines are skipped)."""
    csv.field_size_limit(2**31 - 1)  # a response may be longer than csv's default 128 KiB field
    # utf-8-sig: a spreadsheet's byte-order mark is not part of the first column's name
    with _open(path, newline="", encoding="utf-8-sig") as fh:
        rows = csv.reader(fh, delimiter=sep, strict=True)
        header, use, out, n = None, [], {}, 0
        while True:
            start = rows.line_num + 1  # a quoted field can span lines: the record's first one
            try:
                row = next(rows)
            except StopIteration:
                break
            except csv.Error as e:
                fail(f"{path} line {start}", f"is not valid {'CSV' if sep == ',' else 'TSV'} ({e})",
                     "close every quoted field, and double a quote inside one")
            if header is None:
                header = row
                use = [(i, c) for i, c in enumerate(header) if c in wanted]
                out = {c: [] for _, c in use}
                continue
            if len(row) != len(header):
                if not row:
                    continue
                fail(f"{path} line {start}", f"has {len(row)} fields where the header has {len(header)}",
                     "give every row the header's fields (quote a field that holds the separator)")
            for i, c in use:
                out[c].append(row[i])
            n += 1
            if n == chunk:
                yield out
                out, n = {c: [] for _, c in use}, 0
        if n:
            yield out


def _ints(values: list, path: str, field: str) -> list[int]:
    try:
        return [int(float(v)) for v in values]
    except (TypeError, ValueError):
        bad = next(v for v in values if not _is_number(v))
        fail(path, f"field {field!r} has the non-number {bad!r}", f"map words.columns.{field} to an integer column")


def _is_number(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


class Trials(NamedTuple):
    """One chunk of trials in canonical form (parallel lists)."""

    layer: list[int]
    feature_id: list[int]
    context: list[str]
    condition: list[str]
    level: list[float]
    response: list[str]


def _canonical(raw: dict[str, list], path: str, cfg: WordsConfig) -> Trials:
    src = _source_columns(cfg)
    n = len(next(iter(raw.values()))) if raw else 0

    def need(canon: str, fix: str) -> list:
        col = src[canon]
        if col not in raw:
            fail(path, f"column {col!r} (words.columns.{canon}) not found; it has {sorted(raw)}", fix)
        return raw[col]

    if src["layer"] in raw and src["feature_id"] in raw:
        layer = _ints(raw[src["layer"]], path, "layer")
        fid = _ints(raw[src["feature_id"]], path, "feature_id")
    else:
        layer, fid = [], []
        for v in need("feature", "map words.columns.layer and .feature_id, or .feature (\"L21-2794\")"):
            if v is None or not str(v).strip():  # no feature: a baseline shared by every feature
                layer.append(-1)
                fid.append(-1)
                continue
            parsed = parse_feature_name(str(v))
            if parsed is None:
                fail(path, f"feature {v!r} is not like 'L21-2794'", "map words.columns.layer and words.columns.feature_id")
            layer.append(parsed[0])
            fid.append(parsed[1])
    if cfg.levels == "ordered":
        raw_levels = need("level", "map words.columns.level to the numeric dose column (e.g. scale)")
        if not all(_is_number(v) for v in raw_levels):
            bad = next(v for v in raw_levels if not _is_number(v))
            fail(path, f"level {bad!r} is not a number", "map words.columns.level to a numeric column")
        level = [float(v) for v in raw_levels]
        condition = [level_label(v) for v in level]
    else:
        condition = [str(v) for v in need("condition", "map words.columns.condition to the condition column")]
        level = [math.nan] * n
    if src["context"] in raw:
        context = [str(v) for v in raw[src["context"]]]
    else:  # the original logs name the context as the condition's prefix ("safe_with_risky_patch")
        context = [c.split("_", 1)[0] if "_" in c else "all" for c in condition]
    response = ["" if v is None else str(v) for v in need("response", "map words.columns.response to the text column")]
    return Trials(layer, fid, context, condition, level, response)


def read_trials(paths: Sequence[str], cfg: WordsConfig) -> Iterator[Trials]:
    """Stream every log file as canonical chunks of at most `cfg.chunk_rows` trials; a log that
    cannot be read to its end is one UserError saying why (_unreadable)."""
    wanted = set(_source_columns(cfg).values())
    for path in paths:
        if not os.path.exists(path):
            fail(path, "log file not found", "fix words.logs")
        if os.path.isdir(path):
            fail(path, "is a folder, not a log file", "fix words.logs so that it names files")
        chunks = _columns_chunks(path, _format(path), wanted, cfg.chunk_rows)
        while True:
            try:
                raw = next(chunks)
            except StopIteration:
                break
            except (UnicodeDecodeError, EOFError, OSError, zlib.error, pa.ArrowException) as e:
                _unreadable(path, e)
            if raw:
                yield _canonical(raw, path, cfg)


def _unreadable(path: str, e: BaseException) -> NoReturn:
    """One UserError for a log that cannot be read: not UTF-8, named .gz but not gzip, a gzip
    or Parquet file cut short or corrupt, or a file the system will not read."""
    what = f"{type(e).__name__}: {first_line(e)}"
    if isinstance(e, UnicodeDecodeError):
        fail(path, f"is not UTF-8 text ({e.reason})", "save the log as UTF-8")
    if isinstance(e, gzip.BadGzipFile):
        fail(path, f"is named .gz but is not gzip ({what})", "rename it without .gz, or compress it with gzip")
    if isinstance(e, (EOFError, zlib.error)):
        fail(path, f"cannot be read to its end: its gzip data is truncated or corrupt ({what})", "copy the log again")
    if isinstance(e, pa.ArrowException) and not isinstance(e, pa.ArrowIOError):
        fail(path, f"is not a readable Parquet file: truncated, or not Parquet ({what})",
             "copy the log again, or name it for its format")
    fail(path, f"cannot be read ({what})", "make the log readable, or fix words.logs")
