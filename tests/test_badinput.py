"""The catalogue of bad input: every case is refused by `snakemake -n`, before any job, with one
line that names the file, the field and the fix; no traceback, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import DEMO
from test_workflow import SMALL, snakemake

pytestmark = pytest.mark.workflow


def _model(tmp: Path, tokenizer: bool = True, **edit) -> str:
    """The demo model's config and (unless not `tokenizer`) its tokenizer (no weights: none are
    read before a job), edited."""
    out = tmp / "model"
    out.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json")[:2 if tokenizer else 0] + ("generation_config.json",):
        shutil.copy(DEMO / "model" / f, out / f)
    cfg = json.loads((DEMO / "model" / "config.json").read_text())
    cfg.update(edit)
    (out / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))
    return str(out)


def _saes(tmp: Path) -> Path:
    out = tmp / "saes"
    shutil.copytree(DEMO / "saes", out)
    return out


def _weights(saes: Path, layer: int = 1) -> Path:
    return saes / f"L{layer}R" / "checkpoints" / "final.safetensors"


def _prompts(tmp: Path, line: bytes) -> str:
    f = tmp / "prompts.jsonl"
    f.write_bytes((DEMO / "prompts.jsonl").read_bytes() + line + b"\n")
    return str(f)


def _table(tmp: Path, rows: str) -> str:
    f = tmp / "t.csv"
    f.write_text("layer,feature_id,cohen_d,safe_value,risky_value,label\n" + rows)
    return str(f)


def no_config(tmp):
    m = _model(tmp)
    (Path(m) / "config.json").unlink()
    return {"model": {"path": m}}, "the folder has no config.json"


def blocks_not_found(tmp):
    opt = dict(model_type="opt", architectures=["OPTForCausalLM"], hidden_size=128, ffn_dim=256,
               num_hidden_layers=4, num_attention_heads=4, word_embed_proj_dim=128, vocab_size=640)
    return {"model": {"path": _model(tmp, **opt)}}, "cannot find the decoder blocks of OPTForCausalLM"


def sae_past_the_model(tmp):
    return {"model": {"path": _model(tmp, num_hidden_layers=2)}}, "saes.layers: blocks [2, 3] are past the model's 2"


def sae_width_not_the_model(tmp):
    return {"model": {"path": _model(tmp, hidden_size=64, head_dim=16)}}, "hidden size is 64 but the SAEs read vectors of 128"


def nan_weights(tmp):
    saes = _saes(tmp)
    t = load_file(_weights(saes))
    t["encoder.weight"][3, 5] = float("nan")
    save_file(t, str(_weights(saes)))
    return {"saes": {"path": str(saes / "L{layer}R")}}, "holds non-finite weights (encoder.weight: 1 values)"


def truncated_weights(tmp):
    saes = _saes(tmp)
    f = _weights(saes, 2)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return {"saes": {"path": str(saes / "L{layer}R")}}, "final.safetensors: cannot be read"


def no_d_model(tmp):
    saes = _saes(tmp)
    hp = json.loads((saes / "L0R" / "hyperparams.json").read_text())
    del hp["d_model"]
    (saes / "L0R" / "hyperparams.json").write_text(json.dumps(hp))
    return {"saes": {"path": str(saes / "L{layer}R")}}, "has no 'd_model'"


def odd_placeholder(tmp):
    return {"saes": {"path": str(DEMO / "saes" / "L{layer}R{x}")}}, "holds a placeholder other than {layer}"


def relative_typo(tmp):
    # resources/ is the repository's: a typo below it is a missing local folder, not a hub id
    return {"saes": {"path": "resources/demo/sae/L{layer}R"}}, "no SAE folder for layer 0"


def inf_value(tmp):
    t = _table(tmp, "1,5,0.8,0.3,inf,risky\n2,7,0.5,0.3,0.6,safe\n")
    return {"features": {"table": t}, "screen": {"enabled": False}}, "risky_value is inf"


def feature_past_the_sae(tmp):
    t = _table(tmp, "1,5000,0.8,0.3,0.9,risky\n")
    return {"features": {"table": t}, "screen": {"enabled": False}}, "feature_id 5000 >= d_sae 1024"


def empty_selection(tmp):
    t = _table(tmp, "1,500,0.8,0.3,0.9,risky\n2,700,0.5,0.3,0.6,safe\n")
    return ({"features": {"table": t}, "screen": {"enabled": False}, "select": {"layers": [0]}},
            "no feature of")


@pytest.mark.parametrize("pid, says", [(".", "prompt id '.' cannot name a folder"),
                                       ("..", "prompt id '..' cannot name a folder"),
                                       (".x", "prompt id '.x' cannot name a folder"),
                                       (None, "field 'id' missing or null")])
def test_prompt_ids_that_leave_their_folder(tmp_path, pid, says):
    _refused(tmp_path, {"prompts": {"file": _prompts(tmp_path, json.dumps(
        {"id": pid, "text": "x", "context": "safe"}).encode())}}, says)


def non_utf8_prompts(tmp):
    return {"prompts": {"file": _prompts(tmp, b'{"id": "z", "text": "caf\xe9", "context": "safe"}')}}, "is not UTF-8"


def null_context(tmp):
    line = json.dumps({"id": "z", "text": "x", "context": None}).encode()
    return {"prompts": {"file": _prompts(tmp, line)}}, "field 'context' missing or null"


def cuda_without_gpu(tmp):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    return {"device": "cuda"}, "device: cuda was asked for but no GPU is visible here"


def custom_code_not_trusted(tmp):
    m = _model(tmp, model_type="pathreplay-custom", architectures=["CustomForCausalLM"],
               auto_map={"AutoConfig": "custom.CustomConfig", "AutoModelForCausalLM": "custom.CustomForCausalLM"})
    (Path(m) / "custom.py").write_text("raise SystemExit('custom code ran')\n")
    return {"model": {"path": m}}, "set model.trust_remote_code: true if you trust its code"


def _edit_weights(tmp: Path, edit) -> dict:
    """The demo SAEs with layer 1's weights changed by edit(tensors) (in place)."""
    saes = _saes(tmp)
    t = load_file(_weights(saes))
    edit(t)
    save_file(t, str(_weights(saes)))
    return {"saes": {"path": str(saes / "L{layer}R")}}


