"""Encoding captured states: the two summaries per row, sparse rows, and quality on baselines only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pathreplay.encode import encode_parts, part_of
from pathreplay.io import write_tensors
from pathreplay.sae import SAE, SAEMeta


def test_part_from_paths():
    assert part_of("results/replay/patched/s003/trials.parquet") == "patched/s003"
    assert part_of(Path("/x/results/replay/baseline/p-12/trials.parquet")) == "baseline/p-12"
    assert part_of("results/replay/patched/s003/L12.safetensors") == "patched/s003"


def test_codes_keep_the_last_prompt_value_and_the_mean_over_kept_positions(tmp_path):
    # identity SAE on 2 dims with threshold 0: a feature reads its coordinate where positive
    meta = SAEMeta("llamascope", tmp_path, 2, 2, "blocks.0.hook_resid_post", 0, "jumprelu", None)
    eye = torch.eye(2)
    sae = SAE(meta, eye, torch.zeros(2), torch.zeros(2), eye, torch.zeros(2))
    states = torch.tensor([[[1, -1], [2, 0], [4, 0]],  # row 0: last, then 2 kept generated positions
                           [[0, 0], [0, 5], [9, 9]]], dtype=torch.float16)  # row 1 kept 1: [9, 9] is padding
    path = tmp_path / "L0.safetensors"
    write_tensors({"states": states, "n_positions": torch.tensor([2, 1], dtype=torch.int32)}, path)
    codes, q = encode_parts(sae, [("baseline/p", str(path)), ("patched/s000", str(path))], 0)
    rows = {(r.part, r.row, r.feature): (r.last, r.gen) for r in codes.itertuples()}
    assert rows == {("baseline/p", 0, 0): (1.0, 3.0), ("baseline/p", 1, 1): (0.0, 5.0),
                    ("patched/s000", 0, 0): (1.0, 3.0), ("patched/s000", 1, 1): (0.0, 5.0)}
    # quality on the baseline part's 5 real positions only: the one error is the clipped -1
    assert q.positions == 5 and q.l0 == pytest.approx(0.8) and q.dead_fraction == 0.0
    assert q.fvu == pytest.approx(1 / 34)  # SS about the mean: 47 - 5 * (1.4^2 + 0.8^2) = 34
