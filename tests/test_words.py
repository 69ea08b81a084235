"""Word effects (RQ2): tokens, counting, statistics, outputs and the Snakemake rule."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from pathreplay import words as W
from pathreplay.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
REAL = Path(__file__).parents[2] / "shared" / "fixtures" / "real" / "exp2_dose_response_trials_sample.jsonl"
REAL_MAPPING = {"columns": {"level": "scale", "context": "prompt_type", "trial": "trial_index"},
                "levels": "ordered", "contrasts": []}


def real_path() -> Path:
    if not REAL.exists():
        pytest.skip(f"real fixture absent: {REAL} (sample of llm-addiction's exp2_revalidation_trials.jsonl)")
    return REAL


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ----------------------------------------------------------------------------- words


@pytest.mark.parametrize("forms", [
    ["bet", "bets", "betting"], ["win", "wins", "winning", "won"], ["lose", "loses", "losing", "lost"],
    ["stop", "stops", "stopped", "stopping"], ["balance", "balances", "balanced"],
    ["choose", "chose", "chosen", "choosing"], ["gamble", "gambles", "gambling"], ["round", "rounds"],
])
def test_stem_groups_inflections(forms: list[str]) -> None:
    assert len({W.stem(f) for f in forms}) == 1, {f: W.stem(f) for f in forms}


def test_stem_keeps_distinct_words_apart() -> None:
    assert len({W.stem(w) for w in ["bet", "better", "win", "wine", "loss", "lose", "stop", "step"]}) == 8


def test_tokenizer_folds_case_keeps_amounts_and_drops_stopwords() -> None:
    tok = W.Tokenizer()
    ids = tok.ids("I BET $10.00, then Bets of $1,000 and $5.50 on 3 rounds; the machine is at it")
    keys = {tok.keys[i] for i in ids}
    assert keys == {"bet", "$10", "$1000", "$5.5", "round", "machin"}
    # a response counts once per word, however often it says it
    assert len(tok.ids("bet bet bet betting")) == 1


def test_tokenizer_options() -> None:
    tok = W.Tokenizer(stopwords=frozenset({"machine"}), min_length=1, use_stem=False)
    keys = {tok.keys[i] for i in tok.ids("A machine: bets and bet")}
    assert keys == {"a", "bets", "and", "bet"}


# ----------------------------------------------------------------------------- statistics


def test_fisher_matches_scipy_on_random_tables() -> None:
    rng = np.random.default_rng(3)
    tabs = rng.integers(0, 40, size=(300, 4))
    tabs[:20] = [[0, 10, 0, 10]] * 20  # word said by nobody: p = 1
    ours = W.fisher_exact_2x2(*tabs.T)
    ref = [sps.fisher_exact([[a, b], [c, d]])[1] for a, b, c, d in tabs]
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-12)


def test_chi2_matches_scipy() -> None:
    rng = np.random.default_rng(4)
    tabs = rng.integers(1, 60, size=(100, 4))
    ours = W.chi2_2x2(*tabs.T)
    ref = [sps.chi2_contingency([[a, b], [c, d]])[1] for a, b, c, d in tabs]
    np.testing.assert_allclose(ours, ref, rtol=1e-9)


def test_bh_within_groups_matches_scipy() -> None:
    rng = np.random.default_rng(5)
    p = rng.uniform(size=200) ** 3
    group = rng.integers(0, 4, size=200)
    q = W.bh_by_group(p, group)
    for g in range(4):
        np.testing.assert_allclose(q[group == g], sps.false_discovery_control(p[group == g]), rtol=1e-12)


def _two_condition_log(path: Path) -> Path:
    """Feature L3-7, safe context: 4 of 20 baseline and 14 of 20 patched responses say 'gamble'."""
    recs = []
    for cond, says in (("safe_baseline", 4), ("safe_with_risky_patch", 14)):
        for t in range(20):
            text = "1) Bet $10 and gamble\n" if t < says else "1) Bet $10\n"
            recs.append({"feature": "L3-7", "condition": cond, "trial": t, "response": text + "Round 5: Win\n"})
    return write_jsonl(path / "log.jsonl", recs)


def test_hand_computed_two_by_two(tmp_path: Path) -> None:
    cfg = W.words_config({})
    e = W.run_shard([str(_two_condition_log(tmp_path))], cfg)
    row = e[(e.word == "gamble") & (e.text == "cut")].iloc[0]
    assert (row.contrast, row.baseline_count, row.baseline_n, row.patched_count, row.patched_n) == \
        ("risky_feature", 4, 20, 14, 20)
    # Fisher: sum over tables with margins (20, 20; 18 said) no likelier than the observed one
    pmf = [math.comb(20, k) * math.comb(20, 18 - k) / math.comb(40, 18) for k in range(19)]
    p = sum(x for x in pmf if x <= pmf[14] * (1 + 1e-9))
    assert row.p_value == pytest.approx(p, rel=1e-9)
    assert row.p_value == pytest.approx(0.0036410270486780, rel=1e-9)
    # Log-odds with a Beta prior of 10 pseudo-responses at the pooled rate 18/40: 4.5 / 5.5
    delta = math.log(18.5 / 11.5) - math.log(8.5 / 21.5)
    z = delta / math.sqrt(1 / 18.5 + 1 / 11.5 + 1 / 8.5 + 1 / 21.5)
    assert (row.log_odds_ratio, row.log_odds_z) == (pytest.approx(1.4034104683524), pytest.approx(2.5404714440323))
    assert (row.log_odds_ratio, row.log_odds_z) == (pytest.approx(delta), pytest.approx(z))
    assert row.effect == pytest.approx(0.5) and row.baseline_freq == 0.2 and row.patched_freq == 0.7
    # "bet" is in every response: tested, no effect; "round" only exists after the cut
    bet = e[(e.word == "bet") & (e.text == "cut")].iloc[0]
    assert bet.p_value == 1.0 and bet.log_odds_ratio == 0.0
    assert set(e[e.text == "full"].word) - set(e[e.text == "cut"].word) == {"round", "win"}
    # BH within (feature, contrast, text): 'gamble' is the smallest of m tested p-values
    m = int(((e.contrast == "risky_feature") & (e.text == "cut")).sum())
    assert row.q_value == pytest.approx(min(1.0, p * m))
    chi = W.run_shard([str(_two_condition_log(tmp_path))], W.words_config({"test": "chi2"}))
    crow = chi[(chi.word == "gamble") & (chi.text == "cut")].iloc[0]
    assert crow.test == "chi2_yates"
    assert crow.p_value == pytest.approx(sps.chi2_contingency([[14, 6], [4, 16]])[1], rel=1e-12)


def test_hand_computed_trend() -> None:
    cfg = W.words_config({"levels": "ordered", "contrasts": [], "min_count": 1})
    levels, says, n = [0.5, 1.0, 2.0], [1, 3, 6], 10
    trials = W.Trials([1] * 30, [2] * 30, ["c"] * 30, [W._level_label(x) for x in levels for _ in range(n)],
                      [x for x in levels for _ in range(n)],
                      ["hot streak" if i < k else "calm" for k in says for i in range(n)])
    counter = W.WordCounter(cfg)
    counter.add(trials)
    e = W.word_effects(counter.counts(), cfg)
    row = e[(e.word == "hot") & (e.text == "full")].iloc[0]
    x, d = np.array(levels), np.array(says)
    N, D = 3 * n, d.sum()
    pbar = D / N
    T = (d * x).sum() - pbar * n * x.sum()
    var = pbar * (1 - pbar) * (n * (x**2).sum() - (n * x.sum()) ** 2 / N)
    assert row.test == "cochran_armitage" and row.contrast == "c_dose"
    assert row.p_value == pytest.approx(2 * sps.norm.sf(abs(T / math.sqrt(var))), rel=1e-12)
    assert row.effect == pytest.approx(T / (n * ((x - x.mean()) ** 2).sum()))
    assert list(row.level_count) == says and list(row.level_values) == levels and list(row.level_n) == [10] * 3
    assert (row.baseline, row.patched, row.baseline_count, row.patched_count) == ("0.5", "2", 1, 6)


def test_min_count_drops_rare_words(tmp_path: Path) -> None:
    log = _two_condition_log(tmp_path)
    words_tested = lambda k: set(W.run_shard([str(log)], W.words_config({"min_count": k})).word)  # noqa: E731
    assert "gamble" in words_tested(18) and "gamble" not in words_tested(19)


# ----------------------------------------------------------------------------- reading and streaming


def _original_records(rng: np.random.Generator) -> list[dict]:
    recs = []
    for feature in ("L21-2794", "L4-17", "L9-300"):
        for cond in ("safe_baseline", "safe_with_safe_patch", "safe_with_risky_patch",
                     "risky_baseline", "risky_with_safe_patch", "risky_with_risky_patch"):
            for t in range(30):
                lucky = feature == "L21-2794" and cond == "safe_with_risky_patch" and t < 20
                text = "1\nAmount: $%d\n" % rng.choice([5, 10, 50]) if rng.random() < 0.6 else "2\n"
                text += "I feel lucky today\n" if lucky else "Current balance: $%d\n" % rng.integers(0, 200)
                recs.append({"feature": feature, "condition": cond, "trial": t, "response": text,
                             "parsed": {"action": "bet", "bet": 10, "valid": True, "reason": "x"}})
    return recs


def test_original_json_layout_and_contrasts(tmp_path: Path) -> None:
    path = tmp_path / "responses_L21_L21_0_20250101.json"
    path.write_text(json.dumps(_original_records(np.random.default_rng(0))))
    cfg = W.words_config({})
    e = W.run_shard([str(path)], cfg)
    assert set(e.contrast) == {c.name for c in W.ORIGINAL_CONTRASTS}
    out = W.causal_json(e, cfg)
    assert [x["feature"] for x in out] == ["L4-17", "L9-300", "L21-2794"]
    top = out[2]
    for key in ("risky_feature_adds", "risky_feature_removes", "safe_feature_adds", "safe_amplification_adds",
                "risky_amplification_removes", "safe_risky_patch_all", "risky_safe_patch_all"):
        assert key in top
    assert set(top["by_text"]) == {"cut", "full"} and top["text"] == "cut"
    # the invented text after the answer is where 'lucky' lives: only the full text sees it
    full_adds = {w["word"] for w in top["by_text"]["full"]["risky_feature_adds"]}
    assert {"lucky", "feel", "today"} <= full_adds
    assert not {w["word"] for w in top["risky_feature_adds"]} & {"lucky", "feel", "today"}
    entry = top["by_text"]["full"]["risky_feature_adds"][0]
    assert {"word", "baseline_freq", "patched_freq", "log_odds_ratio", "p_value", "baseline_count",
            "patched_count"} <= set(entry)
    assert entry["q_value"] < cfg.alpha and entry["log_odds_ratio"] > 0


def test_formats_and_chunking_agree(tmp_path: Path) -> None:
    recs = _original_records(np.random.default_rng(1))
    flat = pd.DataFrame([{k: v for k, v in r.items() if k != "parsed"} for r in recs])
    paths = {"json": tmp_path / "a.json", "jsonl": tmp_path / "a.jsonl", "csv": tmp_path / "a.csv",
             "parquet": tmp_path / "a.parquet"}
    paths["json"].write_text(json.dumps(recs))
    write_jsonl(paths["jsonl"], recs)
    flat.to_csv(paths["csv"], index=False)
    flat.to_parquet(paths["parquet"])
    results = {k: W.run_shard([str(p)], W.words_config({"chunk_rows": 7 if k == "jsonl" else 1000}))
               for k, p in paths.items()}
    base = results["json"].drop(columns=["level_values", "level_n", "level_count"])
    assert len(base) > 50
    for k, r in results.items():
        pd.testing.assert_frame_equal(r.drop(columns=["level_values", "level_n", "level_count"]), base, obj=k)


def test_shards_partition_the_features(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", _original_records(np.random.default_rng(2)))
    cfg = W.words_config({"shards": 3})
    whole = W.run_shard([str(path)], cfg)
    parts = [W.run_shard([str(path)], cfg, shard) for shard in range(3)]
    assert sum(len(p) for p in parts) == len(whole)
    merged = W.relabel(pd.concat(parts, ignore_index=True)).sort_values(
        ["layer", "feature_id", "contrast", "text", "p_value", "word"], ignore_index=True)
    cols = ["layer", "feature_id", "contrast", "text", "word", "p_value", "q_value", "log_odds_z"]
    pd.testing.assert_frame_equal(merged[cols], whole[cols])


def test_bounded_cache_gives_the_same_counts(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", _original_records(np.random.default_rng(6)))
    cfg = W.words_config({"chunk_rows": 50})
    small = W.WordCounter(cfg, cache_size=3)
    big = W.WordCounter(cfg)
    for chunk in W.read_trials([str(path)], cfg):
        small.add(chunk)
        big.add(chunk)
    a, b = small.counts(), big.counts()
    pd.testing.assert_frame_equal(a.groups, b.groups)
    key = lambda c: c.docs.assign(word=[c.keys[w] for w in c.docs.word]).sort_values(["gid", "text", "word"],  # noqa: E731
                                                                                     ignore_index=True)
    pd.testing.assert_frame_equal(key(a), key(b))
    assert small.trials == big.trials == 540


def _replay_like_table(path: Path) -> Path:
    """The replay's trial table layout: baselines logged once per prompt (feature "", layer -1),
    patched trials per feature and condition; L5-9's risky_value patch adds 'jackpot'."""
    rng = np.random.default_rng(8)
    rows = []
    for ctx in ("safe", "risky"):
        for t in range(40):
            rows.append({"prompt_id": f"{ctx}1", "context": ctx, "condition": "baseline", "trial": t,
                         "feature": "", "layer": -1, "feature_id": -1, "response": "1) Bet $10\nRound 5: Loss\n"})
        for feature, (layer, fid) in {"L5-9": (5, 9), "L7-3": (7, 3)}.items():
            for cond in ("safe_value", "risky_value"):
                for t in range(40):
                    jackpot = feature == "L5-9" and cond == "risky_value" and rng.random() < 0.5
                    text = "1) Bet $10\nRound 5: " + ("Jackpot!\n" if jackpot else "Loss\n")
                    rows.append({"prompt_id": f"{ctx}1", "context": ctx, "condition": cond, "trial": t,
                                 "feature": feature, "layer": layer, "feature_id": fid, "response": text})
    pd.DataFrame(rows).to_parquet(path)
    return path


