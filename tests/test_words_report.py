"""The word analysis' outputs: the original JSON layout, the table and the volcano plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pathreplay.errors import UserError
from pathreplay.words.effects import EFFECT_COLUMNS, empty_effects, run_shard
from pathreplay.words.report import causal_json, merge_shards, top_features
from pathreplay.words.settings import ORIGINAL_CONTRASTS, words_config
from words_data import CUT, original_records, write_jsonl


def test_original_json_layout_and_contrasts(tmp_path: Path) -> None:
    path = tmp_path / "responses_L21_L21_0_20250101.json"
    path.write_text(json.dumps(original_records(np.random.default_rng(0))))
    cfg = words_config({})
    e = run_shard([str(path)], cfg, CUT)
    assert set(e.contrast) == {c.name for c in ORIGINAL_CONTRASTS}
    out = causal_json(e, cfg)
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


def test_merge_writes_table_json_and_plots(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", original_records(np.random.default_rng(7)))
    cfg = words_config({"shards": 2, "top_features_plot": 2, "texts": ["full", "cut"]})
    shard_files = []
    for s in range(2):
        f = tmp_path / f"shard{s}.parquet"
        run_shard([str(path)], cfg, CUT, s).to_parquet(f)
        shard_files.append(str(f))
    out = tmp_path / "out"
    e = merge_shards(shard_files, cfg, str(out / "word_effects.parquet"), str(out / "causal.json"),
                       str(out / "volcano"))
    back = pd.read_parquet(out / "word_effects.parquet")
    assert len(back) == len(e) > 0 and list(back.columns) == EFFECT_COLUMNS
    assert json.loads((out / "causal.json").read_text())[0]["feature"] == "L4-17"
    pngs = sorted((out / "volcano").glob("*.png"))
    assert len(pngs) == 2 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    # the feature with the planted words ranks first
    assert top_features(e, cfg)[0] == (21, 2794) and "L21-2794.png" in {p.name for p in pngs}
    assert json.loads((out / "causal.json").read_text())[2]["text"] == "full"
    assert not list(out.rglob("*.partial"))


def test_empty_shards_merge_to_empty_outputs_only_when_allowed(tmp_path: Path) -> None:
    f = tmp_path / "s.parquet"
    empty_effects().to_parquet(f)
    outs = [str(tmp_path / "e.parquet"), str(tmp_path / "e.json"), str(tmp_path / "v")]
    with pytest.raises(UserError, match=r"^config words: no word was tested in any shard.*words\.allow_empty: true"):
        merge_shards([str(f)], words_config({}), *outs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.parquet"]  # nothing written, no partial left
    e = merge_shards([str(f)], words_config({"allow_empty": True}), *outs)
    assert e.empty and json.loads((tmp_path / "e.json").read_text()) == []
    assert (tmp_path / "v").is_dir()


def test_label_slots_keep_close_labels_apart() -> None:
    from pathreplay.words.report import label_slots

    h = label_slots([0.0, 0.1, 5.0, 0.05], [10.0, 9.9, 9.95, 9.8], gap=1.0)
    assert h[0] == 10.0 and h[2] == 9.95  # far apart in x: each at its own height
    assert h[1] <= h[0] - 1.0 and h[3] <= h[1] - 1.0  # close ones step down, none overlapping
