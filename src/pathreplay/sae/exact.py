"""Sparse autoencoders in one exact affine-threshold form (the formats' files: sae.files).

Every supported SAE encodes a residual vector x as
    pre = W x + b;  f_i = pre_i if pre_i > t_i else 0       (top-k: keep the k largest relu(pre))
and decodes as x_hat = sum_i f_i U_i + c, with W, b, t, U, c derived exactly from its files.
A feature's value therefore depends only on its own (W_i, b_i, t_i), which is what lets a patch
load one feature's slice instead of the whole SAE.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..errors import fail
from ..features import feature_name
from .fast import FastWeights, exact_encode, prepare, weights_key
from .files import SAEMeta, exact_tensors, read_meta, sae_dir


class Feature(NamedTuple):
    """One feature's encoder row and decoder row in the exact form above."""

    index: int
    w: torch.Tensor  # [d_model]
    b: float
    threshold: float
    u: torch.Tensor  # [d_model]

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activation of this feature for x[..., d_model]."""
        return x.float() @ self.w.to(x.device) + self.b

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """The feature's activation (exact for relu and jumprelu SAEs)."""
        p = self.pre(x)
        return torch.where(p > self.threshold, p, torch.zeros_like(p))

    @property
    def gain(self) -> float:
        """How much one unit of the decoder row moves the feature's pre-activation (about 1 for a
        trained SAE)."""
        return float(self.u.float() @ self.w.float())

    @property
    def direction(self) -> torch.Tensor:
        """The decoder row scaled so the encoder reads one unit of it as one unit of the feature."""
        return self.u / self.gain


class SAE(torch.nn.Module):
    """A whole SAE layer in the exact affine-threshold form."""

    W: torch.Tensor  # buffers, registered in __init__
    b: torch.Tensor
    t: torch.Tensor
    U: torch.Tensor
    c: torch.Tensor

    def __init__(self, meta: SAEMeta, W: torch.Tensor, b: torch.Tensor, t: torch.Tensor,
                 U: torch.Tensor, c: torch.Tensor) -> None:
        super().__init__()
        self.meta = meta
        for name, v in dict(W=W, b=b, t=t, U=U, c=c).items():
            self.register_buffer(name, v.float().contiguous())
        self._fast: FastWeights | None = None  # bf16 W and per-feature margins, built on first use

    def fast_weights(self) -> FastWeights:
        """The exact fast path's per-feature tensors, rebuilt when W, b or t moves or changes."""
        if self._fast is None or self._fast.key != weights_key(self.W, self.b, self.t):
            self._fast = prepare(self.W, self.b, self.t)
        return self._fast

    def encode(self, x: torch.Tensor, exact_fast: bool = False) -> torch.Tensor:
        """f[..., d_sae] float32. exact_fast screens with a bf16 GEMM and recomputes in float32
        every entry that may be active (fast_encode): the same active set and values as the
        float32 path. Off by default: on cuBLAS the recompute's shape follows the other rows of
        its chunk, and the sham control needs equal states to give equal codes to the bit, which
        tests/test_fast_encode.py checks on a GPU (benchmarks/gpu_check.sh) before it is turned
        on. Top-k SAEs always take the float32 path."""
        if exact_fast and self.meta.activation != "topk":
            flat = x.reshape(-1, x.shape[-1])
            f, _ = exact_encode(flat, self.W, self.b, self.t, self.fast_weights())
            return f.view(*x.shape[:-1], f.shape[-1])
        pre = x.to(self.W.dtype) @ self.W.T + self.b
        if self.meta.activation == "topk":
            assert self.meta.k is not None
            acts = torch.relu(pre)
            top = acts.topk(self.meta.k, dim=-1)
            return torch.zeros_like(acts).scatter_(-1, top.indices, top.values)
        return torch.where(pre > self.t, pre, torch.zeros_like(pre))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f.to(self.U.dtype) @ self.U + self.c

    def feature(self, i: int) -> Feature:
        return Feature(i, self.W[i], float(self.b[i]), float(self.t[i]), self.U[i])


def check_hook(meta: SAEMeta, layer: int, template: str) -> None:
    """Refuse an SAE configured for one layer whose own metadata reads another."""
    if meta.block != layer:
        fail(f"saes.path={template!r}",
             f"the SAE configured as layer {layer} ({meta.path}) reads {meta.hook!r}, the output of "
             f"block {meta.block}", "fix saes.path or saes.layers so each layer names its own SAE")


def load_sae(path: str | Path, fmt: str, layer: int, device: str | torch.device = "cpu") -> SAE:
    """Load one layer's whole SAE."""
    meta = read_meta(path, fmt, layer)
    return SAE(meta, *exact_tensors(meta, None, device))


def load_feature(path: str | Path, fmt: str, layer: int, index: int,
                 device: str | torch.device = "cpu") -> Feature:
    """Load one feature's slice only: its encoder row, bias, threshold and decoder row."""
    meta = read_meta(path, fmt, layer)
    if not 0 <= index < meta.d_sae:
        fail(str(path), f"feature {index} is outside 0..{meta.d_sae - 1}", "fix the feature id")
    W, b, t, U, _ = exact_tensors(meta, index, device)
    return Feature(index, W[0], float(b[0]), float(t[0]), U[0])


class SAESource(NamedTuple):
    """Where a suite's SAEs are: a folder template with `{layer}` (local or a hub path) and the
    format of its files (config section `saes`)."""

    path: str
    format: str

    def folder(self, layer: int) -> Path:
        return sae_dir(self.path, layer)

    def meta(self, layer: int) -> SAEMeta:
        """The layer's metadata, checked against the block it is configured for."""
        meta = read_meta(self.folder(layer), self.format, layer)
        check_hook(meta, layer, self.path)
        return meta

    def load(self, layer: int, device: str | torch.device = "cpu") -> SAE:
        return load_sae(self.folder(layer), self.format, layer, device)

    def feature(self, layer: int, index: int, device: str | torch.device = "cpu") -> Feature:
        return load_feature(self.folder(layer), self.format, layer, index, device)

    def slices(self, table: Any, device: str | torch.device = "cpu") -> dict[str, tuple[int, Feature]]:
        """name -> (block, feature slice) for every row of a table with layer and feature_id."""
        out = {}
        for row in table.itertuples():
            layer = int(row.layer)
            name = feature_name(layer, row.feature_id)
            feat = self.feature(layer, int(row.feature_id), device)
            if feat.gain < 0.05:
                # Moving along the decoder row barely moves (or lowers) what the encoder reads: a clamp
                # along it would need an enormous step. This is a broken or mismatched SAE.
                fail(f"saes.path={self.path!r}", f"feature {name}'s encoder reads its own decoder row at "
                     f"gain {feat.gain:.3g}", "check saes.format and the SAE files")
            out[name] = (layer, feat)
        return out
