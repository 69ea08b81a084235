"""Effects of one source feature: trials paired by seed, the codes a feature reads, the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pathreplay.effects.codes import code_layer, read_codes
from pathreplay.effects.contrasts import pairs_of
from pathreplay.effects.layers import COLUMNS, feature_effects, layer_effects
from pathreplay.effects.write import write_effects
from pathreplay.errors import UserError


def _trials(prompt_ids, trials, part, rows=None, condition="baseline"):
    return pd.DataFrame({"prompt_id": prompt_ids, "trial": trials, "part": part, "condition": condition,
                         "row": rows if rows is not None else list(range(len(prompt_ids))), "n_positions": 1})


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
    assert code_layer("results/encode/patched/s000/L12.parquet") == 12
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


def _case(forced_shift=1.0, sham_shift=0.0, upstream_forced=0.0):
    """Source L1-3 on prompts a, b (2 trials each): each patched trial's target code (L2-7) is its
    own seed's baseline value + 1, sampled and forced alike, so the paired delta is exactly 1
    only if trials are paired on (prompt, trial), not on row order."""
    base = pd.concat([_trials(["a", "a", "b", "b"], [0, 1, 0, 1], "baseline/x", rows=[0, 1, 2, 3]),
                      _trials(["a", "a", "b", "b"], [0, 1, 0, 1], "baseline/x", rows=[4, 5, 6, 7],
                              condition="placebo")], ignore_index=True)
    frames = []
    for k, (cond, run) in enumerate([("up", "generated"), ("up", "forced"), ("sham", "generated"), ("sham", "forced")]):
        frames.append(_trials(["b", "b", "a", "a"], [1, 0, 1, 0], "patched/s000", rows=[4 * k + i for i in range(4)],
                              condition=cond).assign(run=run))
    patched = pd.concat(frames, ignore_index=True).assign(layer=1, feature_id=3)
    gen_base = {("a", 0): 1.0, ("a", 1): 4.0, ("b", 0): 2.0, ("b", 1): 8.0}
    shift = {("up", "generated"): 1.0, ("up", "forced"): forced_shift, ("sham", "generated"): sham_shift,
             ("sham", "forced"): 0.0}
    rows = [("baseline/x", r.row, gen_base[r.prompt_id, r.trial]) for r in base.itertuples()]
    rows += [("patched/s000", r.row, gen_base[r.prompt_id, r.trial] + shift[r.condition, r.run])
             for r in patched.itertuples()]
    codes = pd.DataFrame(rows, columns=["part", "row", "gen"]).assign(feature=7, last=0.0)
    # block 0, upstream: the sampled run's tokens move it, the forced run's patch cannot
    forced = set(patched.loc[patched["run"] == "forced", "row"])
    up = codes.assign(gen=[g - (shift["up", "forced"] - upstream_forced if (p == "patched/s000" and r in forced
                                                                            and r < 8) else 0.0)
                           for p, r, g in zip(codes["part"], codes["row"], codes["gen"])])
    return patched, base, {2: codes, 0: up}


def test_feature_effects_pairs_by_seed_in_every_scope_and_control():
    patched, base, codes = _case()
    res = feature_effects(patched, base, codes, min_delta=0.05, min_prompts=2)
    e = res.effects.set_index(["condition", "scope"])
    for scope in ("generated", "forced"):
        g = e.loc[("up", scope)]
        assert (g["source_layer"], g["source_feature"], g["control"]) == (1, 3, "real")
        assert (g["target_layer"], g["target_feature"]) == (2, 7)
        assert g["delta"] == 1.0 and g["n_trials"] == 4 and g["n_nonzero"] == 4
        assert g["mean_baseline"] == pytest.approx(15 / 4)
        # four equal non-zero differences: the exact sign-flip p, 2 of 16 patterns; never 0
        assert g["test"] == "sign_flip_exact" and g["p_value"] == pytest.approx(2 / 16)
        assert g["q_within_source"] == pytest.approx(2 / 16)  # one of its family's two tests
    # `last` is 0 everywhere and 2 prompts are too few: nothing tested, never p = 0
    assert e.xs("prompt_last", level="scope")["p_value"].isna().all()
    assert (e.xs("prompt_last", level="scope")["n"] == 2).all()
    # the sham rows are there, untested: their differences are all zero (the placebo is a study of its own)
    assert e.loc[("sham", "forced"), "control"] == "sham" and pd.isna(e.loc[("sham", "forced"), "p_value"])
    assert "placebo" not in set(e["control"])
    # block 0 is upstream of the source: a negative control of its own
    assert set(res.upstream["target_layer"]) == {0} and "q_within_source" not in res.upstream


def test_a_trial_without_a_kept_position_leaves_n():
    # the patched trial ("b", 1) stopped at its first token: its mean over kept positions is no
    # number; counted as 0 it would pull the generated delta of 1 towards 0
    patched, base, codes = _case()
    stopped = (patched["prompt_id"] == "b") & (patched["trial"] == 1) & (patched["run"] == "generated")
    patched.loc[stopped, "n_positions"] = 0
    codes[2] = codes[2][~codes[2]["row"].isin(patched.loc[stopped, "row"]) | (codes[2]["part"] != "patched/s000")]
    e = feature_effects(patched, base, codes, min_delta=0.05, min_prompts=2).effects.set_index(["condition", "scope"])
    assert e.loc[("up", "generated"), "n_trials"] == 3 and e.loc[("up", "generated"), "delta"] == 1.0
    assert e.loc[("up", "forced"), "n_trials"] == 4 and e.loc[("up", "prompt_last"), "n_trials"] == 4


@pytest.mark.parametrize("case, says", [
    (dict(sham_shift=0.5), r"where: the sham patch changed 1 features at layer 2 in scope generated"),
    (dict(upstream_forced=0.25), r"where: up, teacher-forced, changed 1 features at layer 0 in scope forced"),
])
def test_what_must_be_exact_stops_the_job(case, says):
    patched, base, codes = _case(**case)
    with pytest.raises(UserError, match=says):
        feature_effects(patched, base, codes, 0.05, 2, where="where")


def _many_targets(rng, n_targets=40):
    """_case's trials with n_targets features at layers 0 (upstream), 2 and 3, random sparse codes
    (ties and zeros included) and the sham and upstream forced runs exact."""
    patched, base, _ = _case()
    rows = [("baseline/x", r) for r in base["row"]] + [("patched/s000", r) for r in patched["row"]]
    exact = {r for c, run, r in zip(patched["condition"], patched["run"], patched["row"]) if c == "sham"}
    codes = {}
    for layer in (3, 0, 2):
        base_vals = rng.choice([0.0, 0.0, 0.5, 1.0, 2.0], size=(len(base), n_targets)) * rng.random(n_targets)
        by_key = {(p, t): base_vals[i] for i, (p, t) in enumerate(zip(base["prompt_id"], base["trial"])) if i < 4}
        vals = [v for v in base_vals]
        for r in patched.itertuples():
            same = r.row in exact or (layer == 0 and r.run == "forced")
            vals.append(by_key[r.prompt_id, r.trial] if same else
                        rng.choice([0.0, 0.0, 0.5, 1.0, 3.0], n_targets) * rng.random(n_targets))
        v = np.array(vals, np.float32)
        part, row = zip(*rows)
        codes[layer] = pd.DataFrame({"part": np.repeat(part, n_targets), "row": np.repeat(row, n_targets),
                                     "feature": np.tile(np.arange(n_targets, dtype=np.int32), len(rows)),
                                     "last": v[:, ::-1].ravel(), "gen": v.ravel()})
    return patched, base, codes


def test_streamed_files_are_the_collected_tables(tmp_path):
    patched, base, codes = _many_targets(np.random.default_rng(4))
    res = feature_effects(patched, base, codes, 0.05, 2)
    assert len(res.effects) and len(res.upstream) and res.effects["p_value"].notna().any()
    got = write_effects(layer_effects(patched, base, codes, 0.05, 2), 1, 3, tmp_path / "e.parquet",
                        tmp_path / "u.parquet")
    e, u = pd.read_parquet(tmp_path / "e.parquet"), pd.read_parquet(tmp_path / "u.parquet")
    pd.testing.assert_frame_equal(e, res.effects, check_exact=True)  # dtypes, categoricals, every value to the bit
    pd.testing.assert_frame_equal(u, res.upstream, check_exact=True)
    assert list(e.columns) == COLUMNS and list(u.columns) == COLUMNS[:-1]
    assert got["effects_rows"] == len(e) and got["upstream_rows"] == len(u)
    assert got["tests"] == int(e["p_value"].notna().sum())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_streamed_files_of_a_source_without_rows(tmp_path):
    patched, base, codes = _case()
    none = {2: codes[2].iloc[:0]}
    res = feature_effects(patched, base, none, 0.05, 2)
    write_effects(layer_effects(patched, base, none, 0.05, 2), 1, 3, tmp_path / "e.parquet", tmp_path / "u.parquet")
    assert len(res.effects) == 0 and list(res.effects.columns) == COLUMNS
    assert list(pd.read_parquet(tmp_path / "e.parquet").columns) == COLUMNS
    assert list(pd.read_parquet(tmp_path / "u.parquet").columns) == COLUMNS[:-1]