def test_replay_tables_share_their_baseline(tmp_path: Path) -> None:
    path = _replay_like_table(tmp_path / "trials.parquet")
    section = {"contrasts": [{"name": "safe_value", "baseline": "baseline", "patched": "safe_value"},
                             {"name": "risky_value", "baseline": "baseline", "patched": "risky_value"}],
               "min_count": 3, "shards": 3}
    cfg = W.words_config(section)
    e = W.run_shard([str(path)], cfg)
    assert set(zip(e.layer, e.feature_id)) == {(5, 9), (7, 3)}
    assert set(e.contrast) == {"safe_safe_value", "safe_risky_value", "risky_safe_value", "risky_risky_value"}
    assert (e.baseline_n == 40).all() and (e.patched_n == 40).all()
    hit = e[(e.word == "jackpot") & (e.text == "full") & (e.q_value < 0.05)]
    assert set(zip(hit.feature_id, hit.contrast)) == {(9, "safe_risky_value"), (9, "risky_risky_value")}
    assert not len(e[(e.word == "jackpot") & (e.text == "cut")])  # invented after the answer
    parts = pd.concat([W.run_shard([str(path)], cfg, k) for k in range(3)], ignore_index=True)
    assert len(parts) == len(e)


# ----------------------------------------------------------------------------- user errors


