"""The committed demo: it plays the game, its SAEs reconstruct, and the hub code path reads the
same layout."""

from __future__ import annotations

import shutil

import pytest

from conftest import DEMO, make_tiny_lm
from pathreplay.replay.prompts import read_prompts
from pathreplay.sae.files import read_meta, sae_dir
from pathreplay.study.demo import block_outputs, measure_figures
from pathreplay.study.game import exp2_prompts


def test_demo_plays_and_saes_reconstruct():
    fig = measure_figures(str(DEMO / "model"), str(DEMO / "saes" / "L{layer}R"), [0, 1, 2, 3],
                          device="cpu", samples=60)
    val = {(r.figure, r.where): r.value for r in fig.itertuples()}
    assert val[("valid_rate", "safe")] >= 0.95 and val[("valid_rate", "risky")] >= 0.95
    assert val[("stop_rate", "safe")] > val[("stop_rate", "risky")] + 0.1
    for layer in range(4):
        assert val[("fvu", f"L{layer}")] <= 0.15
        assert 1 <= val[("l0", f"L{layer}")] <= 200


def test_demo_prompts_hold_the_exp2_prompts():
    prompts = {p.id: p for p in read_prompts(str(DEMO / "prompts.jsonl"))}
    for ctx, text in exp2_prompts().items():
        assert prompts[f"exp2_{ctx}"].text == text and prompts[f"exp2_{ctx}"].context == ctx
    assert {p.context for p in prompts.values()} == {"safe", "risky"}


def test_hub_template_reads_one_layer_folder(tmp_path, monkeypatch):
    # The Llama Scope hub repo holds one folder per layer; fetch only the asked layer's files.
    repo = tmp_path / "snapshot"
    shutil.copytree(DEMO / "saes" / "L2R", repo / "Llama3_1-8B-Base-L2R-8x")
    calls = []

    def fake_snapshot(repo_id, allow_patterns):
        calls.append((repo_id, allow_patterns))
        return str(repo)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot)
    folder = sae_dir("fnlp/Llama3_1-8B-Base-LXR-8x/Llama3_1-8B-Base-L{layer}R-8x", 2)
    assert read_meta(folder, "llamascope", 2).hook == "blocks.2.hook_resid_post"
    assert calls[0][0] == "fnlp/Llama3_1-8B-Base-LXR-8x"
    assert all(p.startswith("Llama3_1-8B-Base-L2R-8x/") for p in calls[0][1])


def test_block_outputs_feeds_the_model_on_its_device():
    # No GPU in CI: parameters on `meta` stand for a model on another device than the CPU, where
    # block_outputs builds its ids. The forward cannot run there, so the hook stops it once seen.
    model, tok = make_tiny_lm()
    model.to("meta")
    seen: dict[str, str] = {}

    class Seen(Exception):
        pass

    def record(module, args, kwargs):
        seen.update({k: v.device.type for k, v in kwargs.items() if hasattr(v, "device")})
        raise Seen

    model.register_forward_pre_hook(record, with_kwargs=True)
    with pytest.raises(Seen):
        block_outputs(model, tok, [("Choice: 1) Bet $10", " 2) Stop")])
    assert seen == {"input_ids": "meta", "attention_mask": "meta", "position_ids": "meta"}
