"""SAE files as their releases write them, one reader per format, each reduced to the exact
affine-threshold form of sae.SAE:

    pre = W x + b;  f_i = pre_i if pre_i > t_i else 0  (t_i >= 0)   (top-k: the k largest relu(pre))
    x_hat = sum_i f_i U_i + c

- llamascope (OpenMOSS; `hyperparams.json` + `checkpoints/final.safetensors`). In inference form
  OpenMOSS divides the encoder bias by s_in = sqrt(d_model) / avg_norm_in, the decoder bias by
  s_out = sqrt(d_model) / avg_norm_out and scales the decoder by s_in / s_out (D' = D s_in /
  s_out); with n_i = ||D'_i|| (`sparsity_include_decoder_norm`, else 1): W_i = n_i E_i,
  b_i = n_i (b_E,i / s_in - E_i c) where `apply_decoder_bias_to_pre_encoder` (else without
  E_i c), t = jump_relu_threshold, U_i = D'_i / n_i, c = b_D / s_out (0 without
  `use_decoder_bias`). SAELens's loader drops n_i, which changes which features fire.
- saelens (`cfg.json` + `sae_weights.safetensors`, the layout of sae-lens >= 6 with `metadata`,
  and the older flat one): W = W_enc^T, b = b_enc - W_enc^T b_dec when `apply_b_dec_to_input`,
  U = W_dec, c = b_dec; jumprelu f = relu(pre) [pre > threshold], so t = max(threshold, 0);
  topk with `rescale_acts_by_decoder_norm` selects on pre n_i (n_i = ||W_dec_i||): W, b scaled
  by n_i and U = W_dec_i / n_i.
- gemmascope (`params.npz`): W = W_enc^T, b = b_enc, t = max(threshold, 0), U = W_dec, c = b_dec.

A setting these forms cannot reproduce is refused with one line that names it.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors import safe_open

from ..errors import UserError, fail, first_line

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


class Exact(NamedTuple):
    """The exact form's tensors (rows restricted to one feature when asked)."""

    W: torch.Tensor  # [rows, d_model]
    b: torch.Tensor  # [rows]
    t: torch.Tensor  # [rows], >= 0
    U: torch.Tensor  # [rows, d_model]
    c: torch.Tensor  # [d_model]


def sae_dir(template: str, layer: int) -> Path:
    """The folder of one layer's SAE: a local path, or fetched from the hub when not local."""
    try:
        name = template.format(layer=layer)
    except (KeyError, IndexError, ValueError) as e:
        fail(f"saes.path={template!r}", f"holds a placeholder other than {{layer}} ({e})", "use {layer} alone")
    p = Path(name)
    if p.exists():
        return p
    parts = name.split("/")
    local = template.startswith(("/", ".")) or Path(parts[0]).is_dir()
    if len(parts) >= 2 and not local:
        try:
            return _from_hub("/".join(parts[:2]), "/".join(parts[2:]))
        except Exception as e:  # noqa: BLE001 - the download's errors: huggingface_hub's, httpx's, the OS's
            from huggingface_hub.constants import HF_HUB_OFFLINE

            fail(f"saes.path={template!r}", f"{name!r} is neither a folder here nor a Hugging Face hub path that "
                 f"can be read{' offline' if HF_HUB_OFFLINE else ''} ({type(e).__name__}: {first_line(e)})",
                 "give the local folder's path (relative paths are read from the working directory, else the "
                 "repository), or a hub repo/subfolder downloaded beforehand (hf download) or reachable online")
    fail(f"saes.path={template!r}", f"no SAE folder for layer {layer} at {p}",
         "point saes.path at the per-layer folders (with {layer}) or list only existing saes.layers")


@cache  # one download check per folder and process, however many features a job reads from it
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
    if path.is_dir():
        fail(str(path), "is a folder, not a file", "restore the file from the SAE release")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        fail(str(path), f"not valid JSON ({e})", "restore the file from the SAE release")
    except OSError as e:
        fail(str(path), f"cannot be read ({first_line(e)})", "make the file readable, or restore it from the release")
    if not isinstance(data, dict):
        fail(str(path), "is not a JSON object", "restore the file from the SAE release")
    return data


def _need(cfg: dict, key: str, where: str) -> Any:
    if key not in cfg:
        fail(where, f"has no {key!r}", "restore the file from the SAE release")
    return cfg[key]


def _need_int(cfg: dict, key: str, where: str) -> int:
    value = _need(cfg, key, where)
    try:
        return int(value)
    except (TypeError, ValueError):
        fail(where, f"{key} {value!r} is not an integer", "restore the file from the SAE release")


