"""The words jobs through Snakemake: logs that leave nothing to test fail the job with one line."""

from __future__ import annotations

import pytest

from test_workflow import snakemake

pytestmark = pytest.mark.workflow


def test_an_empty_log_fails_the_words_job_with_one_line(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "a.jsonl").write_text("")
    r = snakemake(tmp_path, "--cores", "1", "words", config={"words": {"logs": ["logs/*.jsonl"], "shards": 1}})
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("pathreplay: error:")]
    assert r.returncode != 0 and len(errors) == 1, r.stderr[-3000:]
    assert "config words.logs: the logs hold no trials" in errors[0] and "Traceback" not in r.stderr
    assert not list((tmp_path / "results").glob("words/**/*.parquet"))
