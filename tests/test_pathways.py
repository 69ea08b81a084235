"""A chain computed by a planted model, end to end through the library: replay with its controls,
encode (the read-through of every patch included), effects, run-wide edges, chains and
mediation. Block 1 computes B from A, block 2 C from B; P2 and P3 read A's own direction, which
no block writes: their edges are the patch read back (passthrough), A -> B and A -> C are
computed. X, a source off the chain, has none. Also the pieces: chains and the controls' tables."""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import PLANTED, replay_prompts
from pathreplay.effects.layers import feature_effects
from pathreplay.effects.placebo import CALIBRATION, placebo_study, split_minima
from pathreplay.errors import UserError
from pathreplay.features import feature_name
from pathreplay.pathways.checks import null_summary, placebo_summary, upstream_summary
from pathreplay.pathways.edges import chains, edges, headline, patch_signs, run_wide
from pathreplay.pathways.mediation import Slice, mediate
from pathreplay.replay.coupled import patch_vectors, run_baseline, run_features
from pathreplay.replay.plan import Condition, patched_jobs
from pathreplay.replay.trials import ReplaySettings, write_result
from pathreplay.sae.encode import encode_parts
from pathreplay.sae.passthrough import shard_layer
from pathreplay.stats.multiple import bh

PROMPTS = replay_prompts()
LAYERS = (0, 1, 2, 3)
NAMES = {k: feature_name(*v) for k, v in PLANTED.items()}  # A: L0-5, B: L1-9, C: L2-4, X: L0-7, P2, P3
SEED = 11


def _selected(names):
    return pd.DataFrame({"feature": [NAMES[n] for n in names], "layer": [PLANTED[n][0] for n in names],
                         "feature_id": [PLANTED[n][1] for n in names],
                         "risky_value": 8.0}).set_index("feature")


def replay_and_encode(planted, tmp, names, s, placebo=True):
    """Baselines (with their placebo re-split unless not `placebo`) and the patched shard of
    `names` replayed, written and encoded: (trials, baseline, codes, read-through codes, selected)."""
    model, tok, saes = planted.model, planted.tok, planted.saes
    files = {b: [] for b in LAYERS}
    baseline = []
    for q in PROMPTS:
        res = run_baseline(model, tok, q, 8, SEED, s, placebo=placebo)
        paths = [str(tmp / "baseline" / q.id / f"L{b}.safetensors") for b in LAYERS]
        write_result(res, LAYERS, paths, str(tmp / "baseline" / q.id / "trials.parquet"))
        baseline.append(res.trials.assign(part=f"baseline/{q.id}"))
        for b, path in zip(LAYERS, paths):
            files[b].append((f"baseline/{q.id}", path))
    baseline = pd.concat(baseline, ignore_index=True)
    selected = _selected(names)
    plan = pd.DataFrame({"feature": [f for f in selected.index for _ in PROMPTS],
                         "prompt_id": [q.id for _ in selected.index for q in PROMPTS]})
    feats = {n: (int(r.layer), saes.feature(int(r.layer), int(r.feature_id))) for n, r in selected.iterrows()}
    conds = [Condition("up", "risky_value", 1.0)]
    patched = run_features(model, tok, selected, plan, {q.id: q for q in PROMPTS}, feats, conds, 8, SEED, s,
                           baseline)
    shard = [str(tmp / "patched" / "s000" / f"L{b}.safetensors") for b in LAYERS]
    write_result(patched, LAYERS, shard, str(tmp / "patched" / "s000" / "trials.parquet"))
    trials = patched.trials.assign(part="patched/s000")
    vectors = patch_vectors(trials, feats, s.mode, SEED)
    codes, through = {}, {}
    for b in LAYERS:
        sae = saes.load(b)
        codes[b] = encode_parts(sae, files[b] + [("patched/s000", shard[b])], b)[0]
        out = shard_layer(sae, b, "patched/s000", shard[b], trials, baseline, vectors,
                          {part: path for part, path in files[b]}, "float32")
        through[b] = out.passthrough
        pd.testing.assert_frame_equal(out.codes, codes[b][codes[b]["part"] == "patched/s000"].reset_index(drop=True),
                                      check_categorical=False)
    return trials, baseline, codes, through, selected


