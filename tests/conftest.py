"""Shared fixtures: tiny models and SAEs written in each on-disk format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures" / "real"
DEMO = ROOT / "resources" / "demo"


DOSE_RESPONSE = "exp2_dose_response_trials_sample.jsonl"  # a sample of llm-addiction's exp2_revalidation_trials


def real_fixture(name: str) -> Path:
    """One of the study's real files (../shared/fixtures/real); the test is skipped where they are absent."""
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"real fixture absent: {path}")
    return path


def replay_prompts():
    """Three short game prompts of one context, for replays on the tiny model."""
    from pathreplay.replay.prompts import Prompt

    return [Prompt(f"p{i}", t, "c") for i, t in enumerate(
        ["Choice: 1) Bet $10\n", "Round 1: Bet $10, Win, Balance $120\nChoice: ", "2) Stop\nChoice: "])]


def identity_sae(d: int, threshold: float = 0.0, path: Path | None = None):
    """A jumprelu SAE whose feature i reads and writes coordinate i, above `threshold`."""
    from pathreplay.sae.exact import SAE
    from pathreplay.sae.files import SAEMeta

    meta = SAEMeta("llamascope", path, d, d, "blocks.0.hook_resid_post", 0, "jumprelu", None)
    eye = torch.eye(d)
    return SAE(meta, eye, torch.zeros(d), torch.full((d,), threshold), eye, torch.zeros(d))


def write_llamascope(folder: Path, E, bE, D, bD, *, block: int, threshold: float, avg_norm: float,
                     include_norm: bool = True) -> Path:
    from safetensors.torch import save_file

    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    d_sae, d_model = np.asarray(E).shape
    hp = {"d_model": d_model, "d_sae": d_sae, "hook_point_in": f"blocks.{block}.hook_resid_post",
          "hook_point_out": f"blocks.{block}.hook_resid_post", "act_fn": "jumprelu",
          "jump_relu_threshold": threshold, "norm_activation": "dataset-wise",
          "dataset_average_activation_norm": {"in": avg_norm, "out": avg_norm},
          "sparsity_include_decoder_norm": include_norm, "top_k": 50}
    (folder / "hyperparams.json").write_text(json.dumps(hp))
    t = {"encoder.weight": E, "encoder.bias": bE, "decoder.weight": D, "decoder.bias": bD}
    save_file({k: torch.as_tensor(v, dtype=torch.float32).contiguous() for k, v in t.items()},
              str(folder / "checkpoints" / "final.safetensors"))
    return folder


def write_saelens(folder: Path, W_enc, b_enc, W_dec, b_dec, *, block: int, architecture: str,
                  threshold=None, apply_b_dec: bool = True, k: int | None = None) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    d_in, d_sae = np.asarray(W_enc).shape
    cfg = {"d_in": d_in, "d_sae": d_sae, "hook_name": f"blocks.{block}.hook_resid_post",
           "architecture": architecture, "apply_b_dec_to_input": apply_b_dec,
           "normalize_activations": "none"}
    if k is not None:
        cfg["activation_fn_kwargs"] = {"k": k}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    t = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if threshold is not None:
        t["threshold"] = threshold
    save_file({k2: torch.as_tensor(v, dtype=torch.float32).contiguous() for k2, v in t.items()},
              str(folder / "sae_weights.safetensors"))
    return folder


def make_tiny_lm():
    """A random 3-block Llama with a byte-level tokenizer; deterministic."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from pathreplay.study.demo import build_tokenizer

    tok = build_tokenizer(["Choice: 1) Bet $10\n2) Stop\nRound 1: Bet $10, Win, Balance $120\n"] * 20, 300)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg).eval()
    return model, tok


@pytest.fixture(scope="session")
def tiny_lm():
    """make_tiny_lm(), once per session."""
    return make_tiny_lm()


@pytest.fixture(scope="session")
def tiny_saes(tmp_path_factory, tiny_lm):
    """Random Llama Scope SAEs (d_sae 64) for every block of tiny_lm: {block: folder}."""
    model, _ = tiny_lm
    root = tmp_path_factory.mktemp("saes")
    g = torch.Generator().manual_seed(1)
    d = model.config.hidden_size
    out = {}
    for b in range(model.config.num_hidden_layers):
        E = torch.randn(64, d, generator=g) / d ** 0.5
        D = torch.randn(d, 64, generator=g) / d ** 0.5
        out[b] = write_llamascope(root / f"L{b}R", E, torch.randn(64, generator=g) * 0.1, D,
                                  torch.randn(d, generator=g) * 0.1, block=b, threshold=0.05,
                                  avg_norm=float(d ** 0.5))
    return out
