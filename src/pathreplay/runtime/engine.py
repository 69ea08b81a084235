"""A replay engine for Llama-family models: static KV cache, grouped-query attention read without
expanding the KV heads, attention over the filled part of the cache only, patch and capture
applied as tensor operations between blocks, and, on a GPU, each decode step (forward, patch,
capture into preallocated buffers, coupled sampling) replayed as one CUDA graph.

It reuses the model's own weights and modules (rotary embedding, projections, activation, head),
so it computes what the Hugging Face forward computes; the cache, the attention, the joined
q/k/v and gate/up products, the residual adds inside the o_proj and down_proj products and the
one-kernel RMSNorm, SiLU-gating and RoPE (`kernels`) differ only in float rounding.
`generate(..., engine=Engine(model, ...))` drives it with the same sampler and interventions as
the hook path. On the CPU the same step runs eagerly.
"""

from __future__ import annotations

import os
from itertools import accumulate
from typing import Any

import torch
import torch.nn.functional as F

from . import kernels, prefix
from .model import decoder_layers
from .patch import Interventions
from .prefix import Prefix, groups_of
from .static import Store

BUCKET = 32  # a decode step reads the cache up to the next multiple: one graph per bucket
CHECK_EVERY = 8  # decode steps between looks at whether every row is done (a host sync)
PREFILL_TOKENS = 4096  # rows x chunk length per prefill pass when no chunk is given


def supports(model: Any) -> bool:
    """True for the architectures this engine reproduces exactly (Llama's block layout)."""
    return type(model).__name__ in ("LlamaForCausalLM", "MistralForCausalLM") and not getattr(
        model.config, "sliding_window", None)


_LAST: list[Engine] = []  # the engine last handed out: its cache and graphs serve the next call

# The paths a GPU has run (benchmarks/README.md, "GPU record", keeps this in step: a test compares
# them): on CUDA only these are on by default; PATHREPLAY_UNVERIFIED_GPU=1 opts in to the rest.
# The shared-prompt attention inside CUDA graphs and the pinned asynchronous capture copies were
# built after the last GPU run (2026-11-26, v6 on an H100) and pass on the CPU only so far.
GPU_VERIFIED = {"share": False, "async_copies": False}
OPT_IN = "PATHREPLAY_UNVERIFIED_GPU"


def gpu_default(path: str, device: torch.device | str) -> bool:
    """Whether an engine path (`share`, `async_copies`) is on for a device: always on the CPU,
    where every path is tested; on a GPU where the record says a GPU has run it, or opted in."""
    if torch.device(device).type != "cuda":
        return True
    return GPU_VERIFIED[path] or os.environ.get(OPT_IN) == "1"


