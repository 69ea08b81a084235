"""Shared fixtures: tiny models and SAEs written in each on-disk format."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch

from workflow_run import SMALL, snakemake

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures" / "real"
DEMO = ROOT / "resources" / "demo"


DOSE_RESPONSE = "exp2_dose_response_trials_sample.jsonl"  # a sample of llm-addiction's exp2_revalidation_trials


def real_fixture(name: str) -> Path:
    """One of the study's real files (../shared/fixtures/real); the test is skipped where they are absent."""
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"real fixture absent: {path}")
    return path


def replay_prompts():
    """Three short game prompts of one context, for replays on the tiny model."""
    from pathreplay.replay.prompts import Prompt

    return [Prompt(f"p{i}", t, "c") for i, t in enumerate(
        ["Choice: 1) Bet $10\n", "Round 1: Bet $10, Win, Balance $120\nChoice: ", "2) Stop\nChoice: "])]


def identity_sae(d: int, threshold: float = 0.0, path: Path | None = None):
    """A jumprelu SAE whose feature i reads and writes coordinate i, above `threshold`."""
    from pathreplay.sae.exact import SAE
    from pathreplay.sae.files import SAEMeta

    meta = SAEMeta("llamascope", path, d, d, "blocks.0.hook_resid_post", 0, "jumprelu", None)
    eye = torch.eye(d)
    return SAE(meta, eye, torch.zeros(d), torch.full((d,), threshold), eye, torch.zeros(d))


def write_llamascope(folder: Path, E, bE, D, bD, *, block: int, threshold: float, avg_norm: float,
                     include_norm: bool = True) -> Path:
    from safetensors.torch import save_file

    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    d_sae, d_model = np.asarray(E).shape
    hp = {"d_model": d_model, "d_sae": d_sae, "hook_point_in": f"blocks.{block}.hook_resid_post",
          "hook_point_out": f"blocks.{block}.hook_resid_post", "act_fn": "jumprelu",
          "jump_relu_threshold": threshold, "norm_activation": "dataset-wise",
          "dataset_average_activation_norm": {"in": avg_norm, "out": avg_norm},
          "sparsity_include_decoder_norm": include_norm, "top_k": 50}
    (folder / "hyperparams.json").write_text(json.dumps(hp))
    t = {"encoder.weight": E, "encoder.bias": bE, "decoder.weight": D, "decoder.bias": bD}
    save_file({k: torch.as_tensor(v, dtype=torch.float32).contiguous() for k, v in t.items()},
              str(folder / "checkpoints" / "final.safetensors"))
    return folder


def write_saelens(folder: Path, W_enc, b_enc, W_dec, b_dec, *, block: int, architecture: str,
                  threshold=None, apply_b_dec: bool = True, k: int | None = None) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    d_in, d_sae = np.asarray(W_enc).shape
    cfg = {"d_in": d_in, "d_sae": d_sae, "hook_name": f"blocks.{block}.hook_resid_post",
           "architecture": architecture, "apply_b_dec_to_input": apply_b_dec,
           "normalize_activations": "none"}
    if k is not None:
        cfg["activation_fn_kwargs"] = {"k": k}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    t = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if threshold is not None:
        t["threshold"] = threshold
    save_file({k2: torch.as_tensor(v, dtype=torch.float32).contiguous() for k2, v in t.items()},
              str(folder / "sae_weights.safetensors"))
    return folder


