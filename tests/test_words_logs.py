"""Trial logs in every format, streamed in chunks; bad logs refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pathreplay.errors import UserError
from pathreplay.words.effects import run_shard
from pathreplay.words.logs import log_paths, read_trials
from pathreplay.words.settings import words_config
from words_data import CUT, original_records, write_jsonl


def test_formats_and_chunking_agree(tmp_path: Path) -> None:
    recs = original_records(np.random.default_rng(1))
    flat = pd.DataFrame([{k: v for k, v in r.items() if k != "parsed"} for r in recs])
    paths = {"json": tmp_path / "a.json", "jsonl": tmp_path / "a.jsonl", "csv": tmp_path / "a.csv",
             "parquet": tmp_path / "a.parquet"}
    paths["json"].write_text(json.dumps(recs))
    write_jsonl(paths["jsonl"], recs)
    flat.to_csv(paths["csv"], index=False)
    flat.to_parquet(paths["parquet"])
    results = {k: run_shard([str(p)], words_config({"chunk_rows": 7 if k == "jsonl" else 1000}), CUT)
               for k, p in paths.items()}
    base = results["json"].drop(columns=["level_values", "level_n", "level_count"])
    assert len(base) > 50
    for k, r in results.items():
        pd.testing.assert_frame_equal(r.drop(columns=["level_values", "level_n", "level_count"]), base, obj=k)


def test_user_errors_name_file_field_and_fix(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [{"feature": "L1-2", "cond": "x", "response": "1"}])
    with pytest.raises(UserError, match=r"t\.jsonl: column 'condition' \(words\.columns\.condition\) not found.*map"):
        run_shard([str(path)], words_config({}), CUT)
    bad = write_jsonl(tmp_path / "f.jsonl", [{"feature": "feature two", "condition": "x", "response": "1"}])
    with pytest.raises(UserError, match=r"f\.jsonl: feature 'feature two' is not like 'L21-2794'"):
        run_shard([str(bad)], words_config({}), CUT)
    lv = write_jsonl(tmp_path / "l.jsonl", [{"feature": "L1-2", "scale": "high", "response": "1"}])
    with pytest.raises(UserError, match=r"l\.jsonl: level 'high' is not a number"):
        run_shard([str(lv)], words_config({"levels": "ordered", "columns": {"level": "scale"}}), CUT)
    broken = tmp_path / "b.jsonl"
    broken.write_text('{"feature": "L1-2"}\n\n{oops\n')
    with pytest.raises(UserError, match=r"b\.jsonl:3: not valid JSON"):
        run_shard([str(broken)], words_config({}), CUT)
    with pytest.raises(UserError, match=r"matches no file"):
        log_paths([str(tmp_path / "nothing*.jsonl")])
    (tmp_path / "x.xlsx").write_text("")
    with pytest.raises(UserError, match=r"x\.xlsx: unknown log format '\.xlsx'"):
        run_shard([str(tmp_path / "x.xlsx")], words_config({}), CUT)
    with pytest.raises(UserError, match=r"gone\.jsonl: log file not found"):
        run_shard([str(tmp_path / "gone.jsonl")], words_config({}), CUT)


def test_log_globs_expand_sorted_and_deduplicated(tmp_path: Path) -> None:
    for name in ("b.jsonl", "a.jsonl", "c.csv"):
        (tmp_path / name).write_text("")
    got = log_paths([str(tmp_path / "*.jsonl"), str(tmp_path / "a.jsonl")])
    assert got == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]


@pytest.mark.parametrize("line, says", [("L4-17,x,9,gamble,extra", "has 5 fields where the header has 4"),
                                        ("L4-17,x", "has 2 fields where the header has 4")])
def test_a_ragged_csv_row_names_its_line(tmp_path: Path, line: str, says: str) -> None:
    rows = [f"L4-17,{c},{t},bet {t % 4} gamble" for c in ("safe_baseline", "safe_with_risky_patch") for t in range(20)]
    path = tmp_path / "r.csv"
    path.write_text("feature,condition,trial,response\n" + "\n".join(rows[:12] + [line] + rows[12:]) + "\n")
    with pytest.raises(UserError, match=rf"^{path} line 14: {says}; give every row the header's fields"):
        run_shard([str(path)], words_config({}), CUT)


def test_csv_read_by_its_quoting_and_blank_lines_skipped(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    text = "".join(f'L1-2,x,"one, {i}\nword w{i % 3}"\n\n' for i in range(12))
    path.write_text("\ufefffeature,condition,response\n" + text)  # with a spreadsheet's byte-order mark
    got = list(read_trials([str(path)], words_config({"chunk_rows": 5})))
    assert [len(t.response) for t in got] == [5, 5, 2] and got[0].response[1] == "one, 1\nword w1"
    bad = tmp_path / "b.csv"
    bad.write_text('feature,condition,response\nL1-2,x,"never closed\nL1-2,x,y\n')
    with pytest.raises(UserError, match=r"b\.csv line 2: is not valid CSV \(unexpected end of data\)"):
        run_shard([str(bad)], words_config({}), CUT)


def test_a_gz_that_is_not_gzip_is_named_so(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl.gz", original_records(np.random.default_rng(3)))
    with pytest.raises(UserError, match=r"t\.jsonl\.gz: is named \.gz but is not gzip \(BadGzipFile: .*\); rename it"):
        run_shard([str(path)], words_config({}), CUT)


def test_a_truncated_parquet_log_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pd.DataFrame([{k: v for k, v in r.items() if k != "parsed"}
                  for r in original_records(np.random.default_rng(4))]).to_parquet(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match=r"t\.parquet: is not a readable Parquet file: truncated, or not Parquet "
                       r"\(ArrowInvalid: .*\); copy the log again"):
        run_shard([str(path)], words_config({}), CUT)


def test_a_log_that_is_a_folder_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").mkdir()
    with pytest.raises(UserError, match=r"d\.jsonl: is a folder, not a log file"):
        run_shard([str(tmp_path / "d.jsonl")], words_config({}), CUT)