@pytest.fixture(scope="module")
def traced(planted, tmp_path_factory):
    """The replay of A, B and X, encoded, tested and mediated."""
    s = ReplaySettings(max_new_tokens=5, temperature=0.7, batch_size=8, capture_layers=LAYERS)
    trials, baseline, codes, through, selected = replay_and_encode(planted, tmp_path_factory.mktemp("traced"),
                                                                   ["A", "B", "X"], s)
    results = {n: feature_effects(trials[trials["feature"] == n], baseline, codes, 0.05, 2, passthrough=through)
               for n in selected.index}
    effects = run_wide(pd.concat([r.effects for r in results.values()], ignore_index=True))
    e = edges(effects, 0.05, 0.05)
    ch = chains(e, patch_signs(trials))
    slices = {NAMES[n]: Slice(NAMES[n], PLANTED[n][0], planted.saes.feature(*PLANTED[n])) for n in PLANTED}
    todo = ch[(ch["scope"] == "forced") & (ch["c"] == NAMES["C"]) & (ch["hops"] == 2)]
    # off the path (D: moved by A, read by nothing after) and B's twin (B2: B's rows) held alone too
    for m in ("D", "B2"):
        todo = pd.concat([todo, todo.iloc[:1].assign(mids=NAMES[m], path=f"{NAMES['A']} -> {NAMES[m]} -> {NAMES['C']}")])
    conds = [Condition("up", "risky_value", 1.0)]
    jobs = {(a, "up"): patched_jobs(PROMPTS, selected.loc[a], conds, 8, SEED) for a in set(todo["a"])}
    layer1 = [slices[NAMES[m]] for m in ("B", "B2", "D")]  # A's computed targets at L1 (planted ones)
    med = mediate(planted.model, planted.tok, todo, {(NAMES["A"], "up"): layer1}, slices, jobs,
                  baseline[baseline["condition"] == "baseline"], s, 0.05, 0.05)
    return {"effects": effects, "edges": e, "chains": ch, "paths": med.paths, "layers": med.layers,
            "results": results, "trials": trials, "baseline": baseline, "codes": codes}


def _edge(e, src, dst, scope="forced"):
    (sl, sf), (tl, tf) = PLANTED[src], PLANTED[dst]
    row = e[(e["source_layer"] == sl) & (e["source_feature"] == sf) & (e["target_layer"] == tl)
            & (e["target_feature"] == tf) & (e["scope"] == scope)]
    assert len(row) == 1, (src, dst, scope)
    return row.iloc[0]


def test_the_read_through_is_told_apart_from_the_computation(traced):
    e = traced["edges"]
    for dst in ("B", "C"):  # computed by blocks 1 and 2: nothing of A's step is read there
        r = _edge(e, "A", dst)
        assert r["kind"] == "computed" and r["delta_computed"] >= 0.9 * r["delta"] > 0, r
        assert abs(r["delta_passthrough"]) < 1e-3 * abs(r["delta"])
    for dst in ("P2", "P3"):  # A's own direction, read two and three blocks on, written by none
        r = _edge(e, "A", dst)
        assert r["kind"] == "passthrough" and abs(r["delta_computed"]) < 1e-3 * abs(r["delta"]), r
        assert r["delta_passthrough"] == pytest.approx(r["delta"], rel=1e-3) and r["delta"] > 2
    eff = traced["effects"]
    split = eff["delta_passthrough"] + eff["delta_computed"] - eff["delta"]
    assert (split.abs() <= 1e-5 * np.maximum(1, eff["delta"].abs())).all()
    assert headline(e).sum() < len(e) and not headline(e[e["kind"] == "passthrough"]).any()


