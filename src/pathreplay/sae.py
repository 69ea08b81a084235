"""Sparse autoencoders in three on-disk formats, reduced to one exact affine-threshold form.

Every supported SAE encodes a residual vector x as
    pre = W x + b;  f_i = pre_i if pre_i > t_i else 0       (top-k: keep the k largest relu(pre))
and decodes as x_hat = sum_i f_i U_i + c, with W, b, t, U, c derived exactly from the file:

- llamascope (OpenMOSS Llama Scope; `hyperparams.json` + `checkpoints/final.safetensors`).
  We follow the reference OpenMOSS encoder, not SAELens's loader: with s = sqrt(d_model) /
  avg_norm_in and n_i = ||D_i|| (when `sparsity_include_decoder_norm`, else 1),
  W_i = n_i E_i, b_i = n_i b_E,i / s, t = jump_relu_threshold, U_i = D_i / n_i, c = b_D / s.
  SAELens drops the n_i factor, which changes which features fire (decoder norms average ~1.5),
  so thresholds trained with the factor only mean what they say with it.
- saelens (`cfg.json` + `sae_weights.safetensors`): W = W_enc^T, b = b_enc - W_enc^T b_dec when
  `apply_b_dec_to_input`, t = threshold (jumprelu) or 0 (relu), U = W_dec, c = b_dec.
- gemmascope (`params.npz`): W = W_enc^T, b = b_enc, t = threshold, U = W_dec, c = b_dec.

A feature's value therefore depends only on its own (W_i, b_i, t_i), which is what lets a patch
load one feature's slice instead of the whole SAE.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from safetensors import safe_open

from .errors import fail

FORMATS = ("llamascope", "saelens", "gemmascope")
_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_(post|pre)$")


class SAEMeta(NamedTuple):
    """What an SAE's own files say about it."""

    format: str
    path: Path
    d_model: int
    d_sae: int
    hook: str
    block: int  # the decoder block whose output the SAE reads; -1 = the embeddings
    activation: str  # relu | jumprelu | topk
    k: int | None


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

    def __init__(self, meta: SAEMeta, W: torch.Tensor, b: torch.Tensor, t: torch.Tensor,
                 U: torch.Tensor, c: torch.Tensor) -> None:
        super().__init__()
        self.meta = meta
        for name, v in dict(W=W, b=b, t=t, U=U, c=c).items():
            self.register_buffer(name, v.float().contiguous())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
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


# --- reading the files ----------------------------------------------------------------------

def sae_dir(template: str, layer: int) -> Path:
    """The folder of one layer's SAE: a local path, or fetched from the hub when not local."""
    p = Path(template.format(layer=layer))
    if p.exists():
        return p
    parts = template.format(layer=layer).split("/")
    if len(parts) >= 2 and not template.startswith(("/", ".")):
        return _from_hub("/".join(parts[:2]), "/".join(parts[2:]))
    fail(f"saes.path={template!r}", f"no SAE folder for layer {layer} at {p}",
         "point saes.path at the per-layer folders (with {layer}) or list only existing saes.layers")


def _from_hub(repo_id: str, subfolder: str) -> Path:
    # Real users name hub repos; tests and the demo never get here (no network).
    from huggingface_hub import snapshot_download

    prefix = f"{subfolder}/" if subfolder else ""
    root = snapshot_download(repo_id, allow_patterns=[f"{prefix}*.json", f"{prefix}*.safetensors",
                                                      f"{prefix}*.npz", f"{prefix}checkpoints/*"])
    return Path(root) / subfolder


def _parse_hook(hook: str, where: str) -> int:
    m = _HOOK.match(hook or "")
    if not m:
        fail(where, f"hook {hook!r} is not a residual-stream hook (blocks.N.hook_resid_post/pre)",
             "use residual-stream SAEs")
    n = int(m.group(1))
    return n if m.group(2) == "post" else n - 1


def _json(path: Path) -> dict:
    if not path.exists():
        fail(str(path.parent), f"missing {path.name}", "check saes.format and saes.path")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        fail(str(path), f"not valid JSON ({e})", "restore the file from the SAE release")


def read_meta(path: str | Path, fmt: str, layer: int) -> SAEMeta:
    """Read an SAE's metadata only (no weights)."""
    path = Path(path)
    if fmt == "llamascope":
        hp = _json(path / "hyperparams.json")
        where = str(path / "hyperparams.json")
        hook = hp.get("hook_point_in", "")
        if hp.get("hook_point_out", hook) != hook:
            fail(where, f"hook_point_out {hp['hook_point_out']!r} differs from hook_point_in {hook!r}",
                 "use residual-stream (R) SAEs")
        act = hp.get("act_fn", "jumprelu")
        return SAEMeta(fmt, path, int(hp["d_model"]), int(hp["d_sae"]), hook, _parse_hook(hook, where),
                       "jumprelu" if act == "jumprelu" else act, hp.get("top_k") if act == "topk" else None)
    if fmt == "saelens":
        cfg = _json(path / "cfg.json")
        where = str(path / "cfg.json")
        hook = cfg.get("hook_name") or cfg.get("hook_point", "")
        arch = cfg.get("architecture", "standard")
        act = {"standard": "relu", "jumprelu": "jumprelu", "topk": "topk"}.get(arch)
        if act is None:
            fail(where, f"architecture {arch!r} is not supported", "use a standard, jumprelu or topk SAE")
        norm = cfg.get("normalize_activations") or "none"
        if norm != "none":
            fail(where, f"normalize_activations {norm!r} needs a dataset statistic the file lacks",
                 "use an SAE with normalize_activations 'none' or fold the scale into its weights")
        k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
        return SAEMeta(fmt, path, int(cfg["d_in"]), int(cfg["d_sae"]), hook, _parse_hook(hook, where), act, k)
    if fmt == "gemmascope":
        npz = path / "params.npz"
        if not npz.exists():
            fail(str(path), "missing params.npz", "check saes.format and saes.path")
        with np.load(npz) as z:
            d_model, d_sae = z["W_enc"].shape
        # params.npz carries no hook name; Gemma Scope residual SAEs read the block's output.
        return SAEMeta(fmt, path, int(d_model), int(d_sae), f"blocks.{layer}.hook_resid_post", layer,
                       "jumprelu", None)
    fail("saes.format", f"unknown format {fmt!r}", f"use one of {', '.join(FORMATS)}")


