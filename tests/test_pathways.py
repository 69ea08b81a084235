"""A pathway planted by construction is recovered as the top edge and placebo finds nothing;
chains follow edges through features that were patched themselves."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from conftest import write_llamascope
from pathreplay.effects import edges, pairs_of, source_effects
from pathreplay.encode import encode_parts
from pathreplay.io import write_tensors
from pathreplay.pathways import chains
from pathreplay.plan import Job
from pathreplay.replay import ReplaySettings, run_jobs
from pathreplay.sae import load_feature, load_sae

PROMPTS = ["Choice: 1) Bet $10\n", "Round 1: Bet $10, Win, Balance $120\nChoice: ", "2) Stop\nChoice: "]
A, B = 5, 9  # source feature at block 0, planted target at block 1


@pytest.fixture(scope="module")
def planted(tiny_lm, tmp_path_factory):
    """SAEs where block 1's feature B reads exactly block 0's feature A's decoder direction, so the
    residual connection carries a patch of A straight into B."""
    model, _ = tiny_lm
    d = model.config.hidden_size
    g = torch.Generator().manual_seed(3)
    root = tmp_path_factory.mktemp("planted")
    E0, D0 = torch.randn(16, d, generator=g) / d, torch.randn(d, 16, generator=g)
    E0[A] = D0[:, A] / D0[:, A].norm() ** 2  # a trained SAE's encoder reads its own decoder row
    write_llamascope(root / "L0R", E0, torch.zeros(16), D0, torch.zeros(d), block=0, threshold=0.0,
                     avg_norm=math.sqrt(d))
    E1, D1 = torch.randn(16, d, generator=g) / d, torch.randn(d, 16, generator=g)
    E1[B] = D0[:, A] / D0[:, A].norm() ** 2  # reads A's decoder row at unit gain
    bias = torch.zeros(16)
    bias[B] = 5.0  # keep B active so its changes are visible
    write_llamascope(root / "L1R", E1, bias, D1, torch.zeros(d), block=1, threshold=0.0, avg_norm=math.sqrt(d))
    return root


def _settings():
    return ReplaySettings(max_new_tokens=5, temperature=0.7, batch_size=32, capture_layers=(0, 1),
                          capture="all")


def _pairs(treated, control, cond, tpart, cpart):
    return pairs_of(treated.assign(part=tpart), control.assign(part=cpart), cond)


def test_planted_pathway_is_top_edge_and_placebo_is_clean(tiny_lm, planted, tmp_path):
    model, tok = tiny_lm
    feat = load_feature(planted / "L0R", "llamascope", 0, A)
    s = _settings()
    base_jobs = [Job(f"p{i}", "c", t, "baseline", k, 100 * i + k) for i, t in enumerate(PROMPTS) for k in range(8)]
    plac_jobs = [j._replace(condition="placebo", seed=j.seed + 7919) for j in base_jobs]
    patch_jobs = [j._replace(condition="up", value=6.0) for j in base_jobs]
    base = run_jobs(model, tok, base_jobs + plac_jobs, s)
    patched = run_jobs(model, tok, patch_jobs, s, feature=feat, block=0)
    files = []
    for name, res in (("baseline", base), ("patched", patched)):
        path = tmp_path / f"{name}.safetensors"
        write_tensors({"states": res.states[1],
                       "n_positions": torch.tensor(res.trials["n_positions"].to_numpy(), dtype=torch.int32)}, path)
        files.append((name, str(path)))
    codes, quality = encode_parts(load_sae(planted / "L1R", "llamascope", 1), files, 1)
    assert quality.positions > 0
    bt = base.trials
    main, plac = bt[bt["condition"] == "baseline"], bt[bt["condition"] == "placebo"]
    eff = source_effects({1: codes}, [_pairs(patched.trials, main, "up", "patched", "baseline")], 0, A,
                         min_delta=0.05, min_prompts=2)
    e = edges(eff, 0.05, 0.05)
    top = e.iloc[0]
    assert (top["target_layer"], top["target_feature"]) == (1, B)
    assert top["delta"] == pytest.approx(6.0 - float(patched.trials["value_before_last"].mean()), rel=0.5)
    assert bool(top["robust"]) and top["prompts_replicated"] == 3
    # the patch is exact where it was applied
    assert (patched.trials["value_after_last"] - 6.0).abs().max() < 1e-3
    placebo = source_effects({1: codes}, [_pairs(plac, main, "placebo", "baseline", "baseline")], 0, A,
                             min_delta=0.05, min_prompts=2)
    assert placebo[(placebo["scope"] == "prompt_last")].empty  # prefill is deterministic
    assert edges(placebo, 0.05, 0.05).empty


def test_chains_follow_edges_through_patched_features():
    e = pd.DataFrame({"source_layer": [0, 1, 0], "source_feature": [1, 2, 1], "target_layer": [1, 2, 2],
                      "target_feature": [2, 3, 4], "delta": [0.5, -0.3, 0.1], "q_value": [0.01, 0.02, 0.03],
                      "robust": [True, True, False]})
    c = chains(e)
    assert c["path"].tolist() == ["L0-1 -> L1-2 -> L2-3"]
    assert c["deltas"].iloc[0] == "0.5;-0.3" and bool(c["robust"].iloc[0])
