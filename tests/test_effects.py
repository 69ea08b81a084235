"""Effects of one source feature: trials paired by seed, the codes a feature reads, the tests."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pathreplay.effects import code_layer, feature_effects, pairs_of, read_codes


def _trials(prompt_ids, trials, part, rows=None, condition="baseline"):
    return pd.DataFrame({"prompt_id": prompt_ids, "trial": trials, "part": part, "condition": condition,
                         "row": rows if rows is not None else list(range(len(prompt_ids)))})


def test_pairs_of_matches_prompt_and_trial_and_drops_unmatched():
    treated = _trials(["a", "a", "b", "c"], [0, 1, 0, 0], "patched/s000", rows=[10, 11, 12, 13])
    # control rows in another order; ("a", 1) and ("c", 0) have no partner, ("b", 1) none either
    control = _trials(["b", "a", "b"], [0, 0, 1], "baseline/b", rows=[5, 6, 7])
    p = pairs_of(treated, control, "up")
    assert p.condition == "up"
    got = sorted(zip(p.prompt.tolist(), p.treated, p.control))
    assert got == [("a", ("patched/s000", 10), ("baseline/b", 6)),
                   ("b", ("patched/s000", 12), ("baseline/b", 5))]


def test_layer_from_codes_path():
    assert code_layer("results/encode/L12.parquet") == 12
    assert code_layer(Path("/a/Lx/results/encode/L3.parquet")) == 3
    assert code_layer("L7.parquet") == 7  # no folder in front


def test_read_codes_keeps_only_the_given_parts_per_layer(tmp_path):
    rows = pd.DataFrame({"part": ["patched/s000", "baseline/a", "patched/s001"], "row": [0, 1, 2],
                         "feature": [4, 5, 6], "last": [1.0, 2.0, 3.0], "gen": [0.5, 0.5, 0.5]})
    for layer in (2, 1):
        rows.assign(feature=rows["feature"] + layer).to_parquet(tmp_path / f"L{layer}.parquet", index=False)
    codes = read_codes([tmp_path / "L2.parquet", tmp_path / "L1.parquet"], ["baseline/a", "patched/s000"])
    assert list(codes) == [2, 1]  # file order
    assert codes[2]["part"].tolist() == ["patched/s000", "baseline/a"]
    assert codes[1]["feature"].tolist() == [5, 6]


def test_feature_effects_pairs_by_seed_and_runs_placebo():
    """Each patched trial's target code is its own seed's baseline value + 1: the paired delta is
    exactly 1 only if trials are paired on (prompt, trial), not on row order."""
    base = pd.concat([_trials(["a", "a", "b", "b"], [0, 1, 0, 1], "baseline/x", rows=[0, 1, 2, 3]),
                      _trials(["a", "a", "b", "b"], [0, 1, 0, 1], "baseline/x", rows=[4, 5, 6, 7],
                              condition="placebo")], ignore_index=True)
    patched = _trials(["b", "b", "a", "a"], [1, 0, 1, 0], "patched/s000", condition="up").assign(
        layer=0, feature_id=3)
    gen_base = {("a", 0): 1.0, ("a", 1): 4.0, ("b", 0): 2.0, ("b", 1): 8.0}
    code_rows = [("baseline/x", r.row, gen_base[r.prompt_id, r.trial]) for r in base.itertuples()]
    code_rows += [("patched/s000", r.row, gen_base[r.prompt_id, r.trial] + 1) for r in patched.itertuples()]
    codes = pd.DataFrame(code_rows, columns=["part", "row", "gen"]).assign(feature=7, last=0.0)
    res = feature_effects(patched, base, {2: codes}, min_delta=0.05, min_prompts=2)
    gen = res.effects[res.effects["scope"] == "generated"]
    assert len(gen) == 1
    g = gen.iloc[0]
    assert (g["source_layer"], g["source_feature"], g["condition"]) == (0, 3, "up")
    assert (g["target_layer"], g["target_feature"]) == (2, 7)
    assert g["delta"] == 1.0 and g["p_value"] == 0.0 and g["n_trials"] == 4
    assert g["mean_baseline"] == pytest.approx(15 / 4)
    # `last` is 0 everywhere: no difference, nothing tested; placebo codes equal baseline's
    assert (res.effects["scope"] == "generated").all() and res.placebo.empty
    assert list(res.placebo.columns) == list(res.effects.columns)