def check_hook(meta: SAEMeta, layer: int, template: str) -> None:
    """Refuse an SAE configured for one layer whose own metadata reads another."""
    if meta.block != layer:
        fail(f"saes.path={template!r}",
             f"the SAE configured as layer {layer} ({meta.path}) reads {meta.hook!r}, the output of "
             f"block {meta.block}", "fix saes.path or saes.layers so each layer names its own SAE")


def _llamascope_scales(path: Path, hp: dict) -> tuple[float, bool]:
    where = str(path / "hyperparams.json")
    norm = hp.get("norm_activation", "dataset-wise")
    if norm not in ("dataset-wise", "none", None):
        fail(where, f"norm_activation {norm!r} is not supported", "use dataset-wise Llama Scope SAEs")
    s = 1.0
    if norm == "dataset-wise":
        avg = (hp.get("dataset_average_activation_norm") or {}).get("in")
        if not avg:
            fail(where, "dataset_average_activation_norm.in is missing", "restore hyperparams.json")
        s = math.sqrt(int(hp["d_model"])) / float(avg)
    return s, bool(hp.get("sparsity_include_decoder_norm", True))


def _st_file(path: Path, fmt: str) -> Path:
    f = path / ("checkpoints/final.safetensors" if fmt == "llamascope" else "sae_weights.safetensors")
    if not f.exists():
        fail(str(path), f"missing {f.relative_to(path)}", "check saes.format and saes.path")
    return f


def load_sae(path: str | Path, fmt: str, layer: int, device: str | torch.device = "cpu") -> SAE:
    """Load one layer's whole SAE."""
    meta = read_meta(path, fmt, layer)
    return SAE(meta, *_exact_tensors(meta, None, device))


def load_feature(path: str | Path, fmt: str, layer: int, index: int,
                 device: str | torch.device = "cpu") -> Feature:
    """Load one feature's slice only: its encoder row, bias, threshold and decoder row."""
    meta = read_meta(path, fmt, layer)
    if not 0 <= index < meta.d_sae:
        fail(str(path), f"feature {index} is outside 0..{meta.d_sae - 1}", "fix the feature id")
    W, b, t, U, _ = _exact_tensors(meta, index, device)
    return Feature(index, W[0], float(b[0]), float(t[0]), U[0])


def _exact_tensors(meta: SAEMeta, index: int | None, device: str | torch.device
                   ) -> tuple[torch.Tensor, ...]:
    """(W, b, t, U, c) of the exact form; rows restricted to `index` when given."""
    rows = slice(None) if index is None else slice(index, index + 1)
    if meta.format == "gemmascope":
        with np.load(meta.path / "params.npz") as z:
            g = {k: torch.from_numpy(np.asarray(z[k], dtype=np.float32)) for k in z.files}
        W, b, t = g["W_enc"].T[rows], g["b_enc"][rows], g["threshold"][rows]
        return tuple(v.to(device) for v in (W, b, t, g["W_dec"][rows], g["b_dec"]))
    with safe_open(str(_st_file(meta.path, meta.format)), framework="pt", device="cpu") as f:
        def get(name: str, sl: tuple = (slice(None),)) -> torch.Tensor:
            if name not in f.keys():
                fail(str(meta.path), f"tensor {name!r} missing from the weights",
                     "check saes.format matches the files")
            return f.get_slice(name)[sl].float()

        if meta.format == "llamascope":
            hp = json.loads((meta.path / "hyperparams.json").read_text())
            s, include_norm = _llamascope_scales(meta.path, hp)
            E, bE = get("encoder.weight", (rows,)), get("encoder.bias", (rows,))
            D = get("decoder.weight", (slice(None), rows)).T  # [rows, d_model]
            n = D.norm(dim=1) if include_norm else torch.ones(D.shape[0])
            W, b, U, c = E * n[:, None], n * bE / s, D / n[:, None], get("decoder.bias") / s
            thr = float(hp.get("jump_relu_threshold", 0.0)) if meta.activation == "jumprelu" else 0.0
            t = torch.full((W.shape[0],), thr)
        else:  # saelens
            cfg = json.loads((meta.path / "cfg.json").read_text())
            W = get("W_enc", (slice(None), rows)).T
            b, U, c = get("b_enc", (rows,)), get("W_dec", (rows,)), get("b_dec")
            if cfg.get("apply_b_dec_to_input", False):
                b = b - W @ c
            t = get("threshold", (rows,)) if meta.activation == "jumprelu" else torch.zeros(W.shape[0])
    return tuple(v.to(device) for v in (W, b, t, U, c))


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

