"""Each SAE format against values computed by hand on 2-dimensional weights."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import write_llamascope, write_saelens
from pathreplay.errors import UserError
from pathreplay.sae.exact import SAESource, check_hook, load_feature, load_sae
from pathreplay.sae.files import read_meta

R2 = math.sqrt(2)
S = R2 / 2  # sqrt(d_model) / avg_norm_in with d_model 2 and avg_norm_in 2


@pytest.fixture
def llamascope(tmp_path):
    E = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    bE = [0.5, -1.0, 0.0]
    D = [[2.0, 0.0, 1.0], [0.0, 1.0, 1.0]]  # [d_model, d_sae]: column norms 2, 1, sqrt(2)
    bD = [0.4, -0.2]
    return write_llamascope(tmp_path / "L5R", E, bE, D, bD, block=5, threshold=0.5, avg_norm=2.0)


def test_llamascope_encode_decode_by_hand(llamascope):
    sae = load_sae(llamascope, "llamascope", 5)
    f = sae.encode(torch.tensor([[1.0, 2.0], [0.0, 0.3]]))
    # pre_i = ||D_i|| (E_i . x + b_i / s)
    want0 = [2 * (1 + 0.5 / S), 1 * (2 - 1 / S), R2 * 3]
    # second row: pre = [2*(0.5/s), 0.3 - 1/s, sqrt(2)*0.3]; 0.424 < threshold 0.5 -> 0
    want1 = [2 * (0.5 / S), 0.0, 0.0]
    assert f[0].tolist() == pytest.approx(want0, rel=1e-6)
    assert f[1].tolist() == pytest.approx(want1, rel=1e-6)
    x_hat = sae.decode(f[:1])
    # sum_i f_i D_i / ||D_i|| + b_D / s
    want = [want0[0] + want0[2] / R2 + 0.4 / S, want0[1] + want0[2] / R2 - 0.2 / S]
    assert x_hat[0].tolist() == pytest.approx(want, rel=1e-6)


def test_llamascope_without_decoder_norm(tmp_path):
    folder = write_llamascope(tmp_path / "L0R", [[1.0, 0.0]], [0.0], [[2.0], [0.0]], [0.0, 0.0],
                              block=0, threshold=0.0, avg_norm=2.0, include_norm=False)
    sae = load_sae(folder, "llamascope", 0)
    f = sae.encode(torch.tensor([[3.0, 1.0]]))
    assert f.item() == pytest.approx(3.0)
    assert sae.decode(f)[0].tolist() == pytest.approx([6.0, 0.0])


def test_feature_slice_matches_whole_sae(llamascope):
    sae = load_sae(llamascope, "llamascope", 5)
    x = torch.tensor([[1.0, 2.0], [-0.5, 0.7], [0.0, 0.3]])
    for i in range(3):
        feat = load_feature(llamascope, "llamascope", 5, i)
        assert feat.value(x).tolist() == pytest.approx(sae.encode(x)[:, i].tolist(), rel=1e-6)
        # one unit along the direction moves the pre-activation by exactly one
        assert float(feat.pre(feat.direction) - feat.pre(torch.zeros(2))) == pytest.approx(1.0, rel=1e-6)


def test_feature_slice_reads_only_its_row(llamascope, monkeypatch):
    from safetensors import safe_open

    shapes = []
    real = safe_open

    class Spy:
        def __init__(self, *a, **k):
            self.f = real(*a, **k)

        def __enter__(self):
            self.inner = self.f.__enter__()
            return self

        def __exit__(self, *a):
            return self.f.__exit__(*a)

        def keys(self):
            return self.inner.keys()

        def get_slice(self, name):
            sl = self.inner.get_slice(name)

            class S:
                def __getitem__(_, idx):
                    t = sl[idx]
                    shapes.append((name, tuple(t.shape)))
                    return t

                def get_shape(_):  # the header's shapes and dtypes are checked, no values read
                    return sl.get_shape()

                def get_dtype(_):
                    return sl.get_dtype()
            return S()

    monkeypatch.setattr("pathreplay.sae.files.safe_open", Spy)
    load_feature(llamascope, "llamascope", 5, 1)
    assert ("encoder.weight", (1, 2)) in shapes and ("decoder.weight", (2, 1)) in shapes


@pytest.mark.parametrize("arch,want", [("jumprelu", [1.1, 0.0]), ("standard", [1.1, 0.0])])
def test_saelens_by_hand(tmp_path, arch, want):
    folder = write_saelens(tmp_path / "s", [[1.0, -1.0], [2.0, 0.0]], [0.1, 0.2],
                           [[1.0, 0.0], [0.5, 0.5]], [1.0, 1.0], block=3, architecture=arch,
                           threshold=[0.5, 0.5] if arch == "jumprelu" else None)
    sae = load_sae(folder, "saelens", 3)
    # x - b_dec = [1, 0]; pre = [1*1 + 0.1, -1 + 0.2] = [1.1, -0.8]
    f = sae.encode(torch.tensor([[2.0, 1.0]]))
    assert f[0].tolist() == pytest.approx(want, rel=1e-6)
    assert sae.decode(f)[0].tolist() == pytest.approx([2.1, 1.0], rel=1e-6)


def test_saelens_jumprelu_threshold_cuts(tmp_path):
    folder = write_saelens(tmp_path / "s", [[1.0], [0.0]], [0.0], [[1.0, 0.0]], [0.0, 0.0],
                           block=0, architecture="jumprelu", threshold=[0.5], apply_b_dec=False)
    sae = load_sae(folder, "saelens", 0)
    assert sae.encode(torch.tensor([[0.4, 9.0], [0.6, 0.0]]))[:, 0].tolist() == pytest.approx([0.0, 0.6])


def test_saelens_topk_by_hand(tmp_path):
    folder = write_saelens(tmp_path / "s", [[1.0, 2.0, -1.0], [0.0, 0.0, 0.0]], [0.0, 0.0, 0.0],
                           np.eye(3, 2).tolist(), [0.0, 0.0], block=1, architecture="topk",
                           apply_b_dec=False, k=1)
    sae = load_sae(folder, "saelens", 1)
    assert sae.encode(torch.tensor([[1.0, 0.0]]))[0].tolist() == pytest.approx([0.0, 2.0, 0.0])


def test_gemmascope_by_hand(tmp_path):
    folder = tmp_path / "g"
    folder.mkdir()
    np.savez(folder / "params.npz", W_enc=np.array([[1.0, 0.0], [1.0, 1.0]], np.float32),
             b_enc=np.array([0.0, -1.0], np.float32), threshold=np.array([0.5, 0.5], np.float32),
             W_dec=np.array([[1.0, 0.0], [0.0, 2.0]], np.float32), b_dec=np.array([0.1, 0.1], np.float32))
    sae = load_sae(folder, "gemmascope", 7)
    # pre = x W_enc + b_enc with x = [0.3, 1]: [1.3, 1 - 1] = [1.3, 0]; no b_dec subtraction
    f = sae.encode(torch.tensor([[0.3, 1.0]]))
    assert f[0].tolist() == pytest.approx([1.3, 0.0], rel=1e-6)
    assert sae.decode(f)[0].tolist() == pytest.approx([1.4, 0.1], rel=1e-6)
    assert read_meta(folder, "gemmascope", 7).block == 7


def test_hook_point_comes_from_metadata(llamascope, tmp_path):
    meta = read_meta(llamascope, "llamascope", 5)
    assert (meta.block, meta.hook, meta.d_sae) == (5, "blocks.5.hook_resid_post", 3)
    with pytest.raises(UserError, match="reads 'blocks.5.hook_resid_post'.*fix saes.path"):
        check_hook(meta, 6, "saes/L{layer}R")
    pre = write_saelens(tmp_path / "p", [[1.0]], [0.0], [[1.0]], [0.0], block=4, architecture="standard")
    cfg = json.loads((pre / "cfg.json").read_text())
    cfg["hook_name"] = "blocks.4.hook_resid_pre"
    (pre / "cfg.json").write_text(json.dumps(cfg))
    assert read_meta(pre, "saelens", 3).block == 3  # resid_pre of block 4 is block 3's output


def test_bad_sae_files_get_one_line(tmp_path, llamascope):
    with pytest.raises(UserError, match="missing hyperparams.json"):
        read_meta(tmp_path, "llamascope", 0)
    hp = json.loads((llamascope / "hyperparams.json").read_text())
    hp["hook_point_in"] = hp["hook_point_out"] = "blocks.5.hook_mlp_out"
    (llamascope / "hyperparams.json").write_text(json.dumps(hp))
    with pytest.raises(UserError, match="not a residual-stream hook"):
        read_meta(llamascope, "llamascope", 5)
    with pytest.raises(UserError, match="outside 0..2"):
        hp["hook_point_in"] = hp["hook_point_out"] = "blocks.5.hook_resid_post"
        (llamascope / "hyperparams.json").write_text(json.dumps(hp))
        load_feature(llamascope, "llamascope", 5, 3)


def test_source_names_each_layers_folder_and_checks_its_hook(llamascope, tmp_path):
    src = SAESource(str(llamascope.parent / "L{layer}R"), "llamascope")
    assert src.folder(5) == llamascope and src.meta(5).block == 5
    assert torch.equal(src.load(5).W[2], src.feature(5, 2).w)
    (tmp_path / "L6R").mkdir()
    (tmp_path / "L6R" / "hyperparams.json").write_text((llamascope / "hyperparams.json").read_text())
    with pytest.raises(UserError, match=r"configured as layer 6 .* reads 'blocks.5.hook_resid_post'"):
        SAESource(str(tmp_path / "L{layer}R"), "llamascope").meta(6)


def _openmoss_inference(hp, E, bE, D, bD):
    """OpenMOSS's own route to inference: biases and decoder rescaled by the dataset norms, the
    pre-encoder bias subtracted where asked, decoder norms folded into the activations; then
    encode / decode on the raw residual (written from its code, independently of sae_files)."""
    d = E.shape[1]
    s_in, s_out = math.sqrt(d) / hp["dataset_average_activation_norm"]["in"], \
        math.sqrt(d) / hp["dataset_average_activation_norm"]["out"]
    bE, Dp = bE / s_in, D * s_in / s_out
    bDp = bD / s_out if hp.get("use_decoder_bias", True) else torch.zeros(d)
    norm = Dp.norm(dim=0)

    def encode(x):
        if hp.get("apply_decoder_bias_to_pre_encoder", False):
            x = x - bDp
        pre = (x @ E.T + bE) * norm
        return pre * (pre > hp["jump_relu_threshold"])

    def decode(f):
        return (f / norm) @ Dp.T + bDp

    return encode, decode


@pytest.mark.parametrize("change", [
    {}, {"use_decoder_bias": False}, {"apply_decoder_bias_to_pre_encoder": True},
    {"dataset_average_activation_norm": {"in": 2.0, "out": 0.5}},
    {"apply_decoder_bias_to_pre_encoder": True, "dataset_average_activation_norm": {"in": 3.0, "out": 1.5}},
])
def test_every_llamascope_setting_is_honoured(tmp_path, change):
    g = torch.Generator().manual_seed(4)
    E, D = torch.randn(6, 4, generator=g), torch.randn(4, 6, generator=g)
    bE, bD = torch.randn(6, generator=g) * 0.3, torch.randn(4, generator=g)
    folder = write_llamascope(tmp_path / "L2R", E, bE, D, bD, block=2, threshold=0.2, avg_norm=2.0)
    hp = {**json.loads((folder / "hyperparams.json").read_text()), **change}
    (folder / "hyperparams.json").write_text(json.dumps(hp))
    encode, decode = _openmoss_inference(hp, E, bE, D, bD)
    sae = load_sae(folder, "llamascope", 2)
    x = torch.randn(50, 4, generator=g) * 2
    want = encode(x)
    assert torch.equal(sae.encode(x) > 0, want > 0) and (want > 0).any() and (want == 0).any()
    assert torch.allclose(sae.encode(x), want, atol=1e-5)
    assert torch.allclose(sae.decode(want), decode(want), atol=1e-5)


@pytest.mark.parametrize("fmt, edit, says", [
    ("llamascope", {"act_fn": "gelu"}, r"act_fn 'gelu' is not reproduced"),
    ("llamascope", {"norm_activation": "token-wise"}, r"norm_activation 'token-wise' is not reproduced"),
    ("llamascope", {"dataset_average_activation_norm": {"in": 2.0}}, r"dataset_average_activation_norm.out is missing"),
    ("llamascope", {"d_model": None}, r"has no 'd_model'"),
])
def test_settings_that_cannot_be_reproduced_are_refused(tmp_path, llamascope, fmt, edit, says):
    hp = json.loads((llamascope / "hyperparams.json").read_text())
    hp.update(edit)
    if edit.get("d_model", 0) is None:
        del hp["d_model"]
    (llamascope / "hyperparams.json").write_text(json.dumps(hp))
    with pytest.raises(UserError, match=says):
        load_sae(llamascope, "llamascope", 5)


@pytest.mark.parametrize("edit, says", [
    ({"act_fn": "topk", "top_k": None}, r"has no 'top_k'"),
    ({"d_sae": "3x"}, r"d_sae '3x' is not an integer"),
])
def test_unusable_llamascope_numbers_are_one_line(llamascope, edit, says):
    hp = {k: v for k, v in {**json.loads((llamascope / "hyperparams.json").read_text()), **edit}.items()
          if v is not None}
    (llamascope / "hyperparams.json").write_text(json.dumps(hp))
    with pytest.raises(UserError, match=says):
        read_meta(llamascope, "llamascope", 5)


def test_unusable_gemmascope_files_are_one_line(tmp_path):
    folder = tmp_path / "g"
    folder.mkdir()
    np.savez(folder / "params.npz", W_enc=np.eye(2, dtype=np.float32), b_enc=np.zeros(2, np.float32),
             W_dec=np.eye(2, dtype=np.float32), b_dec=np.zeros(2, np.float32))
    with pytest.raises(UserError, match=r"params.npz: has no threshold; check saes.format"):
        read_meta(folder, "gemmascope", 0)
    (folder / "params.npz").write_bytes((folder / "params.npz").read_bytes()[:60])
    with pytest.raises(UserError, match=r"params.npz: cannot be read"):
        read_meta(folder, "gemmascope", 0)


def test_truncated_weights_are_one_line(tmp_path, llamascope):
    f = llamascope / "checkpoints" / "final.safetensors"
    f.write_bytes(f.read_bytes()[:40])
    with pytest.raises(UserError, match=r"final.safetensors: cannot be read .*truncated or corrupt"):
        load_sae(llamascope, "llamascope", 5)


def test_a_jumprelu_threshold_below_zero_still_gates_a_relu(tmp_path):
    # sae-lens and Gemma Scope: f = relu(pre) [pre > t]; with t < 0 nothing negative comes out
    folder = write_saelens(tmp_path / "j", [[1.0, 1.0]], [0.0, 0.0], [[1.0], [1.0]], [0.0], block=0,
                           architecture="jumprelu", threshold=[-0.5, 0.3], apply_b_dec=False)
    f = load_sae(folder, "saelens", 0).encode(torch.tensor([[-0.2], [0.2], [0.5]]))
    assert torch.allclose(f, torch.tensor([[0.0, 0.0], [0.2, 0.0], [0.5, 0.5]]))


def _edit_weights(folder, name, edit):
    from safetensors.torch import load_file, save_file

    f = folder / name
    t = load_file(f)
    edit(t)
    save_file(t, str(f))


@pytest.mark.parametrize("edit, says", [
    (lambda t: t.update({"encoder.weight": t["encoder.weight"].T.contiguous()}),
     r"encoder.weight is stored transposed: \[2, 3\] where hyperparams.json says d_sae 3, d_model 2, which "
     r"needs \[3, 2\]; save it in the release's layout"),
    (lambda t: t.update({"decoder.weight": t["decoder.weight"][:, :2].contiguous()}),
     r"decoder.weight has shape \[2, 2\] but hyperparams.json says d_sae 3, d_model 2, which needs \[2, 3\]"),
    (lambda t: t.update({"encoder.weight": t["encoder.weight"].to(torch.int8)}),
     r"encoder.weight is stored as int8, not floating point; .*dequantize"),
    (lambda t: t.pop("encoder.bias"), r"tensor 'encoder.bias' missing from the weights"),
])
def test_weights_that_disagree_with_their_metadata_are_named(llamascope, edit, says):
    _edit_weights(llamascope, "checkpoints/final.safetensors", edit)
    with pytest.raises(UserError, match=r"final.safetensors: " + says):  # the jobs' loaders
        load_feature(llamascope, "llamascope", 5, 1)
    with pytest.raises(UserError, match=says):
        load_sae(llamascope, "llamascope", 5)
    from pathreplay.sae.files import check_tensors

    with pytest.raises(UserError, match=says):  # the start-of-run check: the header alone
        check_tensors(read_meta(llamascope, "llamascope", 5))


def test_metadata_wider_than_the_weights_is_named(llamascope):
    from pathreplay.sae.files import check_tensors

    hp = json.loads((llamascope / "hyperparams.json").read_text())
    (llamascope / "hyperparams.json").write_text(json.dumps({**hp, "d_sae": 8}))
    with pytest.raises(UserError, match=r"encoder.weight has shape \[3, 2\] but hyperparams.json says d_sae 8"):
        check_tensors(read_meta(llamascope, "llamascope", 5))


def test_half_precision_weights_pass_the_header_check(llamascope):
    from pathreplay.sae.files import check_tensors

    _edit_weights(llamascope, "checkpoints/final.safetensors",
                  lambda t: t.update({k: v.to(torch.bfloat16 if "enc" in k else torch.float16) for k, v in t.items()}))
    check_tensors(read_meta(llamascope, "llamascope", 5))
    assert load_sae(llamascope, "llamascope", 5).W.dtype == torch.float32


def test_saelens_and_gemmascope_shapes_and_dtypes_are_checked(tmp_path):
    from pathreplay.sae.files import check_tensors

    W_enc, W_dec = [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]  # d_model 2, d_sae 3
    s = write_saelens(tmp_path / "s", W_enc, [0.0] * 3, W_dec, [0.0, 0.0], block=0, architecture="standard")
    _edit_weights(s, "sae_weights.safetensors", lambda t: t.update({"W_dec": t["W_dec"].T.contiguous()}))
    with pytest.raises(UserError, match=r"W_dec is stored transposed: \[2, 3\] where cfg.json says d_sae 3"):
        check_tensors(read_meta(s, "saelens", 0))
    g = tmp_path / "g"
    g.mkdir()
    np.savez(g / "params.npz", W_enc=np.array(W_enc, np.float32), b_enc=np.zeros(3, np.float32),
             threshold=np.zeros(3, np.int8), W_dec=np.array(W_dec, np.float32), b_dec=np.zeros(2, np.float32))
    with pytest.raises(UserError, match=r"params.npz: threshold is stored as int8, not floating point"):
        check_tensors(read_meta(g, "gemmascope", 0))
    np.savez(g / "params.npz", W_enc=np.array(W_enc, np.float32), b_enc=np.zeros(3, np.float32),
             threshold=np.zeros(3, np.float32), W_dec=np.array(W_enc, np.float32), b_dec=np.zeros(2, np.float32))
    with pytest.raises(UserError, match=r"W_dec is stored transposed: \[2, 3\] where W_enc's shape says d_sae 3"):
        load_sae(g, "gemmascope", 0)


def test_a_path_that_is_no_folder_here_says_both_possibilities(tmp_path, monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    from pathreplay.sae.files import sae_dir

    def offline(*a, **k):
        raise LocalEntryNotFoundError("Cannot find an appropriate cached snapshot folder")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("huggingface_hub.snapshot_download", offline)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match=r"^saes.path='saes/L\{layer\}R': 'saes/L3R' is neither a folder here nor a "
                       r"Hugging Face hub path that can be read offline \(LocalEntryNotFoundError: Cannot find"):
        sae_dir("saes/L{layer}R", 3)


def test_sae_files_that_are_folders_are_one_line(llamascope):
    (llamascope / "hyperparams.json").unlink()
    (llamascope / "hyperparams.json").mkdir()
    with pytest.raises(UserError, match=r"L5R/hyperparams.json: is a folder, not a file"):
        read_meta(llamascope, "llamascope", 5)
