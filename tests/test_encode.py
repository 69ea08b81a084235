"""Encoding captured states: the two summaries per row, sparse rows, and quality on baselines only."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import identity_sae
from pathreplay.io import write_tensors
from pathreplay.sae.encode import encode_parts, part_of


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
    from pathreplay.sae.exact import load_sae

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


def _one_job_per_layer(sae, parts, layer, chunk):
    """The quality of one layer as the one-job-per-layer encode computed it before per-part jobs
    (kept verbatim as the reference the merge of partial sums must equal)."""
    from pathreplay.sae.encode import LayerQuality, _encode, fp16_flips, read_states

    err = sq = 0.0
    n_pos = 0
    l0_sum = 0.0
    flips = [0, 0, 0]
    ever = torch.zeros(sae.meta.d_sae, dtype=torch.bool, device=sae.W.device)
    sums = torch.zeros(sae.meta.d_model, dtype=torch.float64)
    for part, path in parts:
        states, n_valid, sample = read_states(path)
        rows, width, _ = states.shape
        valid = torch.arange(width)[None, :] <= n_valid[:, None]
        per = max(1, chunk // width)
        for r0 in range(0, rows, per):
            x = states[r0: r0 + per].to(sae.W.device, torch.float32)
            v = valid[r0: r0 + x.shape[0]].to(x.device)
            f = _encode(sae, x, per)
            if not part.startswith("baseline"):
                continue
            rec = sae.decode(f)
            xv = x[v]
            err += float((xv - rec[v]).pow(2).sum())
            sq += float(xv.pow(2).sum())
            sums += xv.double().sum(0).cpu()
            n_pos += int(v.sum())
            l0_sum += float((f[v] > 0).sum())
            ever |= (f[v] > 0).any(0)
        if part.startswith("baseline") and len(sample):
            flips = [a + b for a, b in zip(flips, fp16_flips(sae, sample))]
    mean = sums / max(1, n_pos)
    tot = sq - n_pos * float(mean.pow(2).sum())
    return LayerQuality(layer, err / tot if tot > 0 else float("nan"), l0_sum / max(1, n_pos),
                        float((~ever).float().mean()), n_pos, *flips)


def test_merged_partial_quality_equals_one_pass_over_the_layer(tmp_path, tiny_saes):
    """Per-part jobs write partial sums; their merge gives bit for bit the numbers one job over
    every part of the layer gave (float64 sums added in the same order, masks OR-ed), and the
    patched part counts for nothing."""
    from pathreplay.sae.encode import encode_part, load_partial, merge_quality, save_partial
    from pathreplay.sae.exact import load_sae

    sae = load_sae(tiny_saes[1], "llamascope", 1)
    g = torch.Generator().manual_seed(3)
    parts = []
    for name, rows in (("baseline/a", 37), ("baseline/b", 5), ("baseline/c", 19), ("patched/s000", 23)):
        x32 = torch.randn(rows, 4, 32, generator=g) * 3
        write_tensors({"states": x32.half(), "n_positions": torch.randint(0, 4, (rows,), generator=g).int(),
                       "sample32": x32[:2]}, tmp_path / f"{name.replace('/', '_')}.safetensors")
        parts.append((name, str(tmp_path / f"{name.replace('/', '_')}.safetensors")))
    for chunk in (24, 8192):  # several padded chunks per part, and one
        want = _one_job_per_layer(sae, parts, 1, chunk)
        partials, frames = [], []
        for part, path in parts:
            codes, q = encode_part(sae, part, path, chunk)
            frames.append(codes)
            assert (q is None) == part.startswith("patched")
            if q is not None:
                save_partial(q, tmp_path / "q.safetensors")  # through the file, as the workflow does
                partials.append(load_partial(tmp_path / "q.safetensors"))
        got = merge_quality(1, partials)
        assert got == want and got.positions > 0 and 0 < got.fvu and got.fp16_positions == 3 * 8
        # and the one-process wrapper gives the same codes and quality
        codes, q = encode_parts(sae, parts, 1, chunk=chunk)
        assert q == want
        pd.testing.assert_frame_equal(
            codes.astype({"part": str}), pd.concat(frames, ignore_index=True).astype({"part": str}))


def test_merge_ors_the_active_masks(tmp_path):
    """A feature active in one part only is alive in the layer: dead fraction from the OR."""
    from pathreplay.sae.encode import encode_part, merge_quality

    sae = identity_sae(2, path=tmp_path)
    for name, st in (("a", [[[1.0, 0.0]]]), ("b", [[[0.0, 1.0]]])):
        write_tensors({"states": torch.tensor(st).half(), "n_positions": torch.tensor([0], dtype=torch.int32)},
                      tmp_path / f"{name}.safetensors")
    qa = encode_part(sae, "baseline/a", tmp_path / "a.safetensors")[1]
    qb = encode_part(sae, "baseline/b", tmp_path / "b.safetensors")[1]
    assert merge_quality(0, [qa]).dead_fraction == 0.5 and merge_quality(0, [qa, qb]).dead_fraction == 0.0
    assert merge_quality(0, [qa, qb]).positions == 2


def test_codes_of_one_part_read_back_per_feature(tmp_path):
    """A part's codes file names its part; effects read it through one filter: the parts asked
    for, and of the shard only the feature's own rows. A file without the column is its path's part."""
    from pathreplay.effects.codes import read_codes
    from pathreplay.io import write_table
    from pathreplay.sae.encode import encode_part

    sae = identity_sae(2, path=tmp_path)
    states = torch.tensor([[[1, 2], [0, 0]], [[3, 0], [0, 0]], [[0, 4], [0, 0]]], dtype=torch.float16)
    write_tensors({"states": states, "n_positions": torch.zeros(3, dtype=torch.int32)}, tmp_path / "x.safetensors")
    files = []
    for part in ("baseline/p", "patched/s000", "patched/s001"):
        codes, _ = encode_part(sae, part, tmp_path / "x.safetensors")
        files.append(tmp_path / "results/encode" / part / "L1.parquet")
        write_table(codes if part != "patched/s001" else codes.drop(columns="part"), files[-1])
    got = read_codes(files, ["baseline/p", "patched/s000", "patched/s001"], rows={"patched/s000": [1, 2]})
    assert list(got) == [1]
    keys = list(zip(got[1]["part"].astype(str), got[1]["row"], got[1]["feature"]))
    assert keys == [("baseline/p", 0, 0), ("baseline/p", 0, 1), ("baseline/p", 1, 0), ("baseline/p", 2, 1),
                    ("patched/s000", 1, 0), ("patched/s000", 2, 1),
                    ("patched/s001", 0, 0), ("patched/s001", 0, 1), ("patched/s001", 1, 0), ("patched/s001", 2, 1)]
    assert read_codes(files[:1], ["patched/s000"])[1].empty
