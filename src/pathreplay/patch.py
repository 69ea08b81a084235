"""Patch one SAE feature at a block's output and capture block outputs, through forward hooks.

Patches run in hooks prepended to a block's forward hooks and captures in appended ones, so a
capture at the patched block always sees the patch whatever order things were set up in; nothing
here reads `output_hidden_states`, whose recorder can run before a later-registered patch hook.

Modes (v is a per-row target or, for `add`, an amount; NaN rows are left alone):
- clamp (default): h += (v - pre(h)) * d, where d is the feature's decoder row scaled so that the
  encoder reads one unit of d as one unit of the feature (sae.Feature.direction). The SAE's error
  term is kept and the feature reads back exactly v (for v above its threshold; v = 0 switches an
  active feature off by moving its pre-activation to 0). Using pre(h) rather than f(h) matters for
  an inactive feature, whose pre-activation can be far below zero.
- reconstruct: the original Exp2 method, h = decode(encode(h) with f set to v); it drops the
  SAE's reconstruction error at every patched position and needs the whole SAE.
- add: h += v * d.

Positions: `all` (every prompt position and every generated token), `exp2` (the last prompt
position and every generated token: what Exp2's hook did with the KV cache on), `generated`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch

from .sae import SAE, Feature

MODES = ("clamp", "reconstruct", "add")
POSITIONS = ("all", "exp2", "generated")


class Patch(NamedTuple):
    """Set (clamp, reconstruct) or shift (add) one feature at the output of one block."""

    block: int
    feature: Feature
    values: torch.Tensor  # [batch]; NaN = row not patched
    mode: str = "clamp"
    positions: str = "exp2"
    sae: SAE | None = None  # needed by `reconstruct` only


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's list of decoder blocks, whatever the architecture calls it."""
    for path in ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers"):
        obj: object = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise TypeError(f"cannot find the decoder blocks of {type(model).__name__}")


def _apply(p: Patch, h: torch.Tensor, sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch h[b, t] where sel[b, t]; returns (new h, feature value read before the patch)."""
    x = h.float()
    before = p.feature.value(x)
    v = p.values.to(h.device, torch.float32)[:, None].expand_as(before)
    sel = sel & ~torch.isnan(v)
    if p.mode == "reconstruct":
        assert p.sae is not None, "reconstruct needs the whole SAE"
        f = p.sae.encode(x)
        f[..., p.feature.index] = torch.nan_to_num(v)
        new = p.sae.decode(f)
    else:
        d = p.feature.direction.to(h.device, torch.float32)
        if p.mode == "clamp":
            pre = p.feature.pre(x)
            # v = 0 on an inactive feature is already satisfied: leave the row untouched.
            delta = torch.where((v <= 0) & (before == 0), torch.zeros_like(pre), torch.nan_to_num(v) - pre)
        else:
            delta = torch.nan_to_num(v)
        new = x + delta[..., None] * d
    out = torch.where(sel[..., None], new, x).to(h.dtype)
    return out, before


class Interventions:
    """Owns the hooks of one forward pass sequence: patches, captures and the patch readback."""

    def __init__(self, model: torch.nn.Module, patches: Sequence[Patch] = (),
                 capture: Sequence[int] = (), capture_prompt: str = "last") -> None:
        self.layers = decoder_layers(model)
        self.patches = list(patches)
        self.capture_blocks = sorted(set(capture))
        self.capture_prompt = capture_prompt  # "last" | "all"
        self.phase = "prefill"  # | "chunk" (a prompt chunk before the last) | "decode"
        self.captured: dict[int, list[torch.Tensor]] = {b: [] for b in self.capture_blocks}
        self.readback: list[dict[str, torch.Tensor]] = []  # per patch call: before/after/selected
        for p in self.patches:
            if p.mode not in MODES:
                raise ValueError(f"unknown patch mode {p.mode!r}; use one of {MODES}")
            if p.positions not in POSITIONS:
                raise ValueError(f"unknown patch positions {p.positions!r}; use one of {POSITIONS}")

    def _selected(self, p: Patch, h: torch.Tensor) -> torch.Tensor:
        sel = torch.zeros(h.shape[:2], dtype=torch.bool, device=h.device)
        if self.phase == "decode" or p.positions == "all":
            sel[:] = True
        elif p.positions == "exp2" and self.phase == "prefill":
            sel[:, -1] = True  # prompts are left-padded: the last column is every row's last token
        return sel

    def patch(self, block: int, h: torch.Tensor) -> torch.Tensor:
        """Apply this block's patches to its output h [batch, seq, d_model]; record the readback."""
        for p in self.patches:
            if p.block != block:
                continue
            sel = self._selected(p, h)
            if sel.any():
                h, before = _apply(p, h, sel)
                self.readback.append({"phase": self.phase, "before": before.detach(),
                                      "after": p.feature.value(h.float()).detach(),
                                      "selected": sel, "target": p.values.float()})
        return h

    def capture(self, block: int, h: torch.Tensor) -> None:
        """Keep block's output (after any patch) at the positions asked for."""
        if block in self.captured and (self.phase != "chunk" or self.capture_prompt == "all"):
            keep = h if (self.phase == "decode" or self.capture_prompt == "all") else h[:, -1:]
            self.captured[block].append(keep.detach().clone())

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

    def states(self, block: int) -> torch.Tensor:
        """Captured outputs of `block` on the CPU: [batch, positions, d_model] (prompt part first)."""
        return torch.cat(self.captured[block], dim=1).cpu()