def test_planted_chain_is_mediated_by_its_middle(traced):
    paths = traced["paths"].set_index("mediator")
    chain = paths.loc[NAMES["B"]]
    assert chain["path"] == f"{NAMES['A']} -> {NAMES['B']} -> {NAMES['C']}" and chain["hops"] == 2
    assert bool(chain["mediated"]) and chain["share"] >= 0.8, chain
    assert chain["share_lo"] > 0.5 and abs(chain["total"]) > 0.05 and chain["n_trials"] == 24 and chain["n_prompts"] == 3
    # the forced and generated deltas of an edge stand side by side
    assert {"delta_forced", "delta_generated", "nonspecific", "kind"} <= set(traced["edges"].columns)


def test_a_latent_off_the_path_mediates_nothing(traced):
    d = traced["paths"].set_index("mediator").loc[NAMES["D"]]
    assert abs(d["share"]) < 0.05 and not bool(d["mediated"]), d


def test_latents_that_share_a_direction_are_held_once_at_their_layer(traced):
    # B and B2 read and write one direction: each alone holds all of it (shares that sum to 2);
    # holding the layer's latents at once holds it once
    paths = traced["paths"].set_index("mediator")
    assert paths.loc[NAMES["B"], "share"] > 0.9 and paths.loc[NAMES["B2"], "share"] > 0.9
    layer = traced["layers"].set_index(["target", "layer"]).loc[(NAMES["C"], 1)]
    assert layer["mediators"] == 3 and abs(layer["share"] - 1) < 0.1 and bool(layer["mediated"])


def test_a_partial_chain_shows_its_share(tmp_path):
    # C computed from B (block 2) and from A directly (block 2, from e_A): holding B leaves the
    # direct part. The share the hold finds against the one the weights give: the effect on C with
    # the B -> C neuron cut (an independent computation, no hold at all)
    from conftest import make_planted
    from pathreplay.pathways.mediation import _forced_means
    from pathreplay.replay.coupled import baseline_tokens, forced_tokens
    from pathreplay.replay.trials import batches, job_patch

    p = make_planted(tmp_path / "partial", k_ab=0.01, k_bc=1.0, k_ac=0.0065)
    s = ReplaySettings(max_new_tokens=5, temperature=0.7, batch_size=8, capture_layers=LAYERS)
    base = pd.concat([run_baseline(p.model, p.tok, q, 8, SEED, s).trials for q in PROMPTS], ignore_index=True)
    a, b, c = (Slice(NAMES[n], PLANTED[n][0], p.saes.feature(*PLANTED[n])) for n in ("A", "B", "C"))
    jobs = patched_jobs(PROMPTS, _selected(["A"]).iloc[0], [Condition("up", "risky_value", 1.0)], 8, SEED)
    chain = pd.DataFrame([{"path": "x", "scope": "forced", "condition": "up", "hops": 2, "a": a.name, "mids": b.name,
                           "c": c.name, "delta_first": 1.0, "q_first": 0.0, "delta_last": 1.0, "q_last": 0.0}])
    med = mediate(p.model, p.tok, chain, {}, {x.name: x for x in (a, b, c)}, {(a.name, "up"): jobs}, base, s, 0.05, 0.05)
    cut = []
    tokens = baseline_tokens(base)
    neuron = p.model.model.layers[2].mlp.down_proj.weight
    for part in batches(jobs, s.batch_size):
        forced = forced_tokens(tokens, part, s.max_new_tokens, p.tok.pad_token_id)
        pa = job_patch(part, a.block, a.feature, s)
        whole = _forced_means(p.model, p.tok, part, s, None, [pa], forced, [c])[c.name][1] \
            - _forced_means(p.model, p.tok, part, s, None, [], forced, [c])[c.name][1]
        saved = neuron[:, 0].clone()
        with torch.no_grad():
            neuron[:, 0] = 0
        direct = _forced_means(p.model, p.tok, part, s, None, [pa], forced, [c])[c.name][1] \
            - _forced_means(p.model, p.tok, part, s, None, [], forced, [c])[c.name][1]
        with torch.no_grad():
            neuron[:, 0] = saved
        cut.append((whole.numpy(), direct.numpy()))
    total, direct = (np.concatenate(x) for x in zip(*cut))
    true = 1 - direct.mean() / total.mean()
    got = med.paths.iloc[0]
    assert 0.2 < true < 0.8 and abs(got["share"] - true) < 0.1, (got["share"], true)


