"""The read-through of a patch's own step, against values computed by hand on an identity SAE,
and the check at the patched layer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import identity_sae
from pathreplay.errors import UserError
from pathreplay.io import write_tensors
from pathreplay.sae.encode import encode_part
from pathreplay.sae.passthrough import check_patched_layer, partners, passthrough_codes, trial_groups


def _states(path, states, n_positions):
    write_tensors({"states": states.half(), "n_positions": torch.tensor(n_positions, dtype=torch.int32),
                   "sample32": states[:1].float()}, path)
    return str(path)


def _pair(step, n_patched=2):
    patched = pd.DataFrame({"feature": ["L0-0"], "condition": ["c"], "prompt_id": ["p"], "trial": [0], "row": [0],
                            "n_positions": [n_patched], "step": [step], "run": ["forced"], "layer": [0]})
    baseline = pd.DataFrame({"condition": ["baseline"], "prompt_id": ["p"], "trial": [0], "part": ["baseline/p"],
                             "row": [0], "n_positions": [2]})
    return patched, baseline


def test_the_read_through_by_hand(tmp_path):
    sae = identity_sae(3, threshold=0.5)  # feature i reads coordinate i, fires above 0.5
    base = torch.tensor([[[1.0, 0.0, 2.0], [0.25, 0.0, 0.0], [1.0, 1.0, 0.0]]])  # last, then 2 generated
    files = {"baseline/p": _states(tmp_path / "b.safetensors", base, [2])}
    v = torch.tensor([0.0, 1.0, -1.0])
    for n_patched, gen1 in ((2, (0.0 + 1.5) / 2), (1, 0.0)):  # the patched run keeps 2 (or 1) generated positions
        patched, baseline = _pair([1.0, 0.5, 1.5], n_patched)
        p = partners(patched, baseline, {("L0-0", "c"): v}, width=3)
        codes = passthrough_codes(sae, "patched/s000", p, files).set_index("feature")
        # position 0: h + 1.0 v = (1, 1, 1): f 1 -> 1 (0), 0 -> 1 (+1), 2 -> 1 (-1)
        # position 1: h + 0.5 v = (0.25, 0.5, -0.5): nothing fires either way (0)
        # position 2: h + 1.5 v = (1, 2.5, -1.5): feature 1: 1 -> 2.5 (+1.5); feature 2: 0 -> 0
        assert codes.loc[1, "last"] == 1.0 and codes.loc[2, "last"] == -1.0 and 0 not in codes.index
        assert codes.loc[1, "gen"] == pytest.approx(gen1) and codes.loc[2, "gen"] == 0.0
        assert (codes["row"] == 0).all() and set(codes["part"]) == {"patched/s000"}


def test_a_step_of_zero_reads_exactly_zero(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 3, 8, generator=g)
    files = {"baseline/p": _states(tmp_path / "b.safetensors", base, [2])}
    patched, baseline = _pair([0.0, 0.0, 0.0])
    p = partners(patched, baseline, {("L0-0", "c"): torch.randn(8, generator=g)}, width=3)
    assert passthrough_codes(identity_sae(8), "patched/s000", p, files).empty


def test_the_patched_layer_is_its_baseline_plus_the_step(tmp_path):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(1, 3, 8, generator=g)
    files = {"baseline/p": _states(tmp_path / "b.safetensors", base, [2])}
    v = torch.randn(8, generator=g)
    patched, baseline = _pair([2.0, 1.0, -1.0])
    p = partners(patched, baseline, {("L0-0", "c"): v}, width=3)
    steps = torch.tensor([2.0, 1.0, -1.0])[None, :, None]
    acted = (base.half().float() + steps * v).half()  # the patched run's states, stored in fp16
    assert check_patched_layer(acted, p, files, "float32", "here") < 2.0**-9
    with pytest.raises(UserError, match="here: a teacher-forced patched state is not its baseline plus"):
        check_patched_layer(base.half(), p, files, "float32", "here")  # the patch did not act


def test_patched_quality_per_group(tmp_path):
    sae = identity_sae(4)  # reconstructs every state with positive coordinates exactly
    good = torch.rand(2, 3, 4) + 0.1
    bad = -torch.rand(2, 3, 4) - 0.1  # nothing fires: the reconstruction is 0
    path = _states(tmp_path / "p.safetensors", torch.cat([good, bad]), [2, 2, 2, 2])
    trials = pd.DataFrame({"row": [0, 1, 2, 3], "feature": "L0-0", "condition": ["a", "a", "b", "b"], "run": "forced"})
    gid, keys = trial_groups(trials)
    _, q = encode_part(sae, "patched/s000", path, groups=gid)
    q = keys.join(q.set_index("group")).set_index("condition")
    assert q.loc["a", "fvu"] == pytest.approx(0.0, abs=1e-6) and q.loc["a", "l0"] == 4 and q.loc["a", "positions"] == 6
    assert q.loc["b", "fvu"] > 1 and q.loc["b", "l0"] == 0
    assert np.isfinite(q["fvu"]).all()
