"""Quality gates before claims: SAEs that reconstruct nothing, or prompts the model does not
answer, stop the run with one line before any edge is claimed."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from conftest import ROOT, write_llamascope
from pathreplay.errors import UserError
from pathreplay.pathways.gates import check_gates, gate_rows

QC = {"max_fvu": 0.5, "max_dead": 0.9, "min_valid": 0.2}


def _quality(fvu=(0.01, 0.02), dead=(0.3, 0.4)):
    return pd.DataFrame({"layer": [0, 1], "fvu": fvu, "dead_fraction": dead})


def _baseline(valid):
    return pd.DataFrame({"condition": "baseline", "run": "generated", "prompt_id": ["a"] * 4 + ["b"] * 4,
                         "valid": valid})


def test_every_gate_has_a_verdict():
    g = gate_rows(_quality(), _baseline([True] * 8), QC)
    assert list(g["gate"]) == ["sae_fvu", "sae_dead", "sae_fvu", "sae_dead", "valid_answers", "valid_answers"]
    assert g["passed"].all() and list(g["subject"]) == ["L0", "L0", "L1", "L1", "a", "b"]
    check_gates(g)  # nothing to say


@pytest.mark.parametrize("quality, valid, says", [
    (_quality(fvu=(0.01, 1.05)), [True] * 8, "the SAE at layer 1 explains too little of the baselines' states: "
                                             "FVU 1.05 above 0.5; check saes.path"),
    (_quality(dead=(1.0, 0.2)), [True] * 8, "100.0% of the SAE's features at layer 0 never fire"),
    (_quality(), [False] * 4 + [True] * 4, "prompt 'a' gets a valid answer in 0.0% of its baseline trials"),
])
def test_a_failed_gate_is_one_line_with_the_key_that_overrides_it(quality, valid, says):
    with pytest.raises(UserError, match="qc gate: ") as err:
        check_gates(gate_rows(quality, _baseline(valid), QC))
    assert says in str(err.value) and "or set qc." in str(err.value) and "\n" not in str(err.value)


def test_every_failed_gate_is_named():
    with pytest.raises(UserError, match=r"\(2 other gates failed too: sae_dead L0, valid_answers a\)"):
        check_gates(gate_rows(_quality(fvu=(0.9, 0.1), dead=(0.95, 0.1)), _baseline([False] * 4 + [True] * 4), QC))


SMALL = {"features": {"table": str(ROOT / "tests" / "tasks" / "yes_no_features.tsv")}, "screen": {"enabled": False},
         "select": {"top_n": 1, "shard_size": 1, "labels": []}, "prompts": {"per_feature": 1},
         "replay": {"trials": 4, "max_new_tokens": 4, "placebo": False}}


def _random_saes(root):
    """SAEs of the demo's shape whose features are random unit rows (gain 1, tied): they reconstruct nothing."""
    g = torch.Generator().manual_seed(0)
    for layer in range(4):
        E = torch.randn(1024, 128, generator=g)
        E /= E.norm(dim=1, keepdim=True)
        write_llamascope(root / f"L{layer}R", E, torch.zeros(1024), E.T.contiguous(), torch.zeros(128), block=layer,
                         threshold=0.0, avg_norm=math.sqrt(128))
    return str(root / "L{layer}R")


def _stopped_by_a_gate(r, tmp_path):
    lines = [ln for ln in r.stderr.splitlines() if "pathreplay: error:" in ln]
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len({ln.split("pathreplay: error:")[1] for ln in lines}) == 1 and "qc gate: " in lines[0], r.stderr[-3000:]
    assert not (tmp_path / "results" / "pathways").exists() and not (tmp_path / "results" / "qc" / "gates.tsv").exists()
    return lines[0]


@pytest.mark.workflow
def test_saes_that_reconstruct_nothing_stop_the_run_before_any_claim(tmp_path):
    from test_workflow import snakemake

    cfg = {**SMALL, "saes": {"path": _random_saes(tmp_path / "saes")}}
    line = _stopped_by_a_gate(snakemake(tmp_path, "--cores", "2", config=cfg), tmp_path)
    assert "explains too little of the baselines' states" in line and "qc.max_fvu" in line


@pytest.mark.workflow
def test_a_prompt_never_answered_stops_the_run_before_any_claim(tmp_path):
    from test_workflow import snakemake

    task = tmp_path / "mute.py"
    task.write_text("from pathreplay.task import Answer, Rate, Task\n"
                    "TASK = Task('mute', lambda text, prompt, parser: Answer('none', float('nan'), False, 'no', 0),\n"
                    "            ('first',), (Rate('yes', 'yes'),), ('yes', 'no'))\n")
    line = _stopped_by_a_gate(snakemake(tmp_path, "--cores", "2", config={**SMALL, "task": str(task)}), tmp_path)
    assert "gets a valid answer in 0.0% of its baseline trials" in line and "qc.min_valid" in line
