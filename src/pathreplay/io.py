"""Atomic writers: every output appears under its final name only once it is complete."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import UserError, fail, first_line


def _default_mode(is_dir: bool) -> int:
    # mkstemp/mkdtemp create 0600/0700 files; give results the permissions of a plain open().
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if is_dir else 0o666) & ~mask


# errno values that mean the output cannot be written where it is asked for, and what is needed
_FULL = {errno.ENOSPC, errno.EDQUOT}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}
# libraries that wrap an OSError in their own type keep its number in the text: safetensors
# "(os error 28)", pyarrow "[errno 28]"
_ERRNO_TEXT = re.compile(r"(?:os error|errno) (\d+)", re.IGNORECASE)


def os_errno(err: BaseException) -> int | None:
    """The operating system's error number behind `err`: an OSError's own, else one named in
    its text (safetensors and pyarrow wrap OSErrors in their own types); None if it has none."""
    if isinstance(err, OSError) and err.errno:
        return err.errno
    m = _ERRNO_TEXT.search(str(err))
    return int(m.group(1)) if m else None


def refuse_unwritable(err: BaseException, path: str | os.PathLike[str]) -> None:
    """Raise a UserError naming `path` and what it needs when `err` is a full disk (free space)
    or a folder that cannot be written (a writable folder), and is about `path`, its temporary
    sibling or a folder above it; return for any other error (an input that cannot be read)."""
    code = os_errno(err)
    if isinstance(err, UserError) or code not in _FULL | _READ_ONLY or not _about(err, Path(path)):
        return
    folder = Path(path).parent
    if code in _FULL:
        fail(str(path), f"cannot be written: its disk is full ({os.strerror(code)}{_free(folder)})",
             f"free space where {folder} is (or run in a working directory with room) and run again")
    state = "is not writable" if folder.exists() else "cannot be created"
    fail(str(path), f"cannot be written: {folder} {state} ({os.strerror(code)})",
         "make the folder writable, or run in a writable working directory (snakemake --directory)")


def _about(err: BaseException, path: Path) -> bool:
    """Whether an error is about writing `path`: it names no file, or `path`'s folder, a file in
    it or a folder above it."""
    name = getattr(err, "filename", None)
    if not name:
        return True
    named, folder = Path(os.path.abspath(name)), Path(os.path.abspath(path)).parent
    return named.parent == folder or folder.is_relative_to(named)


def _free(folder: Path) -> str:
    """', N MiB free' on the disk of `folder` (nothing when that cannot be told)."""
    try:
        return f", {shutil.disk_usage(folder).free / 2**20:,.1f} MiB free"
    except OSError:
        return ""


@contextmanager
def _unwritable_as_user_error(path: Path) -> Iterator[None]:
    # creating the folder or the temporary name fails first where the folder is read-only
    try:
        yield
    except OSError as err:
        refuse_unwritable(err, path)
        raise


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds.
    On failure the temporary file is removed; a full disk or an unwritable folder is one
    UserError naming `path` (refuse_unwritable)."""
    final = Path(path)
    with _unwritable_as_user_error(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _default_mode(False))
        os.replace(tmp_path, final)
    except BaseException as err:
        tmp_path.unlink(missing_ok=True)
        refuse_unwritable(err, final)
        raise


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling folder; it replaces `path` only if the block succeeds (the old
    folder is moved aside first and put back if the swap fails). On failure the temporary
    folder is removed; a full disk or an unwritable folder is one UserError naming `path`."""
    final = Path(path)
    with _unwritable_as_user_error(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, _default_mode(True))
        _swap_dir(tmp, final)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        refuse_unwritable(err, final)
        raise


def _swap_dir(new: Path, final: Path) -> None:
    """Rename `new` onto `final`; an old `final` is removed only once `new` is in its place."""
    if not final.exists():
        os.replace(new, final)
        return
    aside = new.with_name(new.name.removesuffix(".partial") + ".old.partial")
    os.replace(final, aside)
    try:
        os.replace(new, final)
    except BaseException:
        os.replace(aside, final)
        raise
    shutil.rmtree(aside, ignore_errors=True)


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
    """(line number, object) for every non-empty line; a bad line, or a file that cannot be
    opened, is one UserError."""
    try:
        fh = open(path, encoding="utf-8")
    except OSError as err:
        fail(str(path), f"cannot be read ({first_line(err)})",
             f"point it at a readable file of one JSON {what} per line")
    with fh:
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
