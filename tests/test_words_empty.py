"""Logs that leave nothing to test fail the words jobs with one line, unless words.allow_empty;
every shard judges them on the whole logs, so the shards agree."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pathreplay.errors import UserError
from pathreplay.schema import defaults
from pathreplay.words.effects import run_shard
from pathreplay.words.settings import words_config
from words_data import CUT, two_condition_log, write_jsonl

ALLOW = "or set words.allow_empty: true to accept an empty result"


def test_allow_empty_is_off_by_default():
    assert defaults("words")["allow_empty"] is False and words_config({}).allow_empty is False


@pytest.mark.parametrize("name", ["e.jsonl", "e.csv", "e.json"])
def test_logs_without_trials_fail_unless_allowed(tmp_path: Path, name: str):
    log = tmp_path / name
    log.write_text("[]" if name.endswith(".json") else "")
    with pytest.raises(UserError, match=rf"^config words.logs: the logs hold no trials; check the files it "
                       rf"names, {ALLOW}$"):
        run_shard([str(log)], words_config({}), CUT)
    assert run_shard([str(log)], words_config({"allow_empty": True}), CUT).empty


def test_a_listed_contrast_that_matches_nothing_fails_unless_allowed(tmp_path: Path, caplog):
    log = str(two_condition_log(tmp_path))
    contrasts = [{"name": "risky", "baseline": "safe_baseline", "patched": "safe_with_risky_patch"},
                 {"name": "typo", "baseline": "safe_baseline", "patched": "safe_with_risky_pach"}]
    with pytest.raises(UserError, match=r"^config words.contrasts\[1\] \(typo\): matches no trials: no feature's "
                       r"'safe_with_risky_pach' trials beside 'safe_baseline' trials \(the logs' conditions: "
                       r"safe_baseline, safe_with_risky_patch\); name conditions the logs have"):
        run_shard([log], words_config({"contrasts": contrasts}), CUT)
    with caplog.at_level(logging.WARNING, "pathreplay.words"):
        out = run_shard([log], words_config({"contrasts": contrasts, "allow_empty": True}), CUT)
    assert set(out.contrast) == {"safe_risky"} and "contrast typo (safe_baseline vs safe_with_risky_pach) matches no" \
        in caplog.text


def test_the_original_contrasts_fail_only_when_none_matches(tmp_path: Path):
    assert len(run_shard([str(two_condition_log(tmp_path))], words_config({}), CUT))  # one of four is enough
    other = write_jsonl(tmp_path / "o.jsonl", [{"feature": "L1-2", "condition": c, "response": "bet"}
                                              for c in ("off", "on") for _ in range(6)])
    with pytest.raises(UserError, match=r"^config words.contrasts: none of the original four contrasts matches the "
                       r"logs' conditions \(off, on\); list contrasts of your conditions under words.contrasts"):
        run_shard([str(other)], words_config({}), CUT)


def test_contexts_that_the_logs_lack_fail(tmp_path: Path):
    log = str(two_condition_log(tmp_path))
    with pytest.raises(UserError, match=r"^config words.contexts: no trial of the logs is in \['risk'\] \(they have "
                       r"safe\); list contexts the logs have"):
        run_shard([log], words_config({"contexts": ["risk"]}), CUT)


def test_every_shard_judges_the_whole_logs(tmp_path: Path):
    # one feature: most shards hold none of it, yet its contrast matches, so no shard fails
    log = str(two_condition_log(tmp_path))
    cfg = words_config({"shards": 4})
    sizes = [len(run_shard([log], cfg, CUT, shard)) for shard in range(4)]
    assert sorted(sizes)[:3] == [0, 0, 0] and max(sizes) > 0
    typo = words_config({"shards": 4, "contrasts": [{"name": "t", "baseline": "safe_baseline", "patched": "x"}]})
    for shard in range(4):
        with pytest.raises(UserError, match=r"config words.contrasts\[0\] \(t\): matches no trials"):
            run_shard([log], typo, CUT, shard)
