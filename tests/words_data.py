"""Trial logs the word tests share: hand-made layouts of the study's logs and the real sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from conftest import DOSE_RESPONSE, real_fixture
from pathreplay.study.task import SLOT_MACHINE

CUT = SLOT_MACHINE.answer_end  # where a slot-machine answer ends: the words' `cut` texts

REAL_MAPPING = {"columns": {"level": "scale", "context": "prompt_type", "trial": "trial_index"},
                "levels": "ordered", "contrasts": []}


def real_path() -> Path:
    return real_fixture(DOSE_RESPONSE)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def two_condition_log(path: Path) -> Path:
    """Feature L3-7, safe context: 4 of 20 baseline and 14 of 20 patched responses say 'gamble'."""
    recs = []
    for cond, says in (("safe_baseline", 4), ("safe_with_risky_patch", 14)):
        for t in range(20):
            text = "1) Bet $10 and gamble\n" if t < says else "1) Bet $10\n"
            recs.append({"feature": "L3-7", "condition": cond, "trial": t, "response": text + "Round 5: Win\n"})
    return write_jsonl(path / "log.jsonl", recs)


def original_records(rng: np.random.Generator) -> list[dict]:
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


def replay_like_table(path: Path) -> Path:
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
