"""Every job checks the files it reads first: a cut-short one is one line, and removed when the
workflow made it (so that the next run makes it anew)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from pathreplay.errors import UserError
from pathreplay.workflow import check_inputs


def _parquet(path):
    pd.DataFrame({"row": range(200), "value": [0.5] * 200}).to_parquet(path)


def _safetensors(path):
    save_file({"L1": torch.zeros(64, 16)}, str(path))


def _tsv(path):
    path.write_text('feature\tnote\nL1-2\t"a\ttab and a\nnewline, quoted"\nL1-3\tplain\n')


MAKERS = {"parquet": _parquet, "safetensors": _safetensors, "tsv": _tsv}


@pytest.mark.parametrize("kind", MAKERS)
def test_a_whole_file_passes(tmp_path, kind):
    path = tmp_path / f"whole.{kind}"
    MAKERS[kind](path)
    check_inputs([str(path)])
    assert path.exists()


@pytest.mark.parametrize("kind, says", [("parquet", "ArrowInvalid"), ("safetensors", "SafetensorError"),
                                        ("tsv", "ends in the middle of a row")])
def test_a_cut_short_file_of_ours_is_one_line_and_removed(tmp_path, monkeypatch, kind, says):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "results" / "part" / f"L1.{kind}"
    path.parent.mkdir(parents=True)
    MAKERS[kind](path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])  # a copy cut short, a job killed mid-write
    with pytest.raises(UserError) as err:
        check_inputs([str(path)])
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and says in msg and "run snakemake again" in msg
    assert not path.exists()


def test_a_users_cut_short_file_is_named_and_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "features.parquet"  # the user's table, outside results/
    _parquet(path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(UserError, match="replace the file with a whole copy"):
        check_inputs([str(path)])
    assert path.exists()


def test_missing_inputs_and_other_kinds_are_left_to_the_job(tmp_path):
    (tmp_path / "prompts.jsonl").write_text("not json at all")
    check_inputs([str(tmp_path / "absent.parquet"), str(tmp_path / "prompts.jsonl")])


def test_a_row_with_a_field_short_is_named(tmp_path):
    path = tmp_path / "plan.tsv"
    path.write_text("feature\tprompt_id\nL1-2\tp0\nL1-3\n")
    with pytest.raises(UserError, match="row 3 has 1 fields, the header 2"):
        check_inputs([str(path)])
