"""Encoding captured states: the two summaries per row, sparse rows, and quality on baselines only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import identity_sae
from pathreplay.encode import encode_parts, part_of
from pathreplay.io import write_tensors


def test_part_from_paths():
    assert part_of("results/replay/patched/s003/trials.parquet") == "patched/s003"
    assert part_of(Path("/x/results/replay/baseline/p-12/trials.parquet")) == "baseline/p-12"
    assert part_of("results/replay/patched/s003/L12.safetensors") == "patched/s003"


def test_codes_keep_the_last_prompt_value_and_the_mean_over_kept_positions(tmp_path):
    # identity SAE on 2 dims with threshold 0: a feature reads its coordinate where positive
    sae = identity_sae(2, path=tmp_path)
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


def test_equal_states_get_equal_codes_wherever_they_sit(tmp_path, tiny_saes):
    """A row's codes do not depend on its part's size or its place in a chunk (every SAE product
    has one shape): the sham control's exact zero rests on it."""
    from pathreplay.sae import load_sae

    sae = load_sae(tiny_saes[1], "llamascope", 1)
    g = torch.Generator().manual_seed(0)
    big = torch.randn(37, 3, 32, generator=g).half()
    small = big[[5, 30]].clone()
    for name, st in (("a", big), ("b", small)):
        write_tensors({"states": st, "n_positions": torch.full((len(st),), 2, dtype=torch.int32)},
                      tmp_path / f"{name}.safetensors")
    codes, _ = encode_parts(sae, [("patched/a", str(tmp_path / "a.safetensors")),
                                  ("baseline/b", str(tmp_path / "b.safetensors"))], 1, chunk=24)
    a = codes[codes["part"] == "patched/a"].set_index(["row", "feature"])
    b = codes[codes["part"] == "baseline/b"].set_index(["row", "feature"])
    for i, row in ((0, 5), (1, 30)):
        mine, theirs = b.xs(i, level="row"), a.xs(row, level="row")
        assert mine.index.tolist() == theirs.index.tolist()
        assert (mine[["last", "gen"]].to_numpy() == theirs[["last", "gen"]].to_numpy()).all()


def test_fp16_storage_flips_are_counted_on_the_float32_sample(tmp_path):
    sae = identity_sae(2, threshold=1.0, path=tmp_path)
    # 1.0002 rounds to 1.0 in fp16: above the threshold in float32, not after storage
    sample = torch.tensor([[[1.0002, 3.0], [0.0, 0.0]]])
    path = tmp_path / "L0.safetensors"
    write_tensors({"states": sample.half(), "n_positions": torch.tensor([0], dtype=torch.int32),
                   "sample32": sample}, path)
    _, q = encode_parts(sae, [("baseline/p", str(path))], 0)
    assert (q.fp16_flips, q.fp16_active, q.fp16_positions) == (1, 2, 1)