def _refuse(where: str, key: str, value: Any, fix: str) -> None:
    fail(where, f"{key} {value!r} is not reproduced by pathreplay", fix)


# --- llamascope -------------------------------------------------------------------------------

def _llamascope_meta(path: Path, layer: int) -> SAEMeta:
    where = str(path / "hyperparams.json")
    hp = _json(path / "hyperparams.json")
    hook = hp.get("hook_point_in", "")
    if hp.get("hook_point_out", hook) != hook:
        fail(where, f"hook_point_out {hp['hook_point_out']!r} differs from hook_point_in {hook!r}",
             "use residual-stream (R) SAEs")
    act = hp.get("act_fn", "jumprelu")
    if act not in ("jumprelu", "relu", "topk"):
        _refuse(where, "act_fn", act, "use a jumprelu, relu or topk Llama Scope SAE")
    if hp.get("norm_activation", "dataset-wise") not in ("dataset-wise", "none", "inference", None):
        _refuse(where, "norm_activation", hp["norm_activation"], "use dataset-wise Llama Scope SAEs")
    k = _need_int(hp, "top_k", where) if act == "topk" else None
    return SAEMeta("llamascope", path, _need_int(hp, "d_model", where), _need_int(hp, "d_sae", where), hook,
                   _parse_hook(hook, where), act, k)


def _llamascope_scales(hp: dict, where: str) -> tuple[float, float]:
    """(s_in, s_out): sqrt(d_model) / the dataset's average activation norms (1 without them)."""
    if hp.get("norm_activation", "dataset-wise") != "dataset-wise":
        return 1.0, 1.0
    norms = hp.get("dataset_average_activation_norm") or {}
    for side in ("in", "out"):
        if not norms.get(side):
            fail(where, f"dataset_average_activation_norm.{side} is missing", "restore hyperparams.json")
    d = math.sqrt(int(hp["d_model"]))
    return d / float(norms["in"]), d / float(norms["out"])


def _llamascope_tensors(meta: SAEMeta, rows: slice, get: Any) -> Exact:
    where = str(meta.path / "hyperparams.json")
    hp = _json(meta.path / "hyperparams.json")
    s_in, s_out = _llamascope_scales(hp, where)
    E, bE = get("encoder.weight", (rows,)), get("encoder.bias", (rows,))
    D = get("decoder.weight", (slice(None), rows)).T * (s_in / s_out)  # D' [rows, d_model]
    c = get("decoder.bias") / s_out if hp.get("use_decoder_bias", True) else torch.zeros(D.shape[1])
    n = D.norm(dim=1) if hp.get("sparsity_include_decoder_norm", True) else torch.ones(D.shape[0])
    b = bE / s_in - (E @ c if hp.get("apply_decoder_bias_to_pre_encoder", False) else 0.0)
    thr = float(hp.get("jump_relu_threshold", 0.0)) if meta.activation == "jumprelu" else 0.0
    return Exact(E * n[:, None], n * b, torch.full((E.shape[0],), max(thr, 0.0)), D / n[:, None], c)


# --- saelens ----------------------------------------------------------------------------------

_SAELENS_ARCH = {"standard": "relu", "jumprelu": "jumprelu", "topk": "topk"}


def _saelens_meta(path: Path, layer: int) -> SAEMeta:
    where = str(path / "cfg.json")
    cfg = _json(path / "cfg.json")
    meta = cfg.get("metadata") or {}
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point") or ""
    arch = cfg.get("architecture", "standard")
    if arch == "standard" and cfg.get("activation_fn_str") == "topk":  # the older flat layout
        arch = "topk"
    if arch not in _SAELENS_ARCH:
        _refuse(where, "architecture", arch, "use a standard, jumprelu or topk SAE (sae-lens saves training SAEs "
                "for inference as one of these)")
    for key, ok in (("normalize_activations", (None, "none")), ("reshape_activations", (None, "none")),
                    ("finetuning_scaling_factor", (None, False)), ("hook_head_index", (None,))):
        if cfg.get(key) not in ok:
            _refuse(where, key, cfg[key], f"use an SAE with {key} {ok[-1]!r} (or fold it into the weights)")
    if arch == "jumprelu" and (cfg.get("activation_fn_str") or "relu") != "relu":
        _refuse(where, "activation_fn_str", cfg["activation_fn_str"], "use a relu-based jumprelu SAE")
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    if arch == "topk" and not k:
        fail(where, "a topk SAE without k", "restore cfg.json")
    return SAEMeta("saelens", path, _need_int(cfg, "d_in", where), _need_int(cfg, "d_sae", where), hook,
                   _parse_hook(hook, where), _SAELENS_ARCH[arch], int(k) if arch == "topk" else None)