def test_user_errors_name_file_field_and_fix(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [{"feature": "L1-2", "cond": "x", "response": "1"}])
    with pytest.raises(UserError, match=r"t\.jsonl: column 'condition' \(words\.columns\.condition\) not found.*map"):
        W.run_shard([str(path)], W.words_config({}))
    bad = write_jsonl(tmp_path / "f.jsonl", [{"feature": "feature two", "condition": "x", "response": "1"}])
    with pytest.raises(UserError, match=r"f\.jsonl: feature 'feature two' is not like 'L21-2794'"):
        W.run_shard([str(bad)], W.words_config({}))
    lv = write_jsonl(tmp_path / "l.jsonl", [{"feature": "L1-2", "scale": "high", "response": "1"}])
    with pytest.raises(UserError, match=r"l\.jsonl: level 'high' is not a number"):
        W.run_shard([str(lv)], W.words_config({"levels": "ordered", "columns": {"level": "scale"}}))
    broken = tmp_path / "b.jsonl"
    broken.write_text('{"feature": "L1-2"}\n\n{oops\n')
    with pytest.raises(UserError, match=r"b\.jsonl:3: not valid JSON"):
        W.run_shard([str(broken)], W.words_config({}))
    with pytest.raises(UserError, match=r"config words\.colums: unknown key"):
        W.words_config({"colums": {}})
    with pytest.raises(UserError, match=r"config words\.columns\.prompt: not a field"):
        W.words_config({"columns": {"prompt": "x"}})
    with pytest.raises(UserError, match=r"matches no file"):
        W.log_paths([str(tmp_path / "nothing*.jsonl")])
    (tmp_path / "x.xlsx").write_text("")
    with pytest.raises(UserError, match=r"x\.xlsx: unknown log format '\.xlsx'"):
        W.run_shard([str(tmp_path / "x.xlsx")], W.words_config({}))
    with pytest.raises(UserError, match=r"gone\.jsonl: log file not found"):
        W.run_shard([str(tmp_path / "gone.jsonl")], W.words_config({}))


