"""Patch one SAE feature at a block's output and capture block outputs, between blocks (the
engine) or through forward hooks.

Patches run in hooks prepended to a block's forward hooks and captures in appended ones, so a
capture at the patched block always sees the patch whatever order things were set up in; nothing
here reads `output_hidden_states`, whose recorder can run before a later-registered patch hook.

Modes (v is a row's target or, for `add` and `random`, an amount; NaN leaves a row alone). With
pre(h) = w.h + b the feature's pre-activation, f(h) its value (pre above the threshold, else 0),
u its decoder row and d = u / (w.u) the decoder row scaled so the encoder reads one unit of d as
one unit of pre-activation (sae.exact.Feature.direction):
- decoder (default): h += (v - f(h)) u, the move the SAE's own decoding makes when the code's
  entry i is set to v and the error term is kept (feature steering as the SAE defines it). An
  active feature reads back v; an inactive one moves by v u and reads back v only if that lifts
  it over its threshold.
- clamp: h += (v - pre(h)) d: the feature reads back exactly v (for v above its threshold; v = 0
  switches an active feature off). From an inactive feature's pre-activation, far below zero,
  this is a far larger move than the SAE's decoding would make.
- reconstruct: the original Exp2 method, h = decode(encode(h) with f set to v); it drops the
  SAE's reconstruction error at every patched position and needs the whole SAE.
- add: h += v d.
- sham (control): h += (f(h) - f(h)) u, the decoder edit to the row's own current value: a patch
  that changes nothing, through every step a real patch takes.
- random (control): h += v r along a fixed random unit direction r, v the real patch's ||dh|| at
  that step (per-step values).

v is per row ([batch]) or per patched step ([batch, 1 + steps]: column 0 the prompt's last
position, column 1 + s decode step s). Positions: `all` (every prompt position and every
generated token), `exp2` (the last prompt position and every generated token: what Exp2's hook
did with the KV cache on), `generated`. Each patched position records, before and after: the
feature's value, its pre-activation before, ||dh||, ||h|| and the signed step s along the
patch's vector (dh = s vector(p); NaN for `reconstruct`, whose dh is no multiple of one vector)
(`STATS`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal, NamedTuple, get_args

import numpy as np
import torch
from tqdm import tqdm

from ..sae.exact import SAE, Feature
from .model import decoder_layers, encode_prompts, positions
from .static import Store

Mode = Literal["decoder", "clamp", "reconstruct", "add", "sham", "random"]
Positions = Literal["all", "exp2", "generated"]
MODES, POSITIONS = get_args(Mode), get_args(Positions)
STATS = ("before", "after", "pre", "dh", "h", "step")  # what each patched position records, in this order


class Patch(NamedTuple):
    """Set (decoder, clamp, reconstruct), shift (add, random) or touch (sham) one feature at the
    output of one block."""

    block: int
    feature: Feature
    values: torch.Tensor  # [batch] or [batch, 1 + steps]; NaN = not patched there
    mode: Mode = "decoder"
    positions: Positions = "exp2"
    sae: SAE | None = None  # needed by `reconstruct` only
    direction: torch.Tensor | None = None  # `random` only: the unit direction


def vector(p: Patch) -> torch.Tensor:
    """The direction a patch moves h along (per unit of its step)."""
    if p.mode == "random":
        assert p.direction is not None, "a random patch needs its direction"
        return p.direction
    return p.feature.u if p.mode in ("decoder", "sham") else p.feature.direction


def _apply(p: Patch, d: torch.Tensor, h: torch.Tensor, v: torch.Tensor, sel: torch.Tensor | None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch h[b, t] to (or by) v[b, 1] where sel[b, t] (None: everywhere) along d; returns the
    new h and STATS [6, b, t]. No host sync, so it can run inside a CUDA graph."""
    x = h.float()
    pre = p.feature.pre(x)
    before = torch.where(pre > p.feature.threshold, pre, torch.zeros_like(pre))
    v = v.to(h.device, torch.float32).expand_as(before)
    skip = torch.isnan(v) if sel is None else torch.isnan(v) | ~sel
    vv = torch.nan_to_num(v)
    if p.mode == "reconstruct":
        assert p.sae is not None, "reconstruct needs the whole SAE"
        f = p.sae.encode(x)
        f[..., p.feature.index] = vv
        new = p.sae.decode(f)
        step = torch.full_like(pre, float("nan"))
    else:
        if p.mode == "clamp":
            # v = 0 on an inactive feature is already satisfied: leave the row untouched.
            step = torch.where((v <= 0) & (before == 0), torch.zeros_like(pre), vv - pre)
        elif p.mode == "decoder":
            step = vv - before
        elif p.mode == "sham":
            step = before - before
        else:  # add, random
            step = vv
        new = x + step[..., None] * d
    out = torch.where(skip[..., None], x, new).to(h.dtype)
    moved = out.float()
    stats = torch.stack([before, p.feature.value(moved), pre, (moved - x).norm(dim=-1), x.norm(dim=-1),
                         torch.where(skip, torch.zeros_like(step), step)])
    return out, stats


