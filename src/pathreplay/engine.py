"""A replay engine for Llama-family models: static KV cache, grouped-query attention read without
expanding the KV heads, attention over the filled part of the cache only, and patch and capture
applied as tensor operations between blocks (no Python hooks in the step).

It reuses the model's own modules (norms, projections, rotary embedding, MLP, head), so it
computes what the Hugging Face forward computes; only the cache and the attention call differ.
`generate(..., engine=Engine(model, ...))` drives it with the same loop, sampler and
interventions as the hook path.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .patch import Interventions, decoder_layers


def supports(model: Any) -> bool:
    """True for the architectures this engine reproduces exactly (Llama's block layout)."""
    return type(model).__name__ in ("LlamaForCausalLM", "MistralForCausalLM") and not getattr(
        model.config, "sliding_window", None)


class Engine:
    """Static-cache forward passes for up to `batch` rows of up to `max_len` tokens."""

    def __init__(self, model: Any, batch: int, max_len: int) -> None:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        self._rope = apply_rotary_pos_emb
        cfg = model.config
        self.model, self.layers = model, decoder_layers(model)
        p = next(model.parameters())
        self.n_kv = cfg.num_key_value_heads
        self.hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        shape = (len(self.layers), batch, self.n_kv, max_len, self.hd)
        self.k = torch.zeros(shape, dtype=p.dtype, device=p.device)
        self.v = torch.zeros(shape, dtype=p.dtype, device=p.device)
        self.keys = torch.zeros(batch, max_len, dtype=torch.bool, device=p.device)
        self.filled = self.prompt_len = 0

    def reset(self, key_mask: torch.Tensor) -> None:
        """Start a batch: key_mask [B, prompt_len] marks real (non-pad) prompt tokens."""
        self.filled = 0
        self.prompt_len = key_mask.shape[1]
        self.keys.zero_()
        self.keys[: key_mask.shape[0], : key_mask.shape[1]] = key_mask.bool()

    def _mask(self, B: int, s: int, device: torch.device) -> torch.Tensor:
        """[B, 1, s, filled + s] keys each new query may read: causal, no padding, only the
        filled columns. The same for every block of a step, so it is built once per step."""
        end = self.filled + s
        causal = torch.ones(s, end, dtype=torch.bool, device=device).tril(self.filled)
        mask = causal[None, None] & self.keys[:B, None, None, :end]
        # a padding query sees at least itself, so no row is all -inf (NaN would reach the cache)
        diag = torch.arange(s, device=device)
        mask[..., diag, self.filled + diag] = True
        return mask

    def _attention(self, i: int, attn: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   mask: torch.Tensor) -> torch.Tensor:
        B, s, _ = x.shape
        q = attn.q_proj(x).view(B, s, -1, self.hd).transpose(1, 2)
        k = attn.k_proj(x).view(B, s, -1, self.hd).transpose(1, 2)
        v = attn.v_proj(x).view(B, s, -1, self.hd).transpose(1, 2)
        q, k = self._rope(q, k, cos, sin)
        end = self.filled + s
        self.k[i, :B, :, self.filled: end] = k
        self.v[i, :B, :, self.filled: end] = v
        # Only the filled columns, and no repeat of the KV heads: SDPA reads them grouped.
        o = F.scaled_dot_product_attention(q, self.k[i, :B, :, :end], self.v[i, :B, :, :end],
                                           attn_mask=mask, scale=attn.scaling, enable_gqa=True)
        return attn.o_proj(o.transpose(1, 2).reshape(B, s, -1))

    @torch.no_grad()
    def step(self, ids: torch.Tensor, pos: torch.Tensor, iv: Interventions | None) -> torch.Tensor:
        """Run ids [B, s] at positions pos [B, s] through every block; logits of the last column.
        New tokens' keys count as real; patches and captures of `iv` apply between blocks."""
        B, s = ids.shape
        # generated tokens are real keys; prompt columns keep their padding mask
        self.keys[:B, max(self.filled, self.prompt_len): self.filled + s] = True
        base = self.model.model
        x = base.embed_tokens(ids)
        cos, sin = base.rotary_emb(x, pos)
        mask = self._mask(B, s, x.device)
        for i, layer in enumerate(self.layers):
            x = x + self._attention(i, layer.self_attn, layer.input_layernorm(x), cos, sin, mask)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
            if iv is not None:
                x = iv.patch(i, x)
                iv.capture(i, x)
        self.filled += s
        return self.model.lm_head(base.norm(x[:, -1:]))[:, -1]

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, iv: Interventions | None,
                chunk: int = 0) -> torch.Tensor:
        """The prompt, in chunks of `chunk` tokens (0: all at once); logits of its last column.
        Earlier chunks run in the `chunk` phase, so `exp2` patches and last-position captures
        act on the final chunk's last column only."""
        self.reset(mask)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        step = chunk if chunk and chunk < ids.shape[1] else ids.shape[1]
        logits = None
        for c0 in range(0, ids.shape[1], step):
            if iv is not None:
                iv.phase = "prefill" if c0 + step >= ids.shape[1] else "chunk"
            logits = self.step(ids[:, c0: c0 + step], pos[:, c0: c0 + step], iv)
        assert logits is not None
        return logits