def test_log_globs_expand_sorted_and_deduplicated(tmp_path: Path) -> None:
    for name in ("b.jsonl", "a.jsonl", "c.csv"):
        (tmp_path / name).write_text("")
    got = W.log_paths([str(tmp_path / "*.jsonl"), str(tmp_path / "a.jsonl")])
    assert got == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]


# ----------------------------------------------------------------------------- the real sample


def test_real_sample_through_column_mapping() -> None:
    cfg = W.words_config(REAL_MAPPING)
    counts = W.count_logs([str(real_path())], cfg)
    assert counts.groups.n.sum() == 2520 and len(counts.groups) == 5 * 2 * 7
    e = W.word_effects(counts, cfg)
    assert set(e.contrast) == {"safe_dose", "risky_dose"} and set(e.text) == {"cut", "full"}
    assert set(e.test) == {"cochran_armitage"}
    assert e[["layer", "feature_id"]].drop_duplicates().shape[0] == 5
    assert (e.baseline == "0.3").all() and (e.patched == "2").all()
    # L30-22493 was run twice in the original (60 trials per scale), the others once
    assert set(zip(e.feature_id, e.baseline_n)) == {(22493, 60), (14031, 30), (12025, 30), (19838, 30),
                                                    (31622, 30)}
    # the answer (first line and amount line) never holds the invented game state
    cut, full = set(e[e.text == "cut"].word), set(e[e.text == "full"].word)
    assert cut < full
    assert not cut & {"balance", "round", "game", "current", "win"}
    assert {"balance", "round", "current"} <= full
    assert {"amount", "bet", "$10"} <= cut
    # one dose trend survives BH on this sample: 'input' (the model typing "Input: 50") rises with
    # the scale of L25-31622 in the risky context
    sig = e[e.q_value < 0.05]
    assert [(r.layer, r.feature_id, r.context, r.text, r.word) for r in sig.itertuples()] == \
        [(25, 31622, "risky", "cut", "input")]
    assert list(sig.level_count.iloc[0]) == [0, 1, 0, 0, 0, 1, 4]