def make_tiny_lm():
    """A random 3-block Llama with a byte-level tokenizer; deterministic."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from pathreplay.study.demo import build_tokenizer

    tok = build_tokenizer(["Choice: 1) Bet $10\n2) Stop\nRound 1: Bet $10, Win, Balance $120\n"] * 20, 300)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg).eval()
    return model, tok


@pytest.fixture(scope="session")
def tiny_lm():
    """make_tiny_lm(), once per session."""
    return make_tiny_lm()


@pytest.fixture(scope="session")
def tiny_saes(tmp_path_factory, tiny_lm):
    """Random Llama Scope SAEs (d_sae 64) for every block of tiny_lm: {block: folder}."""
    model, _ = tiny_lm
    root = tmp_path_factory.mktemp("saes")
    g = torch.Generator().manual_seed(1)
    d = model.config.hidden_size
    out = {}
    for b in range(model.config.num_hidden_layers):
        E = torch.randn(64, d, generator=g) / d ** 0.5
        D = torch.randn(d, 64, generator=g) / d ** 0.5
        out[b] = write_llamascope(root / f"L{b}R", E, torch.randn(64, generator=g) * 0.1, D,
                                  torch.randn(d, generator=g) * 0.1, block=b, threshold=0.05,
                                  avg_norm=float(d ** 0.5))
    return out


class Planted(NamedTuple):
    """A model whose blocks compute a chain, and SAEs whose features read its directions."""

    model: object
    tok: object
    saes: object  # pathreplay.sae.exact.SAESource
    dirs: dict  # name -> unit direction (A, B, C, X)


# Planted features (layer, index): A and X at block 0 are sources; block 1 computes B (and D, off
# the path) from A, block 2 computes C from B; B2 shares B's rows; P2 and P3 read A's own
# direction, which no block writes.
PLANTED = {"A": (0, 5), "X": (0, 7), "B": (1, 9), "B2": (1, 12), "D": (1, 3), "C": (2, 4), "P2": (2, 11),
           "P3": (3, 2)}


def make_planted(root: Path, k_ab: float = 0.1, k_bc: float = 0.1, k_ac: float = 0.0) -> Planted:
    """A 4-block Llama whose blocks compute A -> B -> C and never write A's direction.

    Five orthonormal directions e_A, e_B, e_C, e_D, e_X are taken out of the embeddings and of
    every block's output projections (o_proj, down_proj), so no random weight writes them and the
    baseline residual has none of them. Block 1's MLP gets a neuron that reads e_A and writes
    k_ab e_B, and one that reads e_A and writes 0.01 e_D (D: moved by A, read by nothing after, and
    small, so that taking it out of the residual barely moves the norm the next block divides by);
    block 2's one that reads e_B and writes k_bc e_C, and (k_ac > 0: a partial chain) one that
    reads e_A and writes k_ac e_C (silu(a) a k: 0 at a = 0). SAEs (Llama Scope files, 16 features
    a layer): the planted features read and write their directions at unit gain with a bias of 5,
    so they are active throughout (B2 with B's rows); the other features are random."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tok = make_tiny_lm()
    torch.manual_seed(0)
    d = 32
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=d, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(7)
    q, _ = torch.linalg.qr(torch.randn(d, 5, generator=g))
    dirs = dict(zip("ABCXD", q.T.contiguous()))
    off = torch.eye(d) - q @ q.T
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(model.model.embed_tokens.weight @ off)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.copy_(off @ layer.self_attn.o_proj.weight)
            layer.mlp.down_proj.weight.copy_(off @ layer.mlp.down_proj.weight)
        for block, neuron, src, dst, k in ((1, 0, "A", "B", k_ab), (1, 1, "A", "D", 0.01), (2, 0, "B", "C", k_bc),
                                           (2, 1, "A", "C", k_ac)):
            mlp = model.model.layers[block].mlp
            mlp.gate_proj.weight[neuron] = dirs[src]
            mlp.up_proj.weight[neuron] = dirs[src]
            mlp.down_proj.weight[:, neuron] = k * dirs[dst]
    reads = {0: {5: "A", 7: "X"}, 1: {9: "B", 12: "B", 3: "D"}, 2: {4: "C", 11: "A"}, 3: {2: "A"}}
    for block in range(4):
        E, D = torch.randn(16, d, generator=g) / d, torch.randn(d, 16, generator=g) / d
        bias = torch.zeros(16)
        for i, name in reads[block].items():  # a unit decoder row too: unit gain, the encoder as written
            E[i], D[:, i], bias[i] = dirs[name], dirs[name], 5.0
        write_llamascope(root / f"L{block}R", E, bias, D, torch.zeros(d), block=block, threshold=0.0,
                         avg_norm=math.sqrt(d))
    from pathreplay.sae.exact import SAESource

    return Planted(model, tok, SAESource(str(root / "L{layer}R"), "llamascope"), dirs)


@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    """make_planted(), once per session."""
    return make_planted(tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    """A whole run of the demo DAG on the small config, shared by the workflow tests."""
    wd = tmp_path_factory.mktemp("demo_run")
    t0 = time.time()
    r = snakemake(wd, "--cores", "2", config=SMALL)
    assert r.returncode == 0, r.stderr[-4000:]
    print(f"whole demo DAG (small config): {time.time() - t0:.0f} s")
    return wd
