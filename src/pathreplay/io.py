"""Atomic writers: every output appears under its final name only once it is complete."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import fail


def _default_mode(is_dir: bool) -> int:
    # mkstemp/mkdtemp create 0600/0700 files; give results the permissions of a plain open().
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if is_dir else 0o666) & ~mask


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _default_mode(False))
        os.replace(tmp_path, final)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling folder; it replaces `path` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, _default_mode(True))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_with(path: str | os.PathLike[str], write: Callable[[Path], None]) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def write_table(df: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write a DataFrame as Parquet or TSV, chosen by the file's suffix."""
    suffix = Path(path).suffix
    if suffix == ".parquet":
        _write_with(path, lambda p: df.to_parquet(p, index=False))
    elif suffix in (".tsv", ".txt"):
        _write_with(path, lambda p: df.to_csv(p, sep="\t", index=False))
    else:
        raise ValueError(f"unsupported table suffix {suffix!r} for {path}")


def read_table(path: str | os.PathLike[str], columns: list[str] | None = None) -> pd.DataFrame:
    """Read a table written by write_table (only `columns`, where given: from Parquet, only
    these are read)."""
    if Path(path).suffix == ".parquet":
        return pd.read_parquet(path, columns=columns)
    t = pd.read_csv(path, sep="\t")
    return t if columns is None else t[columns]


def read_tables(paths: Sequence[str | os.PathLike[str]], empty: pd.DataFrame | None = None) -> pd.DataFrame:
    """The tables at `paths` one under another (empty ones left out, as pandas asks); `empty`
    (default: no columns) when every one is empty."""
    frames = [f for f in map(read_table, paths) if len(f)]
    if frames:
        return pd.concat(frames, ignore_index=True)
    return pd.DataFrame() if empty is None else empty


def iter_jsonl(path: str | os.PathLike[str], what: str = "record") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-empty line; a bad line is one UserError."""
    with open(path, encoding="utf-8") as fh:
        n = 0
        try:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as err:
                    fail(f"{path} line {n}", f"not valid JSON ({err.msg})",
                         f"write one JSON object per {what} per line")
                if not isinstance(rec, dict):
                    fail(f"{path} line {n}", "not a JSON object", f"write one JSON object per {what} per line")
                yield n, rec
        except UnicodeDecodeError as err:
            fail(str(path), f"is not UTF-8 text (after line {n}: {err.reason})", "save the file as UTF-8")


def write_json(obj: Any, path: str | os.PathLike[str]) -> None:
    _write_with(path, lambda p: p.write_text(json.dumps(obj, indent=2, default=str) + "\n"))


def write_tensors(tensors: dict[str, Any], path: str | os.PathLike[str],
                  metadata: dict[str, str] | None = None) -> None:
    """Write torch tensors as safetensors (contiguous CPU copies)."""
    from safetensors.torch import save_file  # torch only where tensors are written

    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    _write_with(path, lambda p: save_file(flat, str(p), metadata=metadata))