def _shuffled_effects(df: pd.DataFrame, seed: int, cfg: W.WordsConfig) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    scale = df.groupby(["layer", "feature_id", "prompt_type"])["scale"].transform(lambda s: rng.permutation(s.to_numpy()))
    counter = W.WordCounter(cfg)
    counter.add(W.Trials(df.layer.tolist(), df.feature_id.tolist(), df.prompt_type.tolist(),
                         [W._level_label(v) for v in scale], scale.tolist(), df.response.tolist()))
    return W.word_effects(counter.counts(), cfg)


def test_shuffled_levels_leave_no_discovery() -> None:
    df = pd.read_json(real_path(), lines=True)
    cfg = W.words_config(REAL_MAPPING)
    e = _shuffled_effects(df, 0, cfg)
    assert len(e) > 400
    assert (e.q_value >= 0.05).all(), e[e.q_value < 0.05]


def test_shuffled_levels_false_discoveries_stay_at_alpha() -> None:
    """BH within each (feature, contrast, text) caps a family's chance of any discovery under the
    null at alpha; with 16 families a single shuffle still shows one ~45% of the time, so the
    honest check is the rate over many shuffles: 24 of 480 families (0.050) on these seeds, where
    alpha plus two standard errors is 0.07."""
    df = pd.read_json(real_path(), lines=True)
    cfg = W.words_config(REAL_MAPPING)
    hit = total = 0
    for seed in range(30):
        e = _shuffled_effects(df, seed, cfg)
        fam = e.groupby(["layer", "feature_id", "contrast", "text"]).q_value.min()
        hit += int((fam < 0.05).sum())
        total += len(fam)
    assert total >= 30 * 15  # (feature, context, text) families with at least one tested word
    assert hit / total <= 0.07, hit / total


# ----------------------------------------------------------------------------- outputs


