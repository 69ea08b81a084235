"""The atomic writers: a full disk or a folder that cannot be written is one line naming the path
and what it needs; the partial file is removed and nothing else is touched."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from pathreplay import io
from pathreplay.errors import UserError
from pathreplay.io import atomic_dir, atomic_path, iter_jsonl, os_errno, write_json, write_table, write_tensors

FULL = r"cannot be written: its disk is full \(No space left on device.*\); free space where .* is"
READ_ONLY = r"is not writable \(Read-only file system\); make the folder writable"


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _half_then(code: int, wrap=None, path_first: bool = False):
    """A writer that leaves half a file at its path (its second argument, or with `path_first`
    its first: Path.write_text's self) and then fails with errno `code` (an OSError, or `wrap`'s
    type around its text, as safetensors does)."""
    def write(first, second=None, *a, **k):
        path = Path(first if path_first else second)
        assert path.name.endswith(".partial"), path  # only ever the temporary name
        path.write_bytes(b"half a file")
        err = OSError(code, os.strerror(code))
        raise err if wrap is None else wrap(f"Error while serializing: I/O error: {os.strerror(code)} "
                                            f"(os error {code})")
    return write


class SafetensorError(Exception):
    """Stands for safetensors' own error type, which is no OSError."""


@pytest.mark.parametrize("kind", ["parquet", "tsv", "json", "safetensors"])
def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch, kind):
    old = tmp_path / f"keep.{kind}"
    old.write_text("the previous result")
    out = tmp_path / f"out.{kind}"
    if kind == "parquet":
        monkeypatch.setattr(pd.DataFrame, "to_parquet", _half_then(errno.ENOSPC))
        run = lambda: write_table(pd.DataFrame({"a": [1]}), out)  # noqa: E731
    elif kind == "tsv":
        monkeypatch.setattr(pd.DataFrame, "to_csv", _half_then(errno.ENOSPC))
        run = lambda: write_table(pd.DataFrame({"a": [1]}), out)  # noqa: E731
    elif kind == "json":
        monkeypatch.setattr(Path, "write_text", _half_then(errno.ENOSPC, path_first=True))
        run = lambda: write_json({"a": 1}, out)  # noqa: E731
    else:
        monkeypatch.setattr("safetensors.torch.save_file", _half_then(errno.ENOSPC, SafetensorError))
        run = lambda: write_tensors({"x": torch.zeros(2)}, out)  # noqa: E731
    with pytest.raises(UserError, match=rf"^{out}: {FULL}") as e:
        run()
    assert "\n" not in str(e.value)
    assert _left(tmp_path) == [old.name] and old.read_text() == "the previous result"


def test_an_existing_result_survives_a_failed_rewrite(tmp_path, monkeypatch):
    out = tmp_path / "t.json"
    write_json({"v": 1}, out)
    monkeypatch.setattr(Path, "write_text", _half_then(errno.EDQUOT, path_first=True))
    with pytest.raises(UserError, match=r"its disk is full \(Disk quota exceeded"):
        write_json({"v": 2}, out)
    assert json.loads(out.read_bytes()) == {"v": 1} and _left(tmp_path) == ["t.json"]


@pytest.mark.parametrize("code, says", [(errno.EROFS, READ_ONLY),
                                        (errno.EACCES, r"is not writable \(Permission denied\)"),
                                        (errno.EPERM, r"is not writable \(Operation not permitted\)")])
def test_a_folder_that_cannot_be_written_is_one_line(tmp_path, monkeypatch, code, says):
    # as root chmod does not stop a write: the temporary name's creation fails as it would there
    def refused(*a, **k):
        raise OSError(code, os.strerror(code), str(tmp_path / ".x.partial"))

    monkeypatch.setattr(io.tempfile, "mkstemp", refused)
    with pytest.raises(UserError, match=rf"^{tmp_path / 'x.tsv'}: cannot be written: {tmp_path} {says}"):
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "x.tsv")
    assert _left(tmp_path) == []


def test_a_read_only_folder_met_while_writing_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(pd.DataFrame, "to_parquet", _half_then(errno.EROFS))
    with pytest.raises(UserError, match=READ_ONLY):
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "x.parquet")
    assert _left(tmp_path) == []


def test_a_folder_that_cannot_be_created_is_named(tmp_path, monkeypatch):
    def refused(self, *a, **k):
        raise OSError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refused)
    with pytest.raises(UserError, match=r"new/x.json: cannot be written: .*/new cannot be created "
                       r"\(Permission denied\)"):
        write_json({}, tmp_path / "new" / "x.json")


def test_a_full_disk_while_writing_a_folder_keeps_the_old_one(tmp_path):
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "old.png").write_text("old")
    with pytest.raises(UserError, match=rf"^{plots}: {FULL}"):
        with atomic_dir(plots) as tmp:
            (tmp / "a.png").write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert _left(tmp_path) == ["plots"] and _left(plots) == ["old.png"]


def test_a_failed_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "old.png").write_text("old")
    real, calls = os.replace, []

    def second_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the old folder is aside; the new one cannot take its place
            raise OSError(errno.EROFS, "Read-only file system")
        real(src, dst)

    monkeypatch.setattr(io.os, "replace", second_fails)
    with pytest.raises(UserError, match=READ_ONLY):
        with atomic_dir(plots) as tmp:
            (tmp / "new.png").write_text("new")
    assert _left(tmp_path) == ["plots"] and _left(plots) == ["old.png"]


def test_other_errors_pass_through_unchanged(tmp_path):
    # an input that cannot be read while an output is written is not the output's folder's fault
    with pytest.raises(PermissionError):
        with atomic_path(tmp_path / "out.tsv"):
            raise PermissionError(errno.EACCES, "Permission denied", "/elsewhere/input.parquet")
    with pytest.raises(ValueError, match="a bug"):
        with atomic_path(tmp_path / "out.tsv"):
            raise ValueError("a bug")
    assert _left(tmp_path) == []


def test_the_errno_behind_a_wrapped_error_is_found():
    assert os_errno(OSError(errno.ENOSPC, "x")) == errno.ENOSPC
    assert os_errno(SafetensorError("I/O error: Read-only file system (os error 30) at path")) == errno.EROFS
    assert os_errno(OSError("Error writing bytes to file. Detail: [errno 28] No space left")) == errno.ENOSPC
    assert os_errno(ValueError("no number here")) is None


def test_a_jsonl_file_that_cannot_be_opened_is_one_line(tmp_path):
    (tmp_path / "p.jsonl").mkdir()
    with pytest.raises(UserError, match=r"p.jsonl: cannot be read \(\[Errno 21\] Is a directory.*\); point it at"):
        list(iter_jsonl(tmp_path / "p.jsonl", "prompt"))