def test_the_control_feature_has_no_chain(traced):
    ch = traced["chains"]
    assert not ch.empty and not (ch["a"] == NAMES["X"]).any() and not ch["mids"].str.contains(NAMES["X"]).any()
    assert not ch["path"].str.contains(NAMES["P2"]).any()  # a passthrough edge is no hop


def test_upstream_forced_effects_are_exactly_zero_and_the_sham_changes_nothing(traced):
    up = traced["results"][NAMES["B"]].upstream  # B at block 1: block 0 is upstream
    assert len(up) and (up["target_layer"] == 0).all()
    forced = up[up["scope"] == "forced"]
    assert len(forced) and (forced["delta"] == 0).all() and (forced["n_nonzero"] == 0).all()
    assert (up["delta_passthrough"] == 0).all()  # upstream, the patch's step is in no residual
    gen = up[(up["scope"] == "generated") & (up["control"] == "real")]
    assert (gen["n_nonzero"] > 0).any()  # tokens the patch changed move block 0 in the sampled runs
    eff = traced["effects"]
    sham = eff[eff["control"] == "sham"]
    assert len(sham) and (sham["delta"] == 0).all() and sham["p_value"].isna().all()
    assert (sham["delta_passthrough"] == 0).all() and sham["p_computed"].isna().all()
    summary = upstream_summary(pd.concat([r.upstream for r in traced["results"].values()]))
    assert (summary.loc[summary["scope"] == "forced", "differing"] == 0).all()


def test_the_controls_through_the_same_tests(traced):
    eff = traced["effects"]
    assert set(eff["control"]) == {"real", "sham", "random"}
    # the placebo study: 20 re-splits of each prompt's 16 exchangeable unpatched trials, judged
    # at the real family's cutoff
    baseline = traced["baseline"]
    study = pd.concat(placebo_study(baseline, traced["codes"], [[q.id for q in PROMPTS]], 20, SEED, 0.05, 2))
    assert set(study["split"]) == set(range(20)) and study.loc[study["scope"] == "prompt_last", "p_value"].isna().all()
    real = eff[eff["control"] == "real"]
    q = bh(real["p_value"].to_numpy(float))
    cutoffs = {"trials": float(real["p_value"][q < 0.05].max()), "prompts": 0.0}
    rows = placebo_summary(study, cutoffs, 0.05, 0.05, 1).set_index(["scope", "level"])
    gen = rows.loc[("generated", "trials")]
    assert gen["splits"] == 20 and gen["tests"] > 20 and gen["p_below_alpha"] <= 1.5 * 0.05
    assert gen["splits_with_discoveries"] <= 2
    # the calibration splits test only what could pass |delta| > min_delta: the same minima
    md = float(study["delta"].abs().quantile(0.9))  # this model's placebo moves little: a tenth pass
    full, big = (split_minima(placebo_study(baseline, traced["codes"], [[q.id for q in PROMPTS]], 20, SEED, md, 2,
                                            CALIBRATION, b), md) for b in (False, True))
    assert (full["min_p"] < 1).any()
    key = ["split", "scope", "level"]
    big_on_full = big.set_index(key)["min_p"].reindex(full.set_index(key).index).fillna(1.0)  # absent: none big
    assert np.array_equal(big_on_full.to_numpy(), full["min_p"].to_numpy())
    assert big["tests"].sum() < full["tests"].sum() / 2
    n = null_summary(eff, 0.05, 0.05)
    assert set(n["contrast"]) == {"real", "sham", "random"}
    # with one prompt-level difference per prompt, 3 prompts give an exact sign-flip p of 0.25 at best
    pl = eff[(eff["scope"] == "prompt_last") & eff["p_value"].notna()]
    assert (pl["p_value"] >= 0.25).all() and (pl["n"] == 3).all()
    assert (eff["p_value"].dropna() > 0).all()
    # the random direction misses A's rows: the source reads back its baseline value under it
    t = traced["trials"]
    rand = t[(t["feature"] == NAMES["A"]) & (t["condition"] == "random:up") & (t["run"] == "forced")]
    assert np.allclose(rand["value_after_last"], rand["value_before_last"], atol=1e-4)