def test_merge_writes_table_json_and_plots(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", _original_records(np.random.default_rng(7)))
    cfg = W.words_config({"shards": 2, "top_features_plot": 2, "texts": ["full", "cut"]})
    shard_files = []
    for s in range(2):
        f = tmp_path / f"shard{s}.parquet"
        W.run_shard([str(path)], cfg, s).to_parquet(f)
        shard_files.append(str(f))
    out = tmp_path / "out"
    e = W.merge_shards(shard_files, cfg, str(out / "word_effects.parquet"), str(out / "causal.json"),
                       str(out / "volcano"))
    back = pd.read_parquet(out / "word_effects.parquet")
    assert len(back) == len(e) > 0 and list(back.columns) == W.EFFECT_COLUMNS
    assert json.loads((out / "causal.json").read_text())[0]["feature"] == "L4-17"
    pngs = sorted((out / "volcano").glob("*.png"))
    assert len(pngs) == 2 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    # the feature with the planted words ranks first
    assert W.top_features(e, cfg)[0] == (21, 2794) and "L21-2794.png" in {p.name for p in pngs}
    assert json.loads((out / "causal.json").read_text())[2]["text"] == "full"
    assert not list(out.rglob("*.partial"))


def test_empty_shards_merge_to_empty_outputs(tmp_path: Path) -> None:
    cfg = W.words_config({})
    f = tmp_path / "s.parquet"
    W.empty_effects().to_parquet(f)
    e = W.merge_shards([str(f)], cfg, str(tmp_path / "e.parquet"), str(tmp_path / "e.json"), str(tmp_path / "v"))
    assert e.empty and json.loads((tmp_path / "e.json").read_text()) == []
    assert (tmp_path / "v").is_dir()


# ----------------------------------------------------------------------------- the Snakemake rule


@pytest.mark.workflow
def test_snakemake_words_rule_end_to_end(tmp_path: Path) -> None:
    """Runs words.smk under a minimal Snakefile (only `words.*` configured, no model or SAE)."""
    real = real_path()
    (tmp_path / "logs").mkdir()
    df = pd.read_json(real, lines=True)
    for i, (key, part) in enumerate(df.groupby("feature_id")):
        part.to_json(tmp_path / "logs" / f"part{i}.jsonl", orient="records", lines=True)
    (tmp_path / "config.yaml").write_text(json.dumps({"words": {**REAL_MAPPING, "logs": ["logs/*.jsonl"],
                                                                "shards": 3, "top_features_plot": 2}}))
    (tmp_path / "Snakefile").write_text(
        f"import sys\nfrom pathlib import Path\nREPO = Path({str(ROOT)!r})\n"
        f"sys.path.insert(0, str(REPO / 'src'))\nconfigfile: 'config.yaml'\n"
        f"include: {str(ROOT / 'workflow' / 'rules' / 'words.smk')!r}\n"
        "rule all:\n    input: WORDS_TARGETS\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", "Snakefile", "--cores", "2", "words"],
                         cwd=tmp_path, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    e = pd.read_parquet(tmp_path / "results" / "words" / "word_effects.parquet")
    direct = W.run_shard([str(real)], W.words_config(REAL_MAPPING))
    assert len(e) == len(direct)
    assert set(zip(e.layer, e.feature_id, e.contrast, e.text, e.stem)) == \
        set(zip(direct.layer, direct.feature_id, direct.contrast, direct.text, direct.stem))
    assert len(json.loads((tmp_path / "results" / "words" / "causal_word_effects.json").read_text())) == 5
    assert len(list((tmp_path / "results" / "words" / "volcano").glob("*.png"))) == 2
    # a changed words setting reruns the words rules (they read it through params)
    (tmp_path / "config.yaml").write_text(json.dumps({"words": {**REAL_MAPPING, "logs": ["logs/*.jsonl"],
                                                                "shards": 3, "top_features_plot": 2, "min_count": 6}}))
    dry = subprocess.run([sys.executable, "-m", "snakemake", "-s", "Snakefile", "-n", "words"],
                         cwd=tmp_path, capture_output=True, text=True, env=env)
    assert dry.returncode == 0 and "words_merge" in dry.stdout and "words_shard" in dry.stdout, dry.stderr[-2000:]
    # a user error in the logs surfaces as one line, no traceback
    (tmp_path / "logs" / "part0.jsonl").write_text('{"layer": 1}\n')
    (tmp_path / "results").rename(tmp_path / "old_results")
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", "Snakefile", "--cores", "1", "words"],
                         cwd=tmp_path, capture_output=True, text=True, env=env)
    assert run.returncode != 0
    assert "pathreplay: error:" in run.stderr and "part0.jsonl" in run.stderr
