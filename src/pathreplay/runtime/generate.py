"""Autoregressive generation with coupled sampling, left padding and optional interventions.

Coupled sampling: row r draws its t-th token by inverting the CDF of softmax(logits / T) at
u[r, t], a uniform stream fixed by the row's seed. A patched trial and the baseline trial with
the same seed read the same u, so where their tokens differ the patch changed the distribution
enough to move the CDF past u: the difference is the patch's doing, not the sampler's.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from .model import encode_prompts, positions
from .patch import Interventions
from .static import Store


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


def sample(logits: torch.Tensor, u: torch.Tensor, temperature: float, block: int = 256) -> torch.Tensor:
    """Inverse-CDF sampling of one token per row from logits[batch, vocab] at u[batch].

    In two levels: the block of `block` tokens where u * total falls, then the token inside it.
    Probabilities are float32 (one softmax pass over the vocabulary), every sum of them float64:
    the same CDF as one float64 cumulative sum up to float32 rounding of each probability, at a
    fraction of the memory traffic (which, at a 128K vocabulary, a decode step notices)."""
    if temperature <= 0:
        return logits.argmax(-1)
    p = torch.softmax(logits.float() / temperature, -1)
    B, V = p.shape
    if V % block:
        p = torch.nn.functional.pad(p, (0, block - V % block))
    p = p.view(B, -1, block)
    upto = p.sum(-1, dtype=torch.float64).cumsum(-1)  # [B, blocks]: mass up to each block's end
    t = (u.to(p.device, torch.float64) * upto[:, -1])[:, None]
    j = torch.searchsorted(upto, t).clamp_(max=upto.shape[1] - 1)  # [B, 1]
    start = torch.where(j > 0, upto.gather(1, (j - 1).clamp(min=0)), torch.zeros_like(t))
    inner = p.gather(1, j[:, :, None].expand(B, 1, block))[:, 0].cumsum(-1, dtype=torch.float64) + start
    k = torch.searchsorted(inner, t).clamp_(max=block - 1)
    return (j * block + k)[:, 0].clamp_(max=V - 1)


def stop_token_ids(tokenizer: Any, stop_text: str | None) -> torch.Tensor:
    """Ids of tokens that end a row: EOS, and any token whose text holds stop_text."""
    ids = {tokenizer.eos_token_id}
    if stop_text:
        for tok_id in range(len(tokenizer)):
            if stop_text in tokenizer.decode([tok_id]):
                ids.add(tok_id)
    return torch.tensor(sorted(i for i in ids if i is not None))


class Rows:
    """The sampler's state for a batch: tokens so far, which rows are done, and the next token
    and position each row feeds the model. Everything is a device tensor updated in place, so a
    decode step (forward, then `take`) needs no host work and can be replayed as a CUDA graph.
    With `forced` tokens [B, T] a row feeds those instead of sampling (teacher forcing)."""

    def __init__(self, u: torch.Tensor, stop: torch.Tensor, pad: int, temperature: float,
                 last_pos: torch.Tensor, store: Store | None = None, forced: torch.Tensor | None = None) -> None:
        store = store or Store()
        B, T = u.shape
        dev = last_pos.device
        self.temperature, self.pad = temperature, pad
        self.u = store.put("rows.u", u.to(dev))
        self.stop = store.put("rows.stop", stop.to(dev))
        self.forced = None if forced is None else store.put("rows.forced", forced.to(dev, torch.long))
        self.out = store.zeros("rows.out", (B, T), torch.long, dev).fill_(pad)
        self.done = store.zeros("rows.done", (B,), torch.bool, dev)
        self.lengths = store.zeros("rows.lengths", (B,), torch.long, dev)
        self.t = store.zeros("rows.t", (1,), torch.long, dev)  # the column sampled next
        self.tok = store.zeros("rows.tok", (B,), torch.long, dev)  # the token each row feeds next
        self.pos = store.put("rows.pos", last_pos.to(torch.long))  # ... and its position

    def take(self, logits: torch.Tensor) -> None:
        """Sample (or, forced, read) column t for every row from logits [B, vocab]; done rows get pad."""
        if self.forced is None:
            nxt = sample(logits, self.u.index_select(1, self.t).squeeze(1), self.temperature)
        else:
            nxt = self.forced.index_select(1, self.t).squeeze(1)
        nxt = torch.where(self.done, torch.full_like(nxt, self.pad), nxt)
        self.out.index_copy_(1, self.t, nxt[:, None])
        self.lengths += (~self.done).long()
        self.done |= (nxt[:, None] == self.stop[None, :]).any(-1)  # isin may sync; this cannot
        self.tok.copy_(nxt)
        self.pos += 1
        self.t += 1


def cache_arg(model: Any) -> str:
    """The forward's name for the KV cache: `cache` in newer transformers 5 releases,
    `past_key_values` in older ones, which silently ignore (and so never use) a `cache=`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: Sequence[str], seeds: Sequence[int], *,
             max_new_tokens: int, temperature: float,
             interventions: Interventions | None = None,
             stop_ids: torch.Tensor | None = None, top_logits: int = 0,
             engine: Any = None, prefill_chunk: int = 0, forced: torch.Tensor | None = None) -> Generation:
    """Generate up to max_new_tokens per prompt; rows stop at a stop token (default EOS).

    With `engine` (an engine.Engine) the forward passes run on its static cache (decode steps as
    CUDA graphs on a GPU) and apply the interventions between blocks; without, on the model with
    a dynamic cache and hooks. With `forced` [batch, max_new_tokens] each row is fed those
    tokens instead of sampled ones (teacher forcing on another run's tokens): a run with no patch
    computes, step for step, what the run that sampled them computed."""
    from transformers import DynamicCache

    p = next(model.parameters())
    device = p.device
    ids, mask = encode_prompts(tokenizer, prompts, device)
    batch = ids.shape[0]
    if not batch or max_new_tokens <= 0:
        e = torch.zeros(batch, 0, dtype=torch.long)
        return Generation(e, torch.zeros(batch, dtype=torch.long), [""] * batch,
                          mask.sum(-1).cpu(), e, e.float())
    store = engine.store if engine is not None else None
    u = torch.stack([uniforms(s, max_new_tokens) for s in seeds])
    stop = stop_ids if stop_ids is not None else stop_token_ids(tokenizer, None)
    pos = positions(mask)
    rows = Rows(u, stop, tokenizer.pad_token_id, temperature, pos[:, -1], store, forced)
    iv = interventions
    if iv is not None:
        iv.bind(batch, max_new_tokens - 1, device, p.dtype, store)
        iv.phase = "prefill"
    ctx = iv.active() if iv is not None and engine is None else contextlib.nullcontext()
    cache = {cache_arg(model): DynamicCache(config=model.config)} if engine is None else {}
    with ctx:
        if engine is not None:
            logits = engine.prefill(ids, mask, pos, iv, prefill_chunk)
        else:
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, **cache,
                           use_cache=True).logits[:, -1]
        top = torch.log_softmax(logits.float(), -1).topk(top_logits, dim=-1)
        rows.take(logits)
        if iv is not None:
            iv.phase = "decode"
        if engine is not None:
            engine.decode(rows, iv, max_new_tokens - 1)
        else:
            seen = mask
            for _ in range(max_new_tokens - 1):
                if bool(rows.done.all()):
                    break
                seen = torch.cat([seen, torch.ones_like(seen[:, :1])], dim=1)
                logits = model(input_ids=rows.tok[:, None], attention_mask=seen,
                               position_ids=rows.pos[:, None], **cache, use_cache=True).logits[:, -1]
                rows.take(logits)
                if iv is not None:
                    iv.advance()
    lengths = rows.lengths.cpu()
    steps = int(lengths.max())
    if iv is not None:
        iv.steps = steps - 1  # a decode step feeds each generated token but the last
    out = rows.out[:, :steps].cpu()
    texts = [tokenizer.decode(out[r, : int(lengths[r])], skip_special_tokens=True) for r in range(batch)]
    return Generation(out, lengths, texts, mask.sum(-1).cpu(),
                      top.indices.cpu(), top.values.cpu())