def _saelens_tensors(meta: SAEMeta, rows: slice, get: Any) -> Exact:
    cfg = _json(meta.path / "cfg.json")
    W = get("W_enc", (slice(None), rows)).T
    b, U, c = get("b_enc", (rows,)), get("W_dec", (rows,)), get("b_dec")
    if cfg.get("apply_b_dec_to_input", True):
        b = b - W @ c
    if meta.activation == "topk" and cfg.get("rescale_acts_by_decoder_norm", False):
        n = U.norm(dim=1)
        W, b, U = W * n[:, None], b * n, U / n[:, None]
    t = get("threshold", (rows,)).clamp(min=0) if meta.activation == "jumprelu" else torch.zeros(W.shape[0])
    return Exact(W, b, t, U, c)


# --- gemmascope -------------------------------------------------------------------------------

GEMMASCOPE_TENSORS = ("W_enc", "b_enc", "threshold", "W_dec", "b_dec")


def _gemmascope_meta(path: Path, layer: int) -> SAEMeta:
    npz = path / "params.npz"
    if not npz.exists():
        fail(str(path), "missing params.npz", "check saes.format and saes.path")
    try:
        with np.load(npz) as z:
            missing = sorted(set(GEMMASCOPE_TENSORS) - set(z.files))
            if missing:
                fail(str(npz), f"has no {', '.join(missing)}", "check saes.format matches the files")
            d_model, d_sae = z["W_enc"].shape
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - numpy's and zipfile's errors for a short or corrupt file
        fail(str(npz), f"cannot be read ({first_line(e)})", "restore the file from the SAE release")
    # params.npz carries no hook name; Gemma Scope residual SAEs read the block's output.
    return SAEMeta("gemmascope", path, int(d_model), int(d_sae), f"blocks.{layer}.hook_resid_post", layer,
                   "jumprelu", None)


def _gemmascope_tensors(meta: SAEMeta, rows: slice) -> Exact:
    with np.load(meta.path / "params.npz") as z:
        g = {k: torch.from_numpy(np.asarray(z[k], dtype=np.float32)) for k in z.files}
    return Exact(g["W_enc"].T[rows], g["b_enc"][rows], g["threshold"][rows].clamp(min=0), g["W_dec"][rows],
                 g["b_dec"])


# --- dispatch ---------------------------------------------------------------------------------

_META = {"llamascope": _llamascope_meta, "saelens": _saelens_meta, "gemmascope": _gemmascope_meta}


def read_meta(path: str | Path, fmt: str, layer: int) -> SAEMeta:
    """Read an SAE's metadata only (no weights)."""
    if fmt not in _META:
        fail("saes.format", f"unknown format {fmt!r}", f"use one of {', '.join(FORMATS)}")
    return _META[fmt](Path(path), layer)


def weights_file(meta: SAEMeta) -> Path:
    """The file that holds an SAE's weights."""
    name = {"llamascope": "checkpoints/final.safetensors", "saelens": "sae_weights.safetensors",
            "gemmascope": "params.npz"}[meta.format]
    f = meta.path / name
    if not f.exists():
        fail(str(meta.path), f"missing {name}", "check saes.format and saes.path")
    if f.is_dir():
        fail(str(f), "is a folder, not the weights file", "restore the file from the SAE release")
    return f


# A tensor's expected shape from the metadata, and where that metadata comes from.
_SAID_BY = {"llamascope": "hyperparams.json says", "saelens": "cfg.json says", "gemmascope": "W_enc's shape says"}
_OPTIONAL = {"decoder.bias"}  # a Llama Scope SAE without use_decoder_bias may leave it out
_INTS = {"I8": "int8", "U8": "uint8", "I16": "int16", "U16": "uint16", "I32": "int32", "I64": "int64", "BOOL": "bool"}


def _expected(meta: SAEMeta) -> dict[str, tuple[int, ...]]:
    """Each weight tensor the format's reader uses, with the shape d_sae and d_model imply."""
    s, d = meta.d_sae, meta.d_model
    if meta.format == "llamascope":
        return {"encoder.weight": (s, d), "encoder.bias": (s,), "decoder.weight": (d, s), "decoder.bias": (d,)}
    out = {"W_enc": (d, s), "b_enc": (s,), "W_dec": (s, d), "b_dec": (d,)}
    return {**out, "threshold": (s,)} if meta.activation == "jumprelu" else out


