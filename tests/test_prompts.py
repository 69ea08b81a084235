"""The prompts file: every bad line refused in one line that names it."""

from __future__ import annotations

import json

import pytest

from pathreplay.errors import UserError
from pathreplay.replay.prompts import read_prompts


@pytest.mark.parametrize("line,msg", [
    ('{"id": "a", "text": "  ", "context": "safe"}', "empty"),
    ('{"id": "a", "context": "safe"}', "field 'text' missing"),
    ('{"id": "a", "text": "x"', "not valid JSON"),
])
def test_bad_prompts_are_refused(tmp_path, line, msg):
    f = tmp_path / "p.jsonl"
    f.write_text(line + "\n")
    with pytest.raises(UserError, match=msg):
        read_prompts(str(f))


def test_duplicate_prompt_ids_refused(tmp_path):
    f = tmp_path / "p.jsonl"
    rec = json.dumps({"id": "a", "text": "x", "context": "c"})
    f.write_text(rec + "\n" + rec + "\n")
    with pytest.raises(UserError, match="appears twice"):
        read_prompts(str(f))


def test_prompt_id_that_cannot_name_a_file_refused(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"id": "ok", "text": "x", "context": "c"}) + "\n"
                 + json.dumps({"id": "state/00", "text": "x", "context": "c"}) + "\n")
    with pytest.raises(UserError, match=r"p.jsonl:2: prompt id 'state/00' cannot name a folder"):
        read_prompts(str(f))


def test_prompts_read_in_file_order(tmp_path):
    f = tmp_path / "p.jsonl"
    lines = [json.dumps({"id": i, "text": f"t{i}", "context": c}) for i, c in (("b", "safe"), ("a", 2))]
    f.write_text("\n".join(lines) + "\n\n")
    got = read_prompts(str(f))
    assert [(q.id, q.text, q.context) for q in got] == [("b", "tb", "safe"), ("a", "ta", "2")]
    with pytest.raises(UserError, match="file not found"):
        read_prompts(str(tmp_path / "none.jsonl"))


@pytest.mark.parametrize("pid", [".", "..", ".hidden", None])
def test_ids_that_would_leave_their_folder_or_hide_are_refused(tmp_path, pid):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"id": pid, "text": "x", "context": "c"}) + "\n")
    with pytest.raises(UserError, match="cannot name a folder" if pid else "field 'id' missing or null"):
        read_prompts(str(f))


def test_a_folder_is_not_a_prompts_file(tmp_path):
    with pytest.raises(UserError, match=r"prompts.file=.*: is a folder; point prompts.file at a JSONL file"):
        read_prompts(str(tmp_path))


def test_null_context_and_non_utf8_are_refused(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"id": "a", "text": "x", "context": None}) + "\n")
    with pytest.raises(UserError, match="field 'context' missing or null"):
        read_prompts(str(f))
    f.write_bytes(b'{"id": "a", "text": "caf\xe9", "context": "c"}\n')
    with pytest.raises(UserError, match=r"p.jsonl: is not UTF-8 text .*save the file as UTF-8"):
        read_prompts(str(f))
