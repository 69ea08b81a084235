"""Word effects by hand, across shards and shared baselines, and on the real sample (shuffled too)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from pathreplay.words.counts import WordCounter, count_logs
from pathreplay.words.effects import relabel, run_shard, word_effects
from pathreplay.words.logs import Trials
from pathreplay.words.settings import WordsConfig, level_label, words_config
from words_data import CUT, REAL_MAPPING, original_records, real_path, replay_like_table, two_condition_log, write_jsonl


def test_hand_computed_two_by_two(tmp_path: Path) -> None:
    cfg = words_config({})
    e = run_shard([str(two_condition_log(tmp_path))], cfg, CUT)
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
    chi = run_shard([str(two_condition_log(tmp_path))], words_config({"test": "chi2"}), CUT)
    crow = chi[(chi.word == "gamble") & (chi.text == "cut")].iloc[0]
    assert crow.test == "chi2_yates"
    assert crow.p_value == pytest.approx(sps.chi2_contingency([[14, 6], [4, 16]])[1], rel=1e-12)


def test_hand_computed_trend() -> None:
    cfg = words_config({"levels": "ordered", "contrasts": [], "min_count": 1})
    levels, says, n = [0.5, 1.0, 2.0], [1, 3, 6], 10
    trials = Trials([1] * 30, [2] * 30, ["c"] * 30, [level_label(x) for x in levels for _ in range(n)],
                      [x for x in levels for _ in range(n)],
                      ["hot streak" if i < k else "calm" for k in says for i in range(n)])
    counter = WordCounter(cfg, CUT)
    counter.add(trials)
    e = word_effects(counter.counts(), cfg)
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
    log = two_condition_log(tmp_path)
    words_tested = lambda k: set(run_shard([str(log)], words_config({"min_count": k}), CUT).word)  # noqa: E731
    assert "gamble" in words_tested(18) and "gamble" not in words_tested(19)


def test_shards_partition_the_features(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", original_records(np.random.default_rng(2)))
    cfg = words_config({"shards": 3})
    whole = run_shard([str(path)], cfg, CUT)
    parts = [run_shard([str(path)], cfg, CUT, shard) for shard in range(3)]
    assert sum(len(p) for p in parts) == len(whole)
    merged = relabel(pd.concat(parts, ignore_index=True)).sort_values(
        ["layer", "feature_id", "contrast", "text", "p_value", "word"], ignore_index=True)
    cols = ["layer", "feature_id", "contrast", "text", "word", "p_value", "q_value", "log_odds_z"]
    pd.testing.assert_frame_equal(merged[cols], whole[cols])


def test_replay_tables_share_their_baseline(tmp_path: Path) -> None:
    path = replay_like_table(tmp_path / "trials.parquet")
    section = {"contrasts": [{"name": "safe_value", "baseline": "baseline", "patched": "safe_value"},
                             {"name": "risky_value", "baseline": "baseline", "patched": "risky_value"}],
               "min_count": 3, "shards": 3}
    cfg = words_config(section)
    e = run_shard([str(path)], cfg, CUT)
    assert set(zip(e.layer, e.feature_id)) == {(5, 9), (7, 3)}
    assert set(e.contrast) == {"safe_safe_value", "safe_risky_value", "risky_safe_value", "risky_risky_value"}
    assert (e.baseline_n == 40).all() and (e.patched_n == 40).all()
    hit = e[(e.word == "jackpot") & (e.text == "full") & (e.q_value < 0.05)]
    assert set(zip(hit.feature_id, hit.contrast)) == {(9, "safe_risky_value"), (9, "risky_risky_value")}
    assert not len(e[(e.word == "jackpot") & (e.text == "cut")])  # invented after the answer
    parts = pd.concat([run_shard([str(path)], cfg, CUT, k) for k in range(3)], ignore_index=True)
    assert len(parts) == len(e)


def test_real_sample_through_column_mapping() -> None:
    cfg = words_config(REAL_MAPPING)
    counts = count_logs([str(real_path())], cfg, CUT)
    assert counts.groups.n.sum() == 2520 and len(counts.groups) == 5 * 2 * 7
    e = word_effects(counts, cfg)
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


def _shuffled_effects(df: pd.DataFrame, seed: int, cfg: WordsConfig) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    scale = df.groupby(["layer", "feature_id", "prompt_type"])["scale"].transform(lambda s: rng.permutation(s.to_numpy()))
    counter = WordCounter(cfg, CUT)
    counter.add(Trials(df.layer.tolist(), df.feature_id.tolist(), df.prompt_type.tolist(),
                         [level_label(v) for v in scale], scale.tolist(), df.response.tolist()))
    return word_effects(counter.counts(), cfg)


def test_shuffled_levels_leave_no_discovery() -> None:
    df = pd.read_json(real_path(), lines=True)
    cfg = words_config(REAL_MAPPING)
    e = _shuffled_effects(df, 0, cfg)
    assert len(e) > 400
    assert (e.q_value >= 0.05).all(), e[e.q_value < 0.05]


def test_shuffled_levels_false_discoveries_stay_at_alpha() -> None:
    """BH within each (feature, contrast, text) caps a family's chance of any discovery under the
    null at alpha; with 16 families a single shuffle still shows one ~45% of the time, so the
    honest check is the rate over many shuffles: 24 of 480 families (0.050) on these seeds, where
    alpha plus two standard errors is 0.07."""
    df = pd.read_json(real_path(), lines=True)
    cfg = words_config(REAL_MAPPING)
    hit = total = 0
    for seed in range(30):
        e = _shuffled_effects(df, seed, cfg)
        fam = e.groupby(["layer", "feature_id", "contrast", "text"]).q_value.min()
        hit += int((fam < 0.05).sum())
        total += len(fam)
    assert total >= 30 * 15  # (feature, context, text) families with at least one tested word
    assert hit / total <= 0.07, hit / total


def test_what_the_logs_leave_untested_is_said(tmp_path: Path, caplog) -> None:
    recs = [{"feature": "L3-7", "condition": "safe_with_risky_patch", "trial": t, "response": "1) Bet $10\n"}
            for t in range(10)]
    recs += [{"feature": "L3-8", "condition": "safe_baseline", "trial": t, "response": "2) Stop\n"} for t in range(10)]
    path = write_jsonl(tmp_path / "log.jsonl", recs)
    cfg = words_config({})
    with caplog.at_level("WARNING", logger="pathreplay.words"):
        run_shard([str(path)], cfg, CUT)
    said = [r.getMessage() for r in caplog.records]
    assert any("risky_feature: 1 features have no 'safe_baseline' trials (L3-7)" in m for m in said), said
    assert any("contrast safe_feature (risky_baseline vs risky_with_safe_patch) matches no trials" in m for m in said)
    levels = words_config({"levels": "ordered", "contrasts": [], "columns": {"level": "scale"}})
    one = write_jsonl(tmp_path / "one.jsonl", [{"feature": "L1-2", "scale": 1.0, "context": "c", "response": "x"}])
    caplog.clear()
    with caplog.at_level("WARNING", logger="pathreplay.words"):
        run_shard([str(one)], levels, CUT)
    assert any("1 (feature, context) pairs have a single level, so no trend (L1-2 c)" in r.getMessage()
               for r in caplog.records)


def test_broken_logs_are_one_line(tmp_path: Path) -> None:
    import gzip

    from pathreplay.errors import UserError

    good = "".join(f'{{"feature": "L1-2", "condition": "x", "response": "word {i}"}}\n' for i in range(2000))
    gz = tmp_path / "a.jsonl.gz"
    gz.write_bytes(gzip.compress(good.encode())[:300])
    with pytest.raises(UserError, match=r"a.jsonl.gz: cannot be read to its end: its gzip data is truncated"):
        run_shard([str(gz)], words_config({}), CUT)
    bad = tmp_path / "b.jsonl"
    bad.write_bytes(b'{"feature": "L1-2", "condition": "x", "response": "caf\xe9"}\n')
    with pytest.raises(UserError, match=r"b.jsonl: is not UTF-8 text"):
        run_shard([str(bad)], words_config({}), CUT)