def engine_for(model: Any, batch: int, max_len: int) -> Engine:
    """An engine with room for batch rows of max_len tokens: the last one, if it is for this
    model and has the room (a replay job calls this once per prompt or feature, and recapturing
    graphs each time would cost more than a batch), else a new one; shared prompts where
    gpu_default allows them on the model's device."""
    if _LAST and _LAST[0].model is model and _LAST[0].k.shape[1] >= batch and _LAST[0].max_len >= max_len:
        return _LAST[0]
    _LAST.clear()  # free the old cache before the new one is allocated
    share = gpu_default("share", next(model.parameters()).device)
    _LAST.append(Engine(model, batch, -(-max_len // BUCKET) * BUCKET, share=share))
    return _LAST[0]


def _norm(norm: Any, x: torch.Tensor) -> torch.Tensor:
    """LlamaRMSNorm in one kernel rather than its eight: normalised in float32 as there, the
    weight applied before (not after) rounding to the input dtype."""
    return kernels.rms_norm(x, norm.weight, norm.variance_epsilon)


def _add_linear(x: torch.Tensor, a: torch.Tensor, linear: Any) -> None:
    """x += linear(a), in place: the product accumulates onto the residual stream in the same
    GEMM (beta = 1), so the residual add costs no kernel of its own."""
    flat = x.view(-1, x.shape[-1])
    flat.addmm_(a.reshape(-1, a.shape[-1]), linear.weight.t())
    if linear.bias is not None:
        flat += linear.bias


def _fuse(linears: list[Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of several projections of one input as one; their own weights become
    views of it. Idempotent: a second engine on the same model finds them already joined."""
    ws = [m.weight.detach() for m in linears]
    offsets = [0, *accumulate(len(w) for w in ws)]
    n = ws[0].shape[1]
    joined = all(w.is_contiguous() and w.untyped_storage().data_ptr() == ws[0].untyped_storage().data_ptr()
                 and w.storage_offset() == ws[0].storage_offset() + o * n for w, o in zip(ws, offsets))
    if joined:
        fused = ws[0].as_strided((offsets[-1], n), (n, 1))
    else:
        fused = torch.cat(ws)
        for m, o, p in zip(linears, offsets, offsets[1:]):
            m.weight.data = fused[o:p]
    if all(m.bias is None for m in linears):
        return fused, None
    return fused, torch.cat([m.bias.detach() if m.bias is not None else fused.new_zeros(len(m.weight))
                             for m in linears])


class Engine:
    """Static-cache forward passes for up to `batch` rows of up to `max_len` tokens.

    `graphs`: replay decode steps as CUDA graphs (default: when the model is on a GPU).

    Each block's q/k/v projections, and its gate/up projections, run as one matrix product:
    the engine concatenates their weights once and makes the model's own weights views of the
    result, so the model computes as before and no memory is added.

    `share`: run each distinct prompt's tokens but the last once and let its rows attend to them
    (runtime.prefix), where the interventions allow it (`shares`); else every row's prompt is
    run and attended to in its own cache."""

    def __init__(self, model: Any, batch: int, max_len: int, graphs: bool | None = None,
                 share: bool = True) -> None:
        cfg = model.config
        self.model, self.layers = model, decoder_layers(model)
        p = next(model.parameters())
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.group = self.n_heads // self.n_kv  # query heads per KV head
        self.hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.max_len = max_len
        shape = (len(self.layers), batch, self.n_kv, max_len, self.hd)
        self.k = torch.zeros(shape, dtype=p.dtype, device=p.device)
        self.v = torch.zeros(shape, dtype=p.dtype, device=p.device)
        self.keys = torch.zeros(batch, max_len, dtype=torch.bool, device=p.device)
        self.cur = torch.zeros(1, dtype=torch.long, device=p.device)  # first unfilled column
        self.filled = 0  # host copy of cur
        self.share = share
        self.prefix: Prefix | None = None  # the batch's shared prompt cache, when it has one
        self.store = Store()  # what graphed steps read and write, kept across batches
        self.graphs = p.device.type == "cuda" if graphs is None else graphs
        self._graphs: dict[tuple, Any] = {}
        self._graph_version = -1
        self._pool = None
        self.qkv = [_fuse([a.q_proj, a.k_proj, a.v_proj]) for a in (b.self_attn for b in self.layers)]
        self.gate_up = [_fuse([b.mlp.gate_proj, b.mlp.up_proj]) for b in self.layers]
        self.scaling = self.layers[0].self_attn.scaling
        self.silu = all(type(b.mlp.act_fn).__name__ in ("SiLU", "SiLUActivation") for b in self.layers)

    def reset(self, key_mask: torch.Tensor) -> None:
        """Start a batch: key_mask [B, prompt_len] marks real (non-pad) prompt tokens."""
        self.filled = 0
        self.cur.zero_()
        self.keys.zero_()
        self.keys[: key_mask.shape[0], : key_mask.shape[1]] = key_mask.bool()

    def _prompt_mask(self, B: int, s: int) -> torch.Tensor:
        """[B, 1, s, filled + s]: causal, no padding, only the filled columns."""
        end = self.filled + s
        causal = torch.ones(s, end, dtype=torch.bool, device=self.keys.device).tril(self.filled)
        mask = causal[None, None] & self.keys[:B, None, None, :end]
        # a padding query sees at least itself, so no row is all -inf (NaN would reach the cache)
        diag = torch.arange(s, device=self.keys.device)
        mask[..., diag, self.filled + diag] = True
        return mask

    def _attention(self, i: int, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   cols: torch.Tensor, bias: torch.Tensor, L: int, cache: tuple[torch.Tensor, torch.Tensor]
                   ) -> torch.Tensor:
        """Attention of x's s new tokens (keys written into `cache` at columns `cols`) over its
        columns :L and the shared prompt's, with `bias` (0 or -inf, [B * n_kv, g * s, L]) added
        to the own scores; the heads' outputs [B, s, n_heads * hd], before o_proj."""
        B, s, _ = x.shape
        nq, nkv, hd, g = self.n_heads, self.n_kv, self.hd, self.group
        kc, vc = cache[0][i, :B], cache[1][i, :B]
        qkv = F.linear(x, *self.qkv[i]).view(B, s, nq + 2 * nkv, hd)
        # Grouped: q's rows for KV head j are its query heads g*j..g*j+g-1, which read the
        # cache in place; no copy of it.
        q = kernels.rope_write(qkv, cos, sin, cols, kc, vc, nkv)
        keys = kc[:, :, :L].reshape(B * nkv, L, hd)
        att = torch.baddbmm(bias, q, keys.transpose(1, 2), alpha=self.scaling)
        own = vc[:, :, :L].reshape(B * nkv, L, hd)
        pre = self.prefix
        if pre is None:
            w = torch.softmax(att, dim=-1)  # accumulates in float32 whatever att's dtype, rounds once
            o = torch.bmm(w, own)
        else:
            shared = prefix.scores(q, pre.k[i], pre.bias, pre.groups, nkv, self.scaling)
            P = shared.shape[-1]
            w = torch.softmax(torch.cat([shared, att], -1), dim=-1)  # one softmax over both parts
            o = torch.baddbmm(prefix.values(w, pre.v[i], pre.groups, nkv), w[..., P:], own)
        return o.view(B, nkv, g, s, hd).permute(0, 3, 1, 2, 4).reshape(B, s, nq * hd)

    def _mlp(self, i: int, mlp: Any, x: torch.Tensor) -> torch.Tensor:
        """The MLP's activations [B, s, intermediate], before down_proj."""
        gate_up = F.linear(x, *self.gate_up[i])
        if self.silu:
            return kernels.silu_mul(gate_up)
        gate, up = gate_up.chunk(2, dim=-1)
        return mlp.act_fn(gate) * up

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, L: int,
                 iv: Interventions | None, cache: tuple[torch.Tensor, torch.Tensor] | None = None,
                 cur: torch.Tensor | None = None) -> torch.Tensor:
        """Every block on ids [B, s] at positions pos, reading keys mask [B, 1, s, L] of `cache`
        (default: the rows' own) from column `cur` on (default: self.cur, advanced by s); logits
        of the last column. Patches and captures of `iv` apply between blocks."""
        base = self.model.model
        B, s = ids.shape
        cache = cache or (self.k, self.v)
        cur = self.cur if cur is None else cur
        x = base.embed_tokens(ids)
        cos, sin = base.rotary_emb(x, pos)
        cols = cur + torch.arange(s, device=ids.device)
        bias = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill_(~mask, float("-inf"))
        bias = bias[:, :, None].expand(B, self.n_kv, self.group, s, L).reshape(B * self.n_kv, self.group * s, L)
        for i, layer in enumerate(self.layers):
            a = self._attention(i, _norm(layer.input_layernorm, x), cos, sin, cols, bias, L, cache)
            _add_linear(x, a, layer.self_attn.o_proj)
            _add_linear(x, self._mlp(i, layer.mlp, _norm(layer.post_attention_layernorm, x)), layer.mlp.down_proj)
            if iv is not None:
                x = iv.patch(i, x)
                iv.capture(i, x)
        cur += s
        return self.model.lm_head(_norm(base.norm, x[:, -1:]))[:, -1]

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, iv: Interventions | None,
                chunk: int = 0) -> torch.Tensor:
        """The prompt ids [B, n] (padding mask, positions); logits of its last column.

        Shared (`shares`): each distinct prompt's tokens but the last run once, as one row
        without padding, in chunks of `chunk` tokens (0: PREFILL_TOKENS), into the shared cache;
        then every row's last prompt token in one pass, in the `prefill` phase, where `exp2`
        patches and last-position captures act. Unshared: every row's whole prompt, in chunks of
        `chunk` tokens (0: PREFILL_TOKENS // rows), earlier chunks in the `chunk` phase."""
        self.prefix = None
        groups = groups_of(ids, mask) if self.shares(iv) else None
        if groups is None:
            return self._prefill_rows(ids, mask, pos, iv, chunk)
        self._prefill_shared(ids, mask, pos, groups, chunk)
        B = ids.shape[0]
        self.reset(torch.ones(B, 1, dtype=torch.bool, device=ids.device))
        if iv is not None:
            iv.phase = "prefill"
        logits = self._forward(ids[:, -1:], pos[:, -1:], self._prompt_mask(B, 1), 1, iv)
        self.filled = 1
        return logits

    def shares(self, iv: Interventions | None) -> bool:
        """Whether prompts can be shared under these interventions: nothing they do touches a
        prompt position but the last (patches at `exp2` or `generated` positions, captures of
        the last prompt position only)."""
        return self.share and (iv is None or (iv.capture_prompt == "last"
                                              and all(p.positions != "all" for p in iv.patches)))

    def _prefill_shared(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor,
                        groups: prefix.Groups, chunk: int) -> None:
        """Each group's prompt but its last token into the shared cache (self.prefix), with the
        group's own positions; columns past a prompt's length are masked out."""
        lens = [int(mask[a].sum()) - 1 for a, _ in groups]
        P = max(1, -(-max(lens) // BUCKET)) * BUCKET  # bucketed, so graphs serve other prompts
        dev, dt = self.k.device, self.k.dtype
        shape = (len(self.layers), len(groups), self.n_kv, P, self.hd)
        k, v = self.store.zeros("eng.prefix.k", shape, dt, dev), self.store.zeros("eng.prefix.v", shape, dt, dev)
        bias = self.store.zeros("eng.prefix.bias", (len(groups), 1, 1, P), dt, dev)
        for j, ((a, _), n) in enumerate(zip(groups, lens)):
            bias[j, ..., n:] = float("-inf")
            real = mask[a].bool()
            t, p = ids[a, real][None, :n], pos[a, real][None, :n]
            cur = torch.zeros(1, dtype=torch.long, device=dev)
            step = max(1, min(n, chunk or PREFILL_TOKENS))
            for c0 in range(0, n, step):
                s = min(step, n - c0)
                causal = torch.ones(s, c0 + s, dtype=torch.bool, device=dev).tril(c0)[None, None]
                self._forward(t[:, c0: c0 + s], p[:, c0: c0 + s], causal, c0 + s, None,
                              (k[:, j: j + 1], v[:, j: j + 1]), cur)
        self.prefix = Prefix(k, v, bias, groups)

    def _prefill_rows(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, iv: Interventions | None,
                      chunk: int) -> torch.Tensor:
        self.reset(mask)
        B, n = ids.shape
        step = min(n, chunk or max(1, PREFILL_TOKENS // B))
        logits = None
        for c0 in range(0, n, step):
            s = min(step, n - c0)
            if iv is not None:
                iv.phase = "prefill" if c0 + s >= n else "chunk"
            logits = self._forward(ids[:, c0: c0 + s], pos[:, c0: c0 + s], self._prompt_mask(B, s),
                                   self.filled + s, iv)
            self.filled += s
        assert logits is not None
        return logits

    def _decode_step(self, rows: Any, iv: Interventions | None, L: int) -> None:
        """One decode step, host-free: feed rows.tok, then sample the next token into rows."""
        B = rows.tok.shape[0]
        self.keys[:B].index_fill_(1, self.cur, True)  # a generated token is a real key
        logits = self._forward(rows.tok[:, None], rows.pos[:, None], self.keys[:B, None, None, :L], L, iv)
        rows.take(logits)
        if iv is not None:
            iv.advance()

    @torch.no_grad()
    def decode(self, rows: Any, iv: Interventions | None, steps: int) -> None:
        """Up to `steps` decode steps after prefill (generate.Rows holds the sampler's state);
        stops once every row is done, looked at every CHECK_EVERY steps."""
        for s in range(steps):
            if s % CHECK_EVERY == 0 and bool(rows.done.all()):
                break
            L = min(self.max_len, -(-(self.filled + 1) // BUCKET) * BUCKET)
            if self.graphs:
                self._graph(rows, iv, L)
            else:
                self._decode_step(rows, iv, L)
            self.filled += 1

    def _graph(self, rows: Any, iv: Interventions | None, L: int) -> None:
        """Run one decode step as a CUDA graph, capturing it first if this shape is new. Graphs
        record addresses, so they are dropped when the store reallocates anything."""
        if self.store.version != self._graph_version:
            self._graphs.clear()  # their memory pool goes with them: later captures need a new one
            self._pool = None
            self._graph_version = self.store.version
        shared = None if self.prefix is None else (self.prefix.groups, self.prefix.k.shape[3])
        key = (rows.tok.shape[0], L, rows.temperature, rows.pad, rows.forced is not None, shared) + (
            () if iv is None else (tuple(iv.capture_blocks), tuple(
                (p.block, p.mode, p.positions, p.feature.index, p.feature.b, p.feature.threshold,
                 id(p.sae)) for p in iv.patches)))
        if key in self._graphs:
            self._graphs[key][0].replay()
            return
        # This step runs eagerly on a side stream (the warm-up capture asks for); the graph
        # recorded next runs from the following step on. Recording executes nothing.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._decode_step(rows, iv, L)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=self._pool):
            self._decode_step(rows, iv, L)
        self._graphs[key] = (g, iv.patches if iv is not None else None)  # keeps an SAE it reads alive
