"""SAEs as the real sae-lens package saves them today: pathreplay encodes and decodes them as
sae-lens does, on random and on the demo's residuals, with the same active features; settings it
cannot reproduce are refused by name. (The test extra installs sae-lens.)"""

from __future__ import annotations

import json
import zlib

import pytest
import torch

from conftest import DEMO
from pathreplay.errors import UserError
from pathreplay.sae.exact import load_sae
from pathreplay.sae.files import read_meta

sl = pytest.importorskip("sae_lens", reason="the interop tier needs sae-lens (pip install -e '.[test]')")
pytestmark = pytest.mark.interop

D_IN, D_SAE, BLOCK = 128, 512, 1  # the demo's d_model: its residuals are real inputs


def _randomise(sae, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if name.startswith("W") else 0.2))
        if hasattr(sae, "threshold"):
            # thresholds on both sides of 0: sae-lens gates relu(pre) by pre > threshold
            sae.threshold.copy_(torch.randn(sae.threshold.shape, generator=g) * 0.5)


@pytest.fixture(scope="module")
def inputs() -> torch.Tensor:
    """Random vectors, and the demo model's own residuals at block 1 on game prompts."""
    from pathreplay.runtime.model import load_model
    from pathreplay.study.demo import block_outputs, heldout_pairs

    model, tok = load_model(str(DEMO / "model"), "float32", "cpu")
    demo = block_outputs(model, tok, heldout_pairs(6, 5))[BLOCK]
    g = torch.Generator().manual_seed(0)
    return torch.cat([torch.randn(200, D_IN, generator=g) * 2, demo / demo.norm(dim=1, keepdim=True) * 4])


def _meta(**kw):
    from sae_lens.saes.sae import SAEMetadata

    return SAEMetadata(hook_name=f"blocks.{BLOCK}.hook_resid_post", **kw)


def _saved(tmp_path, sae, name: str):
    path = tmp_path / name
    sae.save_model(path)
    return path


CASES = {
    "standard": lambda: sl.StandardSAE(sl.StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=_meta())),
    "standard, no b_dec on the input": lambda: sl.StandardSAE(sl.StandardSAEConfig(
        d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False, metadata=_meta())),
    "jumprelu": lambda: sl.JumpReLUSAE(sl.JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=_meta())),
    "topk": lambda: sl.TopKSAE(sl.TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=24, metadata=_meta())),
    "topk, acts rescaled by decoder norm": lambda: sl.TopKSAE(sl.TopKSAEConfig(
        d_in=D_IN, d_sae=D_SAE, k=24, rescale_acts_by_decoder_norm=True, metadata=_meta())),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_saved_architecture_encodes_and_decodes_like_sae_lens(tmp_path, inputs, case):
    sae = CASES[case]()
    _randomise(sae, zlib.crc32(case.encode()) % 1000)  # hash() of a str changes from run to run
    path = _saved(tmp_path, sae, "sae")
    cfg = json.loads((path / "cfg.json").read_text())
    assert "hook_name" not in cfg and cfg["metadata"]["hook_name"] == f"blocks.{BLOCK}.hook_resid_post"
    ours = load_sae(path, "saelens", BLOCK)
    assert read_meta(path, "saelens", BLOCK).block == BLOCK
    x = inputs
    with torch.no_grad():
        want_f = sae.encode(x)
        got_f = ours.encode(x)
        assert torch.equal(want_f > 0, got_f > 0), f"{int(((want_f > 0) != (got_f > 0)).sum())} active-set mismatches"
        assert torch.allclose(got_f, want_f, atol=2e-5, rtol=1e-5)
        assert torch.allclose(ours.decode(want_f), sae.decode(want_f), atol=2e-5, rtol=1e-5)
    assert (want_f > 0).any()


@pytest.mark.parametrize("train", ["topk", "batchtopk", "jumprelu"])
def test_training_saes_saved_for_inference_read_like_sae_lens_reads_them(tmp_path, inputs, train):
    cfgs = {"topk": (sl.TopKTrainingSAE, sl.TopKTrainingSAEConfig, {"k": 16}),
            "batchtopk": (sl.BatchTopKTrainingSAE, sl.BatchTopKTrainingSAEConfig, {"k": 16}),
            "jumprelu": (sl.JumpReLUTrainingSAE, sl.JumpReLUTrainingSAEConfig, {})}
    cls, cfg_cls, kw = cfgs[train]
    sae = cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, metadata=_meta(), **kw))
    _randomise(sae, 7)
    if train == "batchtopk":  # a threshold as training would have set it
        with torch.no_grad():
            sae.topk_threshold.fill_(0.4)
    path = tmp_path / "inference"
    sae.save_inference_model(path)
    theirs = sl.SAE.load_from_disk(path)
    ours = load_sae(path, "saelens", BLOCK)
    x = inputs
    with torch.no_grad():
        want = theirs.encode(x)
        assert torch.equal(want > 0, ours.encode(x) > 0)
        assert torch.allclose(ours.encode(x), want, atol=2e-5, rtol=1e-5)
        assert torch.allclose(ours.decode(want), theirs.decode(want), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("key, value, says", [
    ("normalize_activations", "layer_norm", "normalize_activations 'layer_norm' is not reproduced"),
    ("normalize_activations", "expected_average_only_in", "normalize_activations 'expected_average_only_in'"),
    ("reshape_activations", "hook_z", "reshape_activations 'hook_z' is not reproduced"),
    ("architecture", "gated", "architecture 'gated' is not reproduced"),
])
def test_settings_pathreplay_cannot_reproduce_are_refused_by_name(tmp_path, key, value, says):
    sae = CASES["standard"]()
    path = _saved(tmp_path, sae, "sae")
    cfg = json.loads((path / "cfg.json").read_text())
    cfg[key] = value
    (path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=says) as err:
        read_meta(path, "saelens", BLOCK)
    assert str(path / "cfg.json") in str(err.value) and "\n" not in str(err.value)