def sae_neither_folder_nor_hub(tmp):
    # no folder `elsewhere` here or in the repository: it may be a hub repo, which cannot be read offline
    return ({"saes": {"path": "elsewhere/L{layer}R"}},
            "'elsewhere/L0R' is neither a folder here nor a Hugging Face hub path that can be read offline")


def model_neither_folder_nor_hub(tmp):
    return {"model": {"path": "elsewhere/model"}}, "it is neither a folder here nor a hub id that can be read offline"


def hyperparams_is_a_folder(tmp):
    saes = _saes(tmp)
    (saes / "L0R" / "hyperparams.json").unlink()
    (saes / "L0R" / "hyperparams.json").mkdir()
    return {"saes": {"path": str(saes / "L{layer}R")}}, "L0R/hyperparams.json: is a folder, not a file"


def weights_are_a_folder(tmp):
    saes = _saes(tmp)
    _weights(saes).unlink()
    _weights(saes).mkdir()
    return {"saes": {"path": str(saes / "L{layer}R")}}, "final.safetensors: is a folder, not the weights file"


def d_sae_past_the_weights(tmp):
    saes = _saes(tmp)
    hp = json.loads((saes / "L1R" / "hyperparams.json").read_text())
    (saes / "L1R" / "hyperparams.json").write_text(json.dumps({**hp, "d_sae": 4096}))
    return ({"saes": {"path": str(saes / "L{layer}R")}},
            "encoder.weight has shape [1024, 128] but hyperparams.json says d_sae 4096, d_model 128")


def int8_weights(tmp):
    def to_int8(t):
        t["encoder.weight"] = t["encoder.weight"].to(torch.int8)
    return _edit_weights(tmp, to_int8), "encoder.weight is stored as int8, not floating point"


def transposed_encoder(tmp):
    def transpose(t):
        t["encoder.weight"] = t["encoder.weight"].T.contiguous()
    return _edit_weights(tmp, transpose), "encoder.weight is stored transposed: [128, 1024] where hyperparams.json"


def no_tokenizer_files(tmp):
    return {"model": {"path": _model(tmp, tokenizer=False)}}, "the folder has no tokenizer files"


def broken_tokenizer(tmp):
    m = _model(tmp)
    (Path(m) / "tokenizer.json").write_text("{oops")
    return {"model": {"path": m}}, "cannot load its tokenizer as a local folder (JSONDecodeError"


def vocab_smaller_than_the_tokenizer(tmp):
    return ({"model": {"path": _model(tmp, vocab_size=100)}},
            "its tokenizer has 554 tokens but the model's embedding has 100 rows (config.json vocab_size)")


def feature_table_is_a_folder(tmp):
    (tmp / "t.csv").mkdir()
    return {"features": {"table": str(tmp / "t.csv")}, "screen": {"enabled": False}}, "is a folder, not a feature table"


CASES = [no_config, blocks_not_found, sae_past_the_model, sae_width_not_the_model, nan_weights, truncated_weights,
         no_d_model, odd_placeholder, relative_typo, inf_value, feature_past_the_sae, empty_selection,
         non_utf8_prompts, null_context, cuda_without_gpu, custom_code_not_trusted,
         sae_neither_folder_nor_hub, model_neither_folder_nor_hub, hyperparams_is_a_folder, weights_are_a_folder,
         d_sae_past_the_weights, int8_weights, transposed_encoder, no_tokenizer_files, broken_tokenizer,
         vocab_smaller_than_the_tokenizer, feature_table_is_a_folder]


def _refused(tmp_path: Path, change: dict, says: str) -> None:
    wd = tmp_path / "wd"
    wd.mkdir()
    cfg = {**SMALL, **{k: {**SMALL.get(k, {}), **v} if isinstance(v, dict) else v for k, v in change.items()}}
    r = snakemake(wd, "-n", config=cfg, env={"HF_HUB_OFFLINE": "1"})  # a hub path is never fetched here
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("pathreplay: error:")]
    assert r.returncode != 0 and len(errors) == 1, r.stderr[-3000:]
    assert says in errors[0], errors[0]
    assert "Traceback" not in r.stderr and not (wd / "results").exists()


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_is_refused_before_any_job(tmp_path, case):
    change, says = case(tmp_path)
    _refused(tmp_path, change, says)


def test_custom_code_never_runs_while_the_dag_is_built(tmp_path):
    m = _model(tmp_path, model_type="pathreplay-custom", architectures=["CustomForCausalLM"],
               auto_map={"AutoConfig": "custom.CustomConfig", "AutoModelForCausalLM": "custom.CustomForCausalLM"})
    marker = tmp_path / "ran"
    (Path(m) / "custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (tmp_path / "wd").mkdir()
    r = snakemake(tmp_path / "wd", "-n", config={**SMALL, "model": {"path": m, "trust_remote_code": True}})
    assert r.returncode == 0, r.stderr[-2000:]
    assert not marker.exists()
