"""A chain planted by construction, end to end through the library: replay with its controls,
encode, effects, run-wide edges, chains and mediation. A -> B -> C: B reads A's decoder row and
writes it on, C reads B's; B is a source too. Also the pieces: chains and the controls' tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import replay_prompts, write_llamascope
from pathreplay.effects.layers import feature_effects
from pathreplay.pathways.checks import null_summary, upstream_summary
from pathreplay.pathways.edges import chains, edges, patch_signs, run_wide
from pathreplay.pathways.mediation import Slice, mediate
from pathreplay.replay.coupled import run_baseline, run_features
from pathreplay.replay.plan import Condition, patched_jobs
from pathreplay.replay.trials import ReplaySettings, write_result
from pathreplay.sae.encode import encode_parts
from pathreplay.sae.exact import SAESource

PROMPTS = replay_prompts()
A, B, C, X = 5, 9, 4, 7  # A and X at block 0, B at block 1, C at block 2; X writes off A's line


@pytest.fixture(scope="module")
def planted(tiny_lm, tmp_path_factory):
    model, _ = tiny_lm
    d = model.config.hidden_size
    g = torch.Generator().manual_seed(3)
    root = tmp_path_factory.mktemp("planted")
    v = torch.randn(d, generator=g)
    w = torch.randn(d, generator=g)
    w -= (w @ v) / (v @ v) * v  # X's line, orthogonal to the chain's
    for block, writes, reads in ((0, {A: v, X: w}, {A: v, X: w}), (1, {B: v}, {B: v}), (2, {}, {C: v})):
        E, D = torch.randn(16, d, generator=g) / d, torch.randn(d, 16, generator=g) / d
        bias = torch.zeros(16)
        for i, r in reads.items():
            E[i] = r / r.norm() ** 2  # reads its line at unit gain
            bias[i] = 5.0 * math.sqrt(d) / math.sqrt(d)  # active throughout, so changes show
        for i, wr in writes.items():
            D[:, i] = wr
        write_llamascope(root / f"L{block}R", E, bias, D, torch.zeros(d), block=block, threshold=0.0,
                         avg_norm=math.sqrt(d))
    return SAESource(str(root / "L{layer}R"), "llamascope")


@pytest.fixture(scope="module")
def traced(tiny_lm, planted, tmp_path_factory):
    """The replay of A, B and X, encoded, tested and mediated."""
    model, tok = tiny_lm
    tmp = tmp_path_factory.mktemp("traced")
    s = ReplaySettings(max_new_tokens=5, temperature=0.7, batch_size=8, capture_layers=(0, 1, 2))
    files = {b: [] for b in (0, 1, 2)}
    baseline = []
    for q in PROMPTS:
        res = run_baseline(model, tok, q, 8, 11, s, placebo=True)
        paths = [str(tmp / f"b_{q.id}_L{b}.safetensors") for b in (0, 1, 2)]
        write_result(res, (0, 1, 2), paths, str(tmp / "t.parquet"))
        baseline.append(res.trials.assign(part=f"baseline/{q.id}"))
        for b in (0, 1, 2):
            files[b].append((f"baseline/{q.id}", str(tmp / f"b_{q.id}_L{b}.safetensors")))
    baseline = pd.concat(baseline, ignore_index=True)
    selected = pd.DataFrame({"feature": ["L0-5", "L1-9", "L0-7"], "layer": [0, 1, 0], "feature_id": [A, B, X],
                             "risky_value": [6.0, 6.0, 6.0]}).set_index("feature")
    plan = pd.DataFrame({"feature": [f for f in selected.index for _ in PROMPTS],
                         "prompt_id": [q.id for _ in selected.index for q in PROMPTS]})
    feats = {n: (int(r.layer), planted.feature(int(r.layer), int(r.feature_id))) for n, r in selected.iterrows()}
    conds = [Condition("up", "risky_value", 1.0)]
    patched = run_features(model, tok, selected, plan, {q.id: q for q in PROMPTS}, feats, conds, 8, 11, s, baseline)
    write_result(patched, (0, 1, 2), [str(tmp / f"p_L{b}.safetensors") for b in (0, 1, 2)], str(tmp / "t.parquet"))
    for b in (0, 1, 2):
        files[b].append(("patched/s000", str(tmp / f"p_L{b}.safetensors")))
    codes = {b: encode_parts(planted.load(b), files[b], b)[0] for b in (0, 1, 2)}
    trials = patched.trials.assign(part="patched/s000")
    results = {n: feature_effects(trials[trials["feature"] == n], baseline, codes, 0.05, 2) for n in selected.index}
    effects = run_wide(pd.concat([r.effects for r in results.values()], ignore_index=True))
    e = edges(effects, 0.05, 0.05)
    ch = chains(e, patch_signs(trials))
    slices = {n: Slice(n, layer, planted.feature(layer, fid)) for n, layer, fid in
              (("L0-5", 0, A), ("L1-9", 1, B), ("L2-4", 2, C), ("L0-7", 0, X))}
    todo = ch[(ch["scope"] == "forced") & (ch["c"] == "L2-4")]
    jobs = {(a, "up"): patched_jobs(PROMPTS, selected.loc[a], conds, 8, 11) for a in set(todo["a"])}
    paths = mediate(model, tok, todo, slices, jobs, baseline[baseline["condition"] == "baseline"], s, 0.05, 0.05)
    return {"effects": effects, "edges": e, "chains": ch, "paths": paths, "results": results, "trials": trials}


def test_planted_chain_is_mediated_by_its_middle(traced):
    paths = traced["paths"].set_index("path")
    chain = paths.loc["L0-5 -> L1-9 -> L2-4"]
    assert bool(chain["mediated"]) and chain["indirect_share"] >= 0.8, chain
    assert chain["share_lo"] > 0.5 and abs(chain["total"]) > 0.05 and chain["n_trials"] == 24
    e = traced["edges"]
    top = e[(e["source_feature"] == A) & (e["scope"] == "forced")].iloc[0]
    assert (top["target_layer"], top["target_feature"]) in {(1, B), (2, C)}
    # the forced and generated deltas of an edge stand side by side
    assert {"delta_forced", "delta_generated", "nonspecific"} <= set(e.columns)


def test_the_control_feature_has_no_chain(traced):
    ch = traced["chains"]
    assert not ch.empty and not (ch["a"] == "L0-7").any() and not (ch["b"] == "L0-7").any()


def test_upstream_forced_effects_are_exactly_zero_and_the_sham_changes_nothing(traced):
    up = traced["results"]["L1-9"].upstream  # B at block 1: block 0 is upstream
    assert len(up) and (up["target_layer"] == 0).all()
    forced = up[up["scope"] == "forced"]
    assert len(forced) and (forced["delta"] == 0).all() and (forced["n_nonzero"] == 0).all()
    gen = up[(up["scope"] == "generated") & (up["control"] == "real")]
    assert (gen["n_nonzero"] > 0).any()  # tokens the patch changed move block 0 in the sampled runs
    eff = traced["effects"]
    sham = eff[eff["control"] == "sham"]
    assert len(sham) and (sham["delta"] == 0).all() and sham["p_value"].isna().all()
    summary = upstream_summary(pd.concat([r.upstream for r in traced["results"].values()]))
    assert (summary.loc[summary["scope"] == "forced", "differing"] == 0).all()


def test_the_controls_through_the_same_tests(traced):
    eff = traced["effects"]
    assert set(eff["control"]) == {"real", "sham", "random", "placebo"}
    n = null_summary(eff, 0.05, 0.05)
    plac = n[n["contrast"] == "placebo"]
    assert len(plac) and (plac["discoveries"] == 0).all()
    # with one prompt-level difference per prompt, 3 prompts give an exact sign-flip p of 0.25 at best
    pl = eff[(eff["scope"] == "prompt_last") & eff["p_value"].notna()]
    assert (pl["p_value"] >= 0.25).all() and (pl["n"] == 3).all()
    assert (eff["p_value"].dropna() > 0).all()


def test_chains_need_one_scope_one_condition_and_agreeing_signs():
    e = pd.DataFrame({"source_layer": [0, 1, 1, 0], "source_feature": [1, 2, 2, 1], "condition": ["c", "c", "d", "c"],
                      "scope": ["forced", "forced", "forced", "generated"], "target_layer": [1, 2, 2, 1],
                      "target_feature": [2, 3, 4, 2], "delta": [0.5, -0.3, 0.2, 0.4],
                      "q_value": [0.01, 0.02, 0.01, 0.03]})
    signs = {("L1-2", "c"): 1.0, ("L1-2", "d"): 1.0}
    c = chains(e, signs)
    assert c["path"].tolist() == ["L0-1 -> L1-2 -> L2-3"] and c["scope"].tolist() == ["forced"]
    assert (c["delta_ab"].iloc[0], c["delta_bc"].iloc[0]) == (0.5, -0.3)
    # A lowering B while B's own patch raised it: B's edge says nothing about A's effect through it
    assert chains(e.assign(delta=[-0.5, -0.3, 0.2, 0.4]), signs).empty


def test_patch_signs_from_the_trials():
    t = pd.DataFrame({"run": "generated", "feature": ["L1-2"] * 3 + ["L0-1"], "condition": ["c", "c", "sham", "c"],
                      "value": [2.0, 2.0, np.nan, 0.0], "value_before_last": [1.0, 1.5, 0.3, 0.4]})
    assert patch_signs(t) == {("L1-2", "c"): 1.0, ("L0-1", "c"): -1.0}


def test_rows_left_out_for_inactive_targets_keep_the_summaries():
    # effects writes no row for a contrast's target inactive in all its trials: the upstream
    # table still counts the layer's targets, and an edge's missing side row reads delta 0
    up = pd.DataFrame({"source_layer": 2, "source_feature": 1, "condition": ["c", "c", "c"],
                       "control": "real", "scope": ["forced", "forced", "generated"], "target_layer": 0,
                       "target_feature": [4, 5, 6], "n_nonzero": [0, 0, 3], "delta": [0.0, 0.0, 0.5],
                       "p_value": [np.nan, np.nan, 0.01]})
    s = upstream_summary(up).set_index("scope")
    assert s.loc["forced", "features"] == 3 and s.loc["forced", "differing"] == 0
    eff = pd.DataFrame({"source_layer": 0, "source_feature": 1, "condition": "c", "control": "real",
                        "scope": ["generated", "forced", "forced"], "target_layer": 1, "target_feature": [2, 3, 3],
                        "p_value": [1e-6, 0.5, 0.4], "delta": [0.5, 0.1, 0.2]})
    for col in ("mean_baseline", "mean_patched", "effect_size", "test", "n", "n_nonzero", "n_trials", "n_prompts",
                "prompts_replicated", "prompts_opposite", "robust", "q_within_source"):
        eff[col] = 0
    eff.loc[2, "target_feature"], eff.loc[2, "scope"] = 3, "generated"
    e = edges(run_wide(eff), 0.05, 0.05)
    assert len(e) == 1 and e["delta_forced"].iloc[0] == 0.0 and np.isnan(e["q_forced"].iloc[0])


# streaming (runwide) against the in-memory functions on files, to the bit

def _synthetic_source(rng, layer, fid, conds, n_layers=4, n_feats=60, drop=0.15):
    """One source's effects and upstream tables shaped as effects writes them: per target layer,
    per contrast, the targets active in its trials (some left out), categorical labels."""
    from pathreplay.effects.contrasts import CONTROLS, SCOPES
    from pathreplay.effects.layers import COLUMNS, within_source
    from pathreplay.stats.signflip import TESTS

    contrasts = ([(c, "real", s) for c in conds for s in SCOPES] + [("sham", "sham", s) for s in SCOPES]
                 + [(f"random:{c}", "random", s) for c in conds for s in SCOPES]
                 + [("placebo", "placebo", s) for s in ("prompt_last", "generated")])
    planted = rng.choice(n_feats, 6, replace=False)
    frames = []
    for tl in range(n_layers):
        if tl == layer:
            continue
        for cond, ctl, scope in contrasts:
            tf = np.flatnonzero(rng.random(n_feats) > drop)
            n = len(tf)
            p = np.where(rng.random(n) < 0.4, np.ceil(rng.random(n) * 64) / 64, rng.random(n))  # ties
            p[rng.random(n) < 0.2] = np.nan
            delta = rng.normal(0, 0.1, n)
            hit = np.isin(tf, planted) & (ctl in ("real", "random")) & (rng.random(n) < 0.8)
            p[hit] = rng.choice([1e-7, 2e-7, 1 / 4096, 3e-3], hit.sum())
            delta[hit] = rng.choice([-0.6, 0.4, 0.01], hit.sum())
            if ctl == "sham":
                p[:], delta[:] = np.nan, 0.0
            frames.append(pd.DataFrame({
                "condition": cond, "control": ctl, "scope": scope, "target_layer": tl, "target_feature": tf.astype(np.int32),
                "mean_baseline": rng.random(n), "mean_patched": rng.random(n), "delta": delta,
                "effect_size": rng.normal(size=n), "p_value": p,
                "test": pd.Categorical.from_codes(rng.integers(0, 4, n), categories=TESTS), "n": 4, "n_nonzero": rng.integers(0, 5, n),
                "n_trials": 8, "n_prompts": 4, "prompts_replicated": rng.integers(0, 4, n), "prompts_opposite": 0,
                "robust": rng.random(n) < 0.5}))
    out = pd.concat(frames, ignore_index=True)
    labels = {"condition": sorted({c for c, _, _ in contrasts}), "control": list(CONTROLS), "scope": list(SCOPES)}
    for k, cats in labels.items():
        out[k] = pd.Categorical(out[k], categories=cats)
    out.insert(0, "source_feature", fid)
    out.insert(0, "source_layer", layer)
    up = (out["target_layer"] < layer).to_numpy()
    return within_source(out[~up].reset_index(drop=True)), out[up].reset_index(drop=True)[COLUMNS[:-1]]


def _in_memory(eff_paths, up_paths, alpha, min_delta):
    """What workflow/scripts/pathways.py computed before it streamed."""
    from pathreplay.effects.layers import COLUMNS
    from pathreplay.io import read_tables

    effects = run_wide(read_tables(eff_paths, pd.DataFrame(columns=COLUMNS)))
    return (edges(effects, alpha, min_delta), null_summary(effects, alpha, min_delta),
            upstream_summary(read_tables(up_paths, pd.DataFrame(columns=COLUMNS[:-1]))))


def _write_sources(tmp_path, seed, same_conditions, row_group_size=None, shuffle=False):
    rng = np.random.default_rng(seed)
    eff, ups = [], []
    for i, (layer, fid) in enumerate([(2, 7), (1, 3), (2, 1), (3, 9)]):
        conds = ["up", "down"] if same_conditions or i % 2 else ["up"]
        e, u = _synthetic_source(rng, layer, fid, conds)
        if shuffle:  # rows in no order: a group is no longer a few runs
            e, u = (t.iloc[rng.permutation(len(t))].reset_index(drop=True) for t in (e, u))
        for t, suffix, paths in ((e, ".parquet", eff), (u, ".upstream.parquet", ups)):
            path = tmp_path / f"L{layer}-{fid}{suffix}"
            t.to_parquet(path, index=False, row_group_size=row_group_size)
            paths.append(str(path))
    empty = tmp_path / "L0-0.parquet"
    pd.read_parquet(eff[0]).iloc[:0].to_parquet(empty, index=False)
    return eff[:2] + [str(empty)] + eff[2:], ups


@pytest.mark.parametrize("seed,same,rg,shuffle", [(0, True, None, False), (1, False, None, False),
                                                (2, True, 101, False), (3, False, 37, False), (4, True, 53, True)])
def test_streaming_equals_in_memory(tmp_path, monkeypatch, seed, same, rg, shuffle):
    from pathreplay.pathways import runwide
    from pathreplay.pathways.runwide import run_tables

    monkeypatch.setattr(runwide, "MANY_RUNS", 0 if shuffle else runwide.MANY_RUNS)
    eff, ups = _write_sources(tmp_path, seed, same, rg, shuffle)
    for alpha, min_delta in ((0.05, 0.05), (0.2, 0.0)):
        e, null, up = _in_memory(eff, ups, alpha, min_delta)
        run = run_tables(eff, ups, alpha, min_delta, workers=1 + seed % 2)  # 2: forked processes
        assert len(e) > 3 and e["nonspecific"].any() and e["delta_forced"].eq(0).any()  # the paths are exercised
        pd.testing.assert_frame_equal(run.edges, e, check_exact=True)
        pd.testing.assert_frame_equal(run.null, null, check_exact=True)
        pd.testing.assert_frame_equal(run.upstream, up, check_exact=True)
        pd.testing.assert_frame_equal(chains(run.edges, {}), chains(e, {}), check_exact=True)
        assert run.real_tests == int(run_wide(pd.concat(map(pd.read_parquet, eff)))
                                     .query("control == 'real'")["p_value"].notna().sum())


def test_streaming_of_the_traced_run_and_of_nothing(traced, tmp_path):
    from pathreplay.pathways.runwide import run_tables

    eff, ups = [], []
    for name, r in traced["results"].items():
        for t, suffix, paths in ((r.effects, ".parquet", eff), (r.upstream, ".upstream.parquet", ups)):
            t.to_parquet(tmp_path / f"{name}{suffix}", index=False)
            paths.append(str(tmp_path / f"{name}{suffix}"))
    for files in ((eff, ups), (eff[:0], ups[:0])):
        e, null, up = _in_memory(*files, 0.05, 0.05)
        run = run_tables(*files, 0.05, 0.05)
        pd.testing.assert_frame_equal(run.edges, e, check_exact=True)
        pd.testing.assert_frame_equal(run.null, null, check_exact=True)
        pd.testing.assert_frame_equal(run.upstream, up, check_exact=True)
    assert len(run_tables(eff, ups, 0.05, 0.05).edges)


@pytest.mark.parametrize("chunk", [7, 1 << 22])
def test_run_wide_q_by_lookup_is_bh_to_the_bit(monkeypatch, chunk):
    from pathreplay.pathways import runwide
    from pathreplay.pathways.runwide import bh_sorted
    from pathreplay.stats.multiple import bh, bh_with_controls

    monkeypatch.setattr(runwide, "CHUNK", chunk)  # blocks of the products and the suffix minimum
    rng = np.random.default_rng(5)
    for n in (1, 7, 1000, 50_000):
        p = np.where(rng.random(n) < 0.5, np.ceil(rng.random(n) * 200) / 200, rng.random(n) ** 3)
        p[rng.random(n) < 0.1] = np.nan
        kind = rng.choice(["real", "sham", "random", "placebo"], n, p=[0.5, 0.1, 0.3, 0.1])
        ref = bh_with_controls(p, kind, kind == "real")
        m_real = int((~np.isnan(p[kind == "real"])).sum())
        for k in ("real", "sham", "random", "placebo"):
            sel = (kind == k) & ~np.isnan(p)
            s = np.sort(p[sel])
            q = bh_sorted(s, m_real if k == "real" else max(m_real, len(s)))
            got = q[np.searchsorted(s, p[sel], side="right") - 1] if len(s) else np.zeros(0)
            np.testing.assert_array_equal(got, ref[sel])  # bit-equal (NaN-free)
        s = np.sort(p[~np.isnan(p)])
        assert np.array_equal(bh_sorted(s, len(s) + 17), bh(s, m=len(s) + 17))


def test_a_source_in_two_files_is_an_error(tmp_path):
    from pathreplay.pathways.runwide import run_tables

    eff, ups = _write_sources(tmp_path, 0, True)
    with pytest.raises(ValueError, match="more than one effects file"):
        run_tables(eff + eff[:1], ups, 0.05, 0.05)