class Interventions:
    """Owns the hooks of one forward pass sequence: patches, captures and the patch readback.

    Prompt passes (phases prefill and chunk) keep what they capture and read back in lists.
    Decode steps write into buffers preallocated by `bind`: column c of `decoded` and `trace` is
    decode step c, addressed by the device counter `col`, so a step needs no host work and can be
    replayed as a CUDA graph.
    """

    def __init__(self, model: torch.nn.Module, patches: Sequence[Patch] = (),
                 capture: Sequence[int] = (), capture_prompt: Literal["last", "all"] = "last") -> None:
        self.layers = decoder_layers(model)
        self.d_model = int(model.config.hidden_size)
        self.patches = list(patches)
        self.capture_blocks = sorted(set(capture))
        self.capture_prompt = capture_prompt  # "last" | "all"
        self.phase = "prefill"  # | "chunk" (a prompt chunk before the last) | "decode"
        self.captured: dict[int, list[torch.Tensor]] = {b: [] for b in self.capture_blocks}
        self.readback: list[dict[str, Any]] = []  # prompt passes: phase, stats [5, B, s], selected
        self.col: torch.Tensor | None = None
        self.decoded: dict[int, torch.Tensor] = {}  # block -> [batch, steps, d_model]
        self.trace: list[torch.Tensor] = []  # per patch: STATS [6, batch, steps]
        self.steps = 0  # decode steps whose columns hold data (set by whoever runs them)
        self._dirs: dict[int, torch.Tensor] = {}
        for p in self.patches:
            if p.mode not in MODES:
                raise ValueError(f"unknown patch mode {p.mode!r}; use one of {MODES}")
            if p.positions not in POSITIONS:
                raise ValueError(f"unknown patch positions {p.positions!r}; use one of {POSITIONS}")

    def bind(self, batch: int, steps: int, device: torch.device, dtype: torch.dtype,
             store: Store | None = None) -> None:
        """Preallocate room for `steps` decode steps of `batch` rows, and move the patches'
        targets and feature rows onto the device. With a `store` they are the store's tensors,
        the same addresses from one batch to the next."""
        store = store or Store()
        self.col = store.zeros("iv.col", (1,), torch.long, device)
        self.decoded = {b: store.zeros(f"iv.decoded.{b}", (batch, steps, self.d_model), dtype, device)
                        for b in self.capture_blocks}
        self.trace = [store.zeros(f"iv.trace.{j}", (len(STATS), batch, steps), torch.float32, device)
                      for j in range(len(self.patches))]
        self.steps = 0
        for j, p in enumerate(self.patches):
            f = p.feature
            self._dirs[j] = store.put(f"iv.dir.{j}", vector(p).to(device, torch.float32))
            f = f._replace(w=store.put(f"iv.w.{j}", f.w.to(device, torch.float32)))  # a step reads w alone
            # one value per row is widened to one per step, so the slot keeps its shape (and the
            # engine its CUDA graphs) whichever patch comes next
            v = p.values.to(device, torch.float32)
            v = v[:, None].expand(-1, steps + 1) if v.dim() == 1 else v
            self.patches[j] = p._replace(feature=f, values=store.put(f"iv.values.{j}", v))

    def _direction(self, j: int, device: torch.device) -> torch.Tensor:
        if j not in self._dirs:
            self._dirs[j] = vector(self.patches[j]).to(device, torch.float32)
        return self._dirs[j]

    def _values(self, p: Patch) -> torch.Tensor:
        """The patch's v for this pass, [batch, 1]: per row, or this step's column."""
        v = p.values
        if v.dim() == 1:
            return v[:, None]
        if self.phase == "decode":
            assert self.col is not None, "bind() the interventions before decode steps"
            return v.index_select(1, self.col + 1)
        return v[:, :1]

    def _selected(self, p: Patch, h: torch.Tensor) -> torch.Tensor:
        sel = torch.zeros(h.shape[:2], dtype=torch.bool, device=h.device)
        if p.positions == "all":
            sel[:] = True
        elif p.positions == "exp2" and self.phase == "prefill":
            sel[:, -1] = True  # prompts are left-padded: the last column is every row's last token
        return sel

    def patch(self, block: int, h: torch.Tensor) -> torch.Tensor:
        """Apply this block's patches to its output h [batch, seq, d_model]; record the readback."""
        for j, p in enumerate(self.patches):
            if p.block != block:
                continue
            d = self._direction(j, h.device)
            if self.phase == "decode":  # every position mode patches generated tokens
                assert self.col is not None, "bind() the interventions before decode steps"
                h, stats = _apply(p, d, h, self._values(p), None)
                self.trace[j].index_copy_(2, self.col, stats)
                continue
            sel = self._selected(p, h)
            if sel.any():
                h, stats = _apply(p, d, h, self._values(p), sel)
                self.readback.append({"phase": self.phase, "patch": j, "stats": stats.detach(), "selected": sel})
        return h

    def capture(self, block: int, h: torch.Tensor) -> None:
        """Keep block's output (after any patch) at the positions asked for."""
        if block not in self.captured:
            return
        if self.phase == "decode":
            buf = self.decoded[block]
            buf.index_copy_(1, self.col, h[:, -1:].to(buf.dtype))
        elif self.phase != "chunk" or self.capture_prompt == "all":
            keep = h if self.capture_prompt == "all" else h[:, -1:]
            self.captured[block].append(keep.detach().clone())

    def advance(self) -> None:
        """Move the decode buffers to the next column (a device op: part of a graphed step)."""
        if self.col is not None:
            self.col += 1

    def _patch_hook(self, block: int):
        def hook(module: torch.nn.Module, args: tuple, output: object) -> object:
            h = self.patch(block, output[0] if isinstance(output, tuple) else output)
            return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h
        return hook

    def _capture_hook(self, block: int):
        def hook(module: torch.nn.Module, args: tuple, output: object) -> None:
            self.capture(block, output[0] if isinstance(output, tuple) else output)
        return hook

    @contextmanager
    def active(self) -> Iterator["Interventions"]:
        """Install the hooks for the duration of the block.

        Patch hooks are prepended and capture hooks appended, so on any block every patch runs
        before every capture (ours, another Interventions' or a library's recorder), whatever
        order they were installed in.
        """
        handles = [self.layers[b].register_forward_hook(self._patch_hook(b), prepend=True)
                   for b in sorted({p.block for p in self.patches})]
        handles += [self.layers[b].register_forward_hook(self._capture_hook(b))
                    for b in self.capture_blocks]
        try:
            yield self
        finally:
            for hnd in handles:
                hnd.remove()

    def states(self, block: int, host: bool = True) -> torch.Tensor:
        """Captured outputs of `block` on the CPU (host) or their device: [batch, positions,
        d_model] (prompt part first, then one column per decode step)."""
        parts = self.captured[block] + ([self.decoded[block][:, : self.steps]] if self.steps else [])
        out = torch.cat(parts, dim=1)
        return out.cpu() if host else out

    def step_stats(self, j: int = 0) -> torch.Tensor:
        """Patch j's STATS per patched step on the CPU, [6, batch, 1 + steps]: column 0 the
        prompt's last position (NaN where it was not patched), then one column per decode step."""
        last = torch.full((len(STATS), self.trace[j].shape[1], 1), float("nan"))
        for rec in self.readback:
            if rec["patch"] == j and rec["phase"] == "prefill":
                rows = rec["selected"][:, -1].cpu()
                last[:, rows, 0] = rec["stats"][:, rows, -1].float().cpu()
        return torch.cat([last, self.trace[j][:, :, : self.steps].cpu()], dim=2)


@torch.no_grad()
def last_position_values(model: torch.nn.Module, tok: Any, texts: Sequence[str],
                         features: Mapping[str, tuple[int, Feature]], batch: int = 16) -> dict[str, np.ndarray]:
    """Each feature's value (name -> (block, feature)) at the last token of each text, in
    left-padded batches with positions counted from each text's first token, as in generation."""
    dev = next(model.parameters()).device
    blocks = sorted({b for b, _ in features.values()})
    out = {name: np.zeros(len(texts)) for name in features}
    for i in tqdm(range(0, len(texts), batch), desc="prompt activations", unit="batch", mininterval=5, disable=None):
        ids, mask = encode_prompts(tok, texts[i: i + batch], dev)
        iv = Interventions(model, capture=blocks)
        with iv.active():
            model(input_ids=ids, attention_mask=mask, position_ids=positions(mask))
        for name, (b, f) in features.items():
            out[name][i: i + len(ids)] = f.value(iv.states(b)[:, -1].to(f.w.device)).cpu().numpy()
    return out