def test_a_patch_that_does_not_act_stops_the_encode(planted, tmp_path, monkeypatch):
    # the sham cannot see it (its step is 0 either way): the patched layer's check can
    from pathreplay.runtime import patch as patch_mod

    real = patch_mod._apply

    def inert(p, d, h, v, sel):
        _, stats = real(p, d, h, v, sel)
        return h, stats  # records the step it would take, takes none

    monkeypatch.setattr(patch_mod, "_apply", inert)
    s = ReplaySettings(max_new_tokens=4, temperature=0.7, batch_size=8, capture_layers=LAYERS)
    with pytest.raises(UserError, match="is not its baseline plus the patch's step at the patched layer"):
        replay_and_encode(planted, tmp_path, ["A"], s)


def test_chains_need_one_scope_one_condition_and_agreeing_signs():
    e = pd.DataFrame({"source_layer": [0, 1, 1, 0, 2], "source_feature": [1, 2, 2, 1, 3],
                      "condition": ["c", "c", "d", "c", "c"], "scope": ["forced", "forced", "forced", "generated", "forced"],
                      "target_layer": [1, 2, 2, 1, 3], "target_feature": [2, 3, 4, 2, 5],
                      "delta_computed": [0.5, -0.3, 0.2, 0.4, 0.7], "q_computed": [0.01, 0.02, 0.01, 0.03, 0.04],
                      "kind": "computed", "nonspecific": False})
    signs = {("L1-2", "c"): 1.0, ("L1-2", "d"): 1.0, ("L2-3", "c"): -1.0}
    c = chains(e, signs)
    assert c["path"].tolist() == ["L0-1 -> L1-2 -> L2-3", "L1-2 -> L2-3 -> L3-5", "L0-1 -> L1-2 -> L2-3 -> L3-5"]
    assert c["hops"].tolist() == [2, 2, 3] and c["mids"].tolist() == ["L1-2", "L2-3", "L1-2|L2-3"]
    assert (c["delta_first"].iloc[0], c["delta_last"].iloc[0]) == (0.5, -0.3)
    assert (c["delta_first"].iloc[2], c["delta_last"].iloc[2]) == (0.5, 0.7)
    assert chains(e, signs, max_hops=2)["hops"].max() == 2
    # A lowering B while B's own patch raised it: B's edge says nothing about A's effect through it
    assert chains(e.assign(delta_computed=[-0.5, -0.3, 0.2, 0.4, 0.7]), signs)["path"].tolist() == [
        "L1-2 -> L2-3 -> L3-5"]
    # a passthrough or nonspecific hop is no hop
    assert "L0-1" not in set(chains(e.assign(kind=["passthrough"] + ["computed"] * 4), signs)["a"])
    assert chains(e.assign(nonspecific=[False, True, False, False, False]), signs).empty


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
                "prompts_replicated", "prompts_opposite", "robust", "q_within_source", "delta_passthrough"):
        eff[col] = 0
    eff["delta_computed"], eff["p_computed"], eff["p_prompts"] = eff["delta"], eff["p_value"], eff["p_value"]
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
            # the split from a generator of its own, so the draws above stay what they were
            split = np.random.default_rng([layer, fid, tl, zlib.crc32(f"{cond}{scope}".encode())])
            through = np.where(split.random(n) < 0.5, delta * split.random(n), 0.0) if tl > layer else np.zeros(n)
            pc = np.where(through != 0, np.minimum(1, p * split.choice([1.0, 40.0, 0.5], n)), p)
            if ctl == "sham":
                p[:], pc[:], delta[:], through[:] = np.nan, np.nan, 0.0, 0.0
            frames.append(pd.DataFrame({
                "condition": cond, "control": ctl, "scope": scope, "target_layer": tl, "target_feature": tf.astype(np.int32),
                "mean_baseline": rng.random(n), "mean_patched": rng.random(n), "delta": delta,
                "delta_passthrough": through, "delta_computed": delta - through,
                "effect_size": rng.normal(size=n), "p_value": p, "p_computed": pc,
                "p_prompts": np.where(np.isnan(pc), np.nan, np.minimum(1, pc * split.choice([1.0, 30.0], n))),
                "test": pd.Categorical.from_codes(rng.integers(0, 4, n) % len(TESTS), categories=TESTS), "n": 4, "n_nonzero": rng.integers(0, 5, n),
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


def _in_memory(eff_paths, up_paths, alpha, min_delta, floors=None):
    """What workflow/scripts/pathways.py computed before it streamed."""
    from pathreplay.effects.layers import COLUMNS
    from pathreplay.io import read_tables

    effects = run_wide(read_tables(eff_paths, pd.DataFrame(columns=COLUMNS)))
    return (edges(effects, alpha, min_delta, floors), null_summary(effects, alpha, min_delta, floors),
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
    floors = {("generated", "trials"): 1e-3, ("generated", "prompts"): 2e-4}
    for alpha, min_delta, floor in ((0.05, 0.05, None), (0.2, 0.0, None), (0.05, 0.05, floors)):
        e, null, up = _in_memory(eff, ups, alpha, min_delta, floor)
        run = run_tables(eff, ups, alpha, min_delta, workers=1 + seed % 2, floors=floor)  # 2: forked processes
        assert len(e) > 3 and e["nonspecific"].any() and e["delta_forced"].eq(0).any()  # the paths are exercised
        assert {"computed", "passthrough"} <= set(e["kind"]) and null["discoveries_computed"].sum() > 0
        pd.testing.assert_frame_equal(run.edges, e, check_exact=True)
        pd.testing.assert_frame_equal(run.null, null, check_exact=True)
        pd.testing.assert_frame_equal(run.upstream, up, check_exact=True)
        pd.testing.assert_frame_equal(chains(run.edges, {}), chains(e, {}), check_exact=True)
        assert run.real_tests == int(run_wide(pd.concat(map(pd.read_parquet, eff)))
                                     .query("control == 'real'")["p_value"].notna().sum())
        if floor:  # the floor took generated claims out, and only those
            free = run_tables(eff, ups, alpha, min_delta).edges
            g, fg = (x[x["scope"] == "generated"] for x in (e, free))
            assert len(g) < len(fg) and (g["p_value"] < 1e-3).all() and (fg["p_value"] >= 1e-3).any()
            assert (g.loc[g["kind"] == "computed", "p_computed"] < 1e-3).all()
            assert (g.loc[g["general"], "p_prompts"] < 2e-4).all() and fg["general"].sum() > g["general"].sum()
            pd.testing.assert_frame_equal(e[e["scope"] != "generated"].reset_index(drop=True),
                                          free[free["scope"] != "generated"].reset_index(drop=True))
            n, nf = (x[x["scope"] == "generated"]["discoveries"].sum() for x in (null, run_tables(eff, ups, alpha,
                                                                                                   min_delta).null))
            assert n < nf


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