def tensor_headers(meta: SAEMeta) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype name) of every tensor in the SAE's weights file, from the file's
    header alone (no values read)."""
    f = weights_file(meta)
    try:
        if meta.format != "gemmascope":
            with safe_open(str(f), framework="pt", device="cpu") as st:
                return {n: (tuple(st.get_slice(n).get_shape()), st.get_slice(n).get_dtype()) for n in st.keys()}
        out = {}
        with zipfile.ZipFile(f) as z:
            for info in z.infolist():
                with z.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    shape, _, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                       else np.lib.format.read_array_header_2_0)(fh)
                out[info.filename.removesuffix(".npy")] = (tuple(shape), dtype.name)
        return out
    except Exception as e:  # noqa: BLE001 - safetensors', zipfile's and numpy's errors for a bad header
        fail(str(f), f"cannot be read ({first_line(e)})", "the file is truncated or corrupt: download it again")


def check_tensors(meta: SAEMeta) -> None:
    """Refuse weights that do not match their metadata: a tensor the reader needs missing, a
    shape other than d_sae and d_model imply (one stored transposed named so), or values that
    are not floating point. Reads the file's header only."""
    f, have = weights_file(meta), tensor_headers(meta)
    dims = f"d_sae {meta.d_sae}, d_model {meta.d_model}"
    for name, want in _expected(meta).items():
        if name not in have:
            if name in _OPTIONAL:
                continue
            fail(str(f), f"tensor {name!r} missing from the weights", "check saes.format matches the files")
        shape, dtype = have[name]
        if shape != want and len(want) == 2 and shape == want[::-1]:
            fail(str(f), f"{name} is stored transposed: {list(shape)} where {_SAID_BY[meta.format]} {dims}, "
                 f"which needs {list(want)}", "save it in the release's layout, or use the release's own file")
        if shape != want:
            fail(str(f), f"{name} has shape {list(shape)} but {_SAID_BY[meta.format]} {dims}, which needs "
                 f"{list(want)}", "use the metadata and weights of one SAE (d_sae and d_model must match the weights)")
        if not dtype.startswith(("F", "BF", "float", "bfloat")):
            fail(str(f), f"{name} is stored as {_INTS.get(dtype, dtype)}, not floating point",
                 "use the release's floating-point weights (pathreplay reads no quantized SAE: dequantize it first)")


def exact_tensors(meta: SAEMeta, index: int | None, device: str | torch.device = "cpu") -> Exact:
    """The exact form, rows restricted to `index` when given."""
    rows = slice(None) if index is None else slice(index, index + 1)
    f = weights_file(meta)
    check_tensors(meta)
    if meta.format == "gemmascope":
        out = _gemmascope_tensors(meta, rows)
    else:
        try:
            with safe_open(str(f), framework="pt", device="cpu") as st:
                def get(name: str, sl: tuple = (slice(None),)) -> torch.Tensor:
                    if name not in st.keys():
                        fail(str(f), f"tensor {name!r} missing from the weights", "check saes.format matches the files")
                    return st.get_slice(name)[sl].float()

                out = (_llamascope_tensors if meta.format == "llamascope" else _saelens_tensors)(meta, rows, get)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - safetensors' own error type for a bad header or size
            fail(str(f), f"cannot be read ({first_line(e)})",
                 "the file is truncated or corrupt: download it again")
    return Exact(*(v.to(device) for v in out))


def nonfinite_weights(meta: SAEMeta, rows: int = 4096) -> dict[str, int]:
    """Count of non-finite values per tensor of the SAE's weights, read through in blocks of
    rows; a file that cannot be read whole is refused with one line."""
    f = weights_file(meta)
    out: dict[str, int] = {}
    try:
        if meta.format == "gemmascope":
            with np.load(f) as z:
                for name in z.files:
                    out[name] = int((~np.isfinite(np.asarray(z[name], dtype=np.float32))).sum())
            return out
        with safe_open(str(f), framework="pt", device="cpu") as st:
            for name in st.keys():
                sl = st.get_slice(name)
                n = sl.get_shape()[0] if sl.get_shape() else 1
                bad = 0
                for r0 in range(0, n, rows):
                    t = sl[r0: r0 + rows] if sl.get_shape() else st.get_tensor(name)
                    bad += int((~torch.isfinite(t.float())).sum())
                out[name] = bad
    except Exception as e:  # noqa: BLE001 - safetensors' and numpy's errors for a short or corrupt file
        fail(str(f), f"cannot be read ({first_line(e)})",
             "the file is truncated or corrupt: download it again")
    return out
