"""Load a causal LM and its tokenizer from a hub id or a local folder."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from ..errors import fail, first_line

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
    """(model in eval mode, left-padding tokenizer); a model or tokenizer that cannot be loaded,
    or a tokenizer with ids past the model's embedding, is one UserError."""
    from transformers import AutoModelForCausalLM

    dev = resolve_device(device)
    where = f"model.path={path!r}"
    tok = _tokenizer(path, trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code)
    except OSError as e:
        fail(where, f"cannot load it as {_as_what(path)}: {first_line(e)}",
             "point model.path at a folder with config.json, weights and tokenizer files")
    except (ValueError, KeyError, TypeError) as e:  # transformers' errors for a config or weights it cannot use
        fail(where, f"cannot be loaded ({type(e).__name__}: {first_line(e)})",
             "use a causal LM that transformers can load")
    _check_vocab(tok, getattr(model.get_input_embeddings(), "num_embeddings", None), where, "its weights")
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.to(dev).eval()
    return model, tok


def _as_what(path: str) -> str:
    """How a model.path that failed to load was taken: a folder here, a folder that is not here,
    or (a relative name that is no folder here) a hub id."""
    if Path(path).exists():
        return "a local folder"
    if os.path.isabs(path) or path.startswith(("./", "../", "~")):
        return "a folder, which does not exist"
    from huggingface_hub.constants import HF_HUB_OFFLINE

    return ("a hub id: it is neither a folder here nor a hub id that can be read"
            + (" offline (HF_HUB_OFFLINE is set)" if HF_HUB_OFFLINE else " (is it downloaded, and HF_TOKEN set?)"))


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.tiktoken")


def _tokenizer(path: str, trust_remote_code: bool) -> Any:
    """The model's tokenizer; a folder without tokenizer files, or files transformers cannot
    read, is one UserError naming model.path."""
    from transformers import AutoTokenizer

    where = f"model.path={path!r}"
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - transformers', tokenizers' (a bare Exception) and json's errors
        if Path(path).is_dir() and not any((Path(path) / f).exists() for f in TOKENIZER_FILES):
            fail(where, f"the folder has no tokenizer files (none of {', '.join(TOKENIZER_FILES[:4])}, ...)",
                 "copy the tokenizer files that came with the model into it")
        fail(where, f"cannot load its tokenizer as {_as_what(path)} ({type(e).__name__}: {first_line(e)})",
             "point model.path at a folder with config.json and the model's own tokenizer files, or a reachable hub id")


def _check_vocab(tok: Any, vocab: int | None, where: str, source: str) -> None:
    """Refuse a tokenizer that can give ids past the model's `vocab` embedding rows (as `source`
    says)."""
    if vocab and len(tok) > int(vocab):
        fail(where, f"its tokenizer has {len(tok)} tokens but the model's embedding has {vocab} rows ({source}): "
             "ids past them cannot be looked up",
             "use the tokenizer that came with the model (or a model whose vocab_size covers it)")


def encode_prompts(tokenizer: Any, prompts: Sequence[str], device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded input ids and attention mask."""
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Each token's position counted from its row's first real token (left padding sits at 0)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


DECODER_PATHS = ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers")


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's list of decoder blocks, whatever the architecture calls it (DECODER_PATHS)."""
    for path in DECODER_PATHS:
        obj: object = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise TypeError(f"cannot find the decoder blocks of {type(model).__name__}")


def check_prompt_lengths(prompts: Sequence[Any], where: str, model_path: str, max_new_tokens: int) -> None:
    """Refuse, before any GPU work, a tokenizer missing or larger than the model's vocabulary,
    and prompts which the model cannot hold together with their generation. Loads the tokenizer
    and config only, and runs no custom code (a model that needs it is checked in its jobs)."""
    from transformers import AutoConfig

    tok = _tokenizer(model_path, False)
    try:
        cfg = AutoConfig.from_pretrained(model_path, trust_remote_code=False)
    except (OSError, ValueError) as e:
        fail(f"model.path={model_path!r}", f"cannot read its config as {_as_what(model_path)}: {first_line(e)}",
             "point model.path at a folder with config.json and tokenizer files, or a reachable hub id")
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    _check_vocab(tok, getattr(text_cfg, "vocab_size", None), f"model.path={model_path!r}", "config.json vocab_size")
    ctx = getattr(cfg, "max_position_embeddings", None)
    for q in prompts:
        n = len(tok(q.text)["input_ids"])
        if ctx and n + max_new_tokens > ctx:
            fail(where, f"prompt {q.id!r} has {n} tokens; with {max_new_tokens} new tokens it exceeds the "
                 f"model's context of {ctx}", "shorten the prompt or lower replay.max_new_tokens")


def check_model(path: str, blocks: Sequence[int], d_model: int, trust_remote_code: bool = False) -> None:
    """The model against the SAEs before any job, from its config alone (no weights; built on
    the meta device): a local folder has its config.json, transformers can build it, its decoder
    blocks can be found, every SAE's block exists, and its hidden size is the SAEs' d_model.
    A model with code of its own is not built here: its code runs in the jobs only."""
    from transformers import AutoConfig, AutoModelForCausalLM

    where = f"model.path={path!r}"
    if Path(path).exists() and not (Path(path) / "config.json").exists():
        fail(where, "the folder has no config.json", "point model.path at a Hugging Face model folder")
    if trust_remote_code:
        return
    try:
        cfg = AutoConfig.from_pretrained(path, trust_remote_code=False)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
    except OSError as e:
        fail(where, f"cannot read its config as {_as_what(path)}: {first_line(e)}",
             "point model.path at a folder with config.json, or a reachable hub id")
    except Exception as e:  # noqa: BLE001 - transformers and huggingface_hub raise several types here
        fix = ("set model.trust_remote_code: true if you trust its code" if "trust_remote_code" in str(e)
               else "use a causal LM that transformers can build")
        fail(where, f"cannot be built from its config ({first_line(e)})", fix)
    try:
        n = len(decoder_layers(model))
    except TypeError as e:
        fail(where, str(e), f"use a model whose blocks are one of {', '.join(DECODER_PATHS)}")
    beyond = [b for b in blocks if b >= n]
    if beyond:
        fail("saes.layers", f"blocks {beyond} are past the model's {n} blocks (0..{n - 1})",
             "list only layers the model has, or point model.path at the model the SAEs were trained on")
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None)
    if hidden is not None and int(hidden) != d_model:
        fail(where, f"its hidden size is {hidden} but the SAEs read vectors of {d_model}",
             "use the model the SAEs were trained on")
