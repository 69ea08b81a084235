"""Config checks that run before any job."""

from __future__ import annotations

import copy

import pytest
import yaml

from conftest import DEMO, ROOT
from pathreplay.config import check_config, resolve
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


@pytest.mark.parametrize("target, where", [
    ("pathreplay.config.read_prompts", r"prompts.file='.*prompts.jsonl'"),
    ("pathreplay.config.sae_metas", r"saes.path='.*L\{layer\}R'"),
    ("pathreplay.config.check_model", r"model.path='.*model'"),
])
def test_an_error_no_reader_named_is_still_one_line_naming_the_check(monkeypatch, target, where):
    def broken(*a, **k):
        raise KeyError("inner detail")

    monkeypatch.setattr(target, broken)
    with pytest.raises(UserError, match=rf"^{where}: the start-of-run checks failed on it \(KeyError: 'inner "
                       r"detail'\); check the files it names; if they are right, report this line as a "
                       r"pathreplay bug$"):
        check_config(copy.deepcopy(BASE), ROOT)


def test_sae_weights_are_checked_against_their_metadata_before_any_job(tmp_path):
    import json
    import shutil

    shutil.copytree(DEMO / "saes", tmp_path / "saes")
    hp = tmp_path / "saes" / "L2R" / "hyperparams.json"
    hp.write_text(json.dumps({**json.loads(hp.read_text()), "d_sae": 4096}))
    cfg = copy.deepcopy(BASE)
    cfg["saes"]["path"] = str(tmp_path / "saes" / "L{layer}R")
    with pytest.raises(UserError, match=r"L2R/checkpoints/final.safetensors: encoder.weight has shape \[1024, 128\] "
                       r"but hyperparams.json says d_sae 4096"):
        check_config(cfg, ROOT)


@pytest.mark.parametrize("text", ["{oops", "[1, 2]"])
def test_a_broken_weights_cache_is_read_as_empty(tmp_path, text):
    from pathreplay.config import check_weights, sae_metas

    cache = tmp_path / "w.json"
    cache.write_text(text)
    cfg = copy.deepcopy(BASE)
    cfg["saes"]["path"] = str(DEMO / "saes" / "L{layer}R")
    check_weights(sae_metas(cfg).values(), cache)
    assert len(yaml.safe_load(cache.read_text())) == 4  # the four demo layers passed and are remembered
