"""Model loading's helpers: prompt encoding, positions, and prompts too long for the model."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import DEMO
from pathreplay.errors import UserError
from pathreplay.replay.prompts import Prompt
from pathreplay.runtime.model import check_model, check_prompt_lengths, encode_prompts, positions, resolve_device


def test_positions_count_from_each_rows_first_real_token():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert positions(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0]]


def test_prompts_are_left_padded(tiny_lm):
    _, tok = tiny_lm
    ids, mask = encode_prompts(tok, ["Choice: ", "Round 1: Bet $10, Win, Balance $120\nChoice: "], torch.device("cpu"))
    assert ids.shape == mask.shape and mask[1].all() and not mask[0, 0]
    short = int(mask[0].sum())
    alone, _ = encode_prompts(tok, ["Choice: "], torch.device("cpu"))
    assert ids[0, -short:].tolist() == alone[0].tolist()  # the real tokens sit at the right
    assert (ids[0, :-short] == tok.pad_token_id).all()


def test_cpu_is_always_available_and_cuda_refused_without_a_gpu(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # on a GPU box as well
    with pytest.raises(UserError, match="no GPU is visible"):
        resolve_device("cuda")


def test_prompt_longer_than_context_refused_before_gpu_work():
    long = Prompt("long", "Round 1: Bet $10, Win, Balance $120\n" * 60, "safe")
    with pytest.raises(UserError, match=r"prompt 'long' has \d+ tokens; .* context of 512.*shorten"):
        check_prompt_lengths([long], "p.jsonl", str(DEMO / "model"), 12)
    check_prompt_lengths([Prompt("ok", "Choice: ", "safe")], "p.jsonl", str(DEMO / "model"), 12)
    with pytest.raises(UserError, match=r"model.path='.*nowhere'.*cannot load its tokenizer as a folder, "
                       r"which does not exist"):
        check_prompt_lengths([Prompt("ok", "x", "safe")], "p.jsonl", str(DEMO / "nowhere"), 12)


@pytest.mark.parametrize("edit", [{"num_attention_heads": 3}, {"num_hidden_layers": "four"}])
def test_a_config_transformers_cannot_build_is_one_line(tmp_path, edit):
    cfg = {**json.loads((DEMO / "model" / "config.json").read_text()), **edit}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"cannot be built from its config \(.+\); use a causal LM"):
        check_model(str(tmp_path), [0], 128)


def _model_folder(tmp_path, tokenizer=True, **edit):
    out = tmp_path / "m"
    out.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json")[:2 if tokenizer else 0]:
        (out / f).write_bytes((DEMO / "model" / f).read_bytes())
    cfg = {**json.loads((DEMO / "model" / "config.json").read_text()), **edit}
    (out / "config.json").write_text(json.dumps(cfg))
    return str(out)


def test_tokenizer_missing_broken_or_past_the_vocabulary_is_one_line(tmp_path):
    ok = [Prompt("ok", "Choice: ", "safe")]
    with pytest.raises(UserError, match=r"model.path='.*/m': the folder has no tokenizer files \(none of tokenizer"):
        check_prompt_lengths(ok, "p.jsonl", _model_folder(tmp_path, tokenizer=False), 12)
    (tmp_path / "m" / "tokenizer.json").write_text("{oops")
    with pytest.raises(UserError, match=r"cannot load its tokenizer as a local folder \(JSONDecodeError: "):
        check_prompt_lengths(ok, "p.jsonl", str(tmp_path / "m"), 12)
    (tmp_path / "v").mkdir()
    small = _model_folder(tmp_path / "v", vocab_size=100)
    with pytest.raises(UserError, match=r"its tokenizer has 554 tokens but the model's embedding has 100 rows "
                       r"\(config.json vocab_size\): ids past them cannot be looked up; use the tokenizer"):
        check_prompt_lengths(ok, "p.jsonl", small, 12)


def test_a_model_whose_embedding_is_smaller_than_its_tokenizer_is_refused_when_loaded(tmp_path):
    from conftest import make_tiny_lm
    from pathreplay.runtime.model import load_model

    model, tok = make_tiny_lm()  # a copy: the session's tiny_lm is shared
    model.resize_token_embeddings(len(tok) - 8)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(UserError, match=rf"its tokenizer has {len(tok)} tokens but the model's embedding has "
                       rf"{len(tok) - 8} rows \(its weights\)"):
        load_model(str(tmp_path), device="cpu")
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(UserError, match=r"the folder has no tokenizer files"):
        load_model(str(tmp_path), device="cpu")


def test_a_relative_model_path_that_is_no_folder_says_both(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"model.path='elsewhere/model': cannot read its config as a hub id: it is "
                       r"neither a folder here nor a hub id that can be read offline"):
        check_model("elsewhere/model", [0], 128)
