"""Autoregressive generation with coupled sampling, left padding and optional interventions.

Coupled sampling: row r draws its t-th token by inverting the CDF of softmax(logits / T) at
u[r, t], a uniform stream fixed by the row's seed. A patched trial and the baseline trial with
the same seed read the same u, so where their tokens differ the patch changed the distribution
enough to move the CDF past u: the difference is the patch's doing, not the sampler's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from .patch import Interventions


class Generation(NamedTuple):
    """Generated tokens and texts of a batch."""

    tokens: torch.Tensor  # [batch, steps] (pad after a row finished)
    lengths: torch.Tensor  # [batch] tokens generated per row (EOS and stop token included)
    texts: list[str]
    prompt_lengths: torch.Tensor  # [batch] prompt tokens per row (BOS included)
    top_ids: torch.Tensor  # [batch, k] the first generated token's k likeliest ids (k may be 0)
    top_logprobs: torch.Tensor  # [batch, k] their log-probabilities


def uniforms(seed: int, n: int) -> torch.Tensor:
    """The row's uniform stream: n draws fixed by its seed alone."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.rand(n, generator=g, dtype=torch.float64)


def sample(logits: torch.Tensor, u: torch.Tensor, temperature: float) -> torch.Tensor:
    """Inverse-CDF sampling of one token per row from logits[batch, vocab] at u[batch]."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    cdf = probs.cumsum(-1)
    idx = torch.searchsorted(cdf, (u.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)).squeeze(-1)
    return idx.clamp_(max=logits.shape[-1] - 1)


def stop_token_ids(tokenizer: Any, stop_text: str | None) -> torch.Tensor:
    """Ids of tokens that end a row: EOS, and any token whose text holds stop_text."""
    ids = {tokenizer.eos_token_id}
    if stop_text:
        for tok_id in range(len(tokenizer)):
            if stop_text in tokenizer.decode([tok_id]):
                ids.add(tok_id)
    return torch.tensor(sorted(i for i in ids if i is not None))


def encode_prompts(tokenizer: Any, prompts: Sequence[str], device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded input ids and attention mask."""
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: Sequence[str], seeds: Sequence[int], *,
             max_new_tokens: int, temperature: float,
             interventions: Interventions | None = None,
             stop_ids: torch.Tensor | None = None, top_logits: int = 0,
             engine: Any = None, prefill_chunk: int = 0) -> Generation:
    """Generate up to max_new_tokens per prompt; rows stop at a stop token (default EOS).

    With `engine` (an engine.Engine) the forward passes run on its static cache and apply the
    interventions between blocks; without, on the model with a dynamic cache and hooks."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    ids, mask = encode_prompts(tokenizer, prompts, device)
    batch = ids.shape[0]
    u = torch.stack([uniforms(s, max_new_tokens) for s in seeds]) if batch else torch.zeros(0, 0)
    stop = (stop_ids if stop_ids is not None else stop_token_ids(tokenizer, None)).to(device)
    pad = tokenizer.pad_token_id
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config) if engine is None else None
    out = torch.full((batch, max_new_tokens), pad, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    step_ids, step_pos = ids, pos
    ctx = interventions.active() if interventions is not None and engine is None else None
    if ctx is not None:
        ctx.__enter__()
    try:
        for t in range(max_new_tokens):
            if interventions is not None:
                interventions.phase = "prefill" if t == 0 else "decode"
            if engine is None:
                logits = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos,
                               cache=cache, use_cache=True).logits[:, -1]
            elif t == 0:
                logits = engine.prefill(step_ids, mask, interventions, prefill_chunk)
            else:
                logits = engine.step(step_ids, step_pos, interventions)
            if t == 0:
                top = torch.log_softmax(logits.float(), -1).topk(top_logits, dim=-1)
            nxt = sample(logits.float(), u[:, t], temperature)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            out[:, t] = nxt
            lengths += (~done).long()
            done |= torch.isin(nxt, stop)
            if bool(done.all()) or t == max_new_tokens - 1:
                break
            step_ids = nxt[:, None]
            step_pos = step_pos[:, -1:] + 1
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)
    steps = int(lengths.max()) if batch else 0
    out = out[:, :steps]
    texts = [tokenizer.decode(out[r, : int(lengths[r])], skip_special_tokens=True) for r in range(batch)]
    if not batch or max_new_tokens == 0:
        top = torch.zeros(batch, 0).topk(0)
    return Generation(out.cpu(), lengths.cpu(), texts, mask[:, : ids.shape[1]].sum(-1).cpu(),
                      top.indices.cpu(), top.values.cpu())
