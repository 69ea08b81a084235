"""Config checks that run before any job."""

from __future__ import annotations

import copy
import json

import pytest
import yaml
from conftest import DEMO, ROOT

from pathreplay.config import Prompt, check_config, read_prompts, resolve
from pathreplay.errors import UserError

BASE = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def test_demo_config_passes_and_paths_become_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # as with snakemake --directory elsewhere
    cfg = copy.deepcopy(BASE)
    check_config(cfg, ROOT)
    assert cfg["model"]["path"] == str((DEMO / "model").resolve())
    assert cfg["saes"]["path"] == str((DEMO / "saes").resolve()) + "/L{layer}R"


def test_unknown_relative_path_is_kept_as_hub_id(tmp_path):
    assert resolve("meta-llama/Llama-3.1-8B", tmp_path) == "meta-llama/Llama-3.1-8B"


def test_layer_that_disagrees_with_sae_metadata_is_refused(tmp_path):
    for b in (0, 1):  # folders named for layers 5 and 6 holding SAEs of blocks 0 and 1
        src = DEMO / "saes" / f"L{b}R"
        dst = tmp_path / f"L{b + 5}R"
        dst.mkdir()
        (dst / "hyperparams.json").write_text((src / "hyperparams.json").read_text())
    cfg = copy.deepcopy(BASE)
    cfg["saes"].update(path=str(tmp_path / "L{layer}R"), layers=[5, 6])
    with pytest.raises(UserError, match=r"configured as layer 5 .* reads 'blocks.0.hook_resid_post'"):
        check_config(cfg, ROOT)


def test_missing_sae_layer_is_refused():
    cfg = copy.deepcopy(BASE)
    cfg["saes"]["layers"] = [0, 9]
    with pytest.raises(UserError, match=r"no SAE folder for layer 9.*saes.layers"):
        check_config(cfg, ROOT)


def test_feature_table_checked_against_saes(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("layer,feature_id,cohen_d,safe_value,risky_value\n1,5000,0.8,0.1,0.9\n2,7,0.5,0.2,0.4\n")
    cfg = copy.deepcopy(BASE)
    cfg["features"]["table"] = str(table)
    with pytest.raises(UserError, match=r"t.csv.*row 1.*5000"):
        check_config(cfg, ROOT)


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


def test_prompt_longer_than_context_refused_before_gpu_work():
    from pathreplay.model import check_prompt_lengths

    long = Prompt("long", "Round 1: Bet $10, Win, Balance $120\n" * 60, "safe")
    with pytest.raises(UserError, match=r"prompt 'long' has \d+ tokens; .* context of 512.*shorten"):
        check_prompt_lengths([long], "p.jsonl", str(DEMO / "model"), 12)
    check_prompt_lengths([Prompt("ok", "Choice: ", "safe")], "p.jsonl", str(DEMO / "model"), 12)
    with pytest.raises(UserError, match=r"model.path='.*nowhere'.*cannot read its tokenizer"):
        check_prompt_lengths([Prompt("ok", "x", "safe")], "p.jsonl", str(DEMO / "nowhere"), 12)


def test_prompt_id_that_cannot_name_a_file_refused(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"id": "ok", "text": "x", "context": "c"}) + "\n"
                 + json.dumps({"id": "state/00", "text": "x", "context": "c"}) + "\n")
    with pytest.raises(UserError, match=r"p.jsonl:2: prompt id 'state/00' cannot name a file"):
        read_prompts(str(f))


def test_schema_error_becomes_one_line():
    import jsonschema
    from snakemake.exceptions import WorkflowError

    from pathreplay.config import schema_message

    def validate():  # as snakemake.utils.validate reports it
        try:
            jsonschema.validate({"model": {"dtype": "x"}},
                                {"properties": {"model": {"properties": {"dtype": {"enum": ["float32"]}}}}})
        except jsonschema.ValidationError as e:
            raise WorkflowError("Error validating config file.", e)

    with pytest.raises(WorkflowError) as err:
        validate()
    msg = schema_message(err.value)
    assert msg == "config model.dtype: 'x' is not one of ['float32']; see config/README.md for what it takes"
