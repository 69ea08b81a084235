"""Load a causal LM and its tokenizer from a hub id or a local folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from .errors import fail

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
Device = Literal["auto", "cpu", "cuda"]


def resolve_device(device: Device) -> torch.device:
    """`auto` is the GPU Snakemake's slot allocator (or SLURM) left visible, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        fail("device", "cuda was asked for but no GPU is visible", "set device: auto or cpu")
    return torch.device(device)


def load_model(path: str, dtype: str = "float32", device: Device = "auto",
               trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(model in eval mode, left-padding tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    local = Path(path).exists()
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype],
                                                     trust_remote_code=trust_remote_code)
    except OSError as e:
        where = "a local folder" if local else "a hub id (is it downloaded, and HF_TOKEN set?)"
        fail(f"model.path={path!r}", f"cannot load it as {where}: {str(e).splitlines()[0]}",
             "point model.path at a folder with config.json, weights and tokenizer files")
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.to(dev).eval()
    return model, tok


def encode_prompts(tokenizer: Any, prompts: Sequence[str], device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded input ids and attention mask."""
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Each token's position counted from its row's first real token (left padding sits at 0)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def check_prompt_lengths(prompts: Sequence[Any], where: str, model_path: str, max_new_tokens: int,
                         trust_remote_code: bool = False) -> None:
    """Refuse, before any GPU work, prompts which the model cannot hold together with their
    generation. Loads the tokenizer and config only."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        cfg = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except OSError as e:
        fail(f"model.path={model_path!r}", f"cannot read its tokenizer and config: {str(e).splitlines()[0]}",
             "point model.path at a folder with config.json and tokenizer files, or a reachable hub id")
    ctx = getattr(cfg, "max_position_embeddings", None)
    for q in prompts:
        n = len(tok(q.text)["input_ids"])
        if ctx and n + max_new_tokens > ctx:
            fail(where, f"prompt {q.id!r} has {n} tokens; with {max_new_tokens} new tokens it exceeds the "
                 f"model's context of {ctx}", "shorten the prompt or lower replay.max_new_tokens")
