"""Other model families, built by transformers from a config: the hook path generates what
`generate` does and captures each block's output; the engine takes only the families it
reproduces exactly."""

from __future__ import annotations

import pytest
import torch

from pathreplay.runtime.engine import supports
from pathreplay.runtime.generate import generate
from pathreplay.runtime.model import decoder_layers
from pathreplay.runtime.patch import Interventions

pytestmark = pytest.mark.interop


def _model(family: str, tok):
    from transformers import AutoConfig, AutoModelForCausalLM

    common = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id)
    shapes = {
        "mistral": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=256, sliding_window=None),
        "mistral-sliding": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                num_key_value_heads=2, max_position_embeddings=256, sliding_window=8),
        "qwen2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256),
        "gpt2": dict(n_embd=32, n_layer=3, n_head=4, n_positions=256),
    }
    model_type = family.split("-")[0]
    cfg = AutoConfig.for_model(model_type, **shapes[family], **common)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


PROMPTS = ["Choice: 1) Bet $10\n2) Stop\nChoice: ", "Round 1: Bet $10, Win"]


@pytest.mark.parametrize("family", ["mistral", "mistral-sliding", "qwen2", "gpt2"])
def test_hook_path_generates_what_generate_does(family, tiny_lm):
    _, tok = tiny_lm
    model = _model(family, tok)
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        want = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    iv = Interventions(model, capture=[0, 2])
    got = generate(model, tok, PROMPTS, [1, 2], max_new_tokens=6, temperature=0.0, interventions=iv)
    n = got.tokens.shape[1]
    assert torch.equal(got.tokens, want[:, enc["input_ids"].shape[1]: enc["input_ids"].shape[1] + n])
    assert len(decoder_layers(model)) == 3
    assert iv.states(2).shape[:2] == (2, 1 + iv.steps) and torch.isfinite(iv.states(0)).all()
    # the engine is used only for the families it reproduces exactly
    assert supports(model) == (family == "mistral")
