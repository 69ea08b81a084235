"""The task seam: a task is one module and a config key. The yes/no task of tests/tasks runs the
whole DAG on the demo model; bad task specs are one line."""

from __future__ import annotations

import math
import sys

import pandas as pd
import pytest

from conftest import ROOT
from pathreplay.errors import UserError
from pathreplay.study.task import SLOT_MACHINE
from pathreplay.task import Answer, Mean, Rate, Task, check_task, load_task

TASKS = ROOT / "tests" / "tasks"
YES_NO = str(TASKS / "yes_no.py")


def test_the_slot_machine_is_installed_by_name():
    t = load_task("slot_machine")
    assert t is SLOT_MACHINE and t.primary == Rate("stop", "stop") and t.amount == "bet" and t.exp1
    a = t.parse("1\nAmount: $25\nRound 3: Bet $25, Win", "", "first")
    assert a[:3] == ("bet", 25, True) and a.end == len("1\nAmount: $25\n")
    assert t.parse("1", "Choose one of the following:\n1) Bet $10\n2) Stop playing\n\nChoice: ", "first").amount == 10


def test_a_task_in_a_file():
    t = load_task(YES_NO)
    assert t.name == "yes_no" and t.amount is None and not t.exp1 and t.labels == ("yes", "no")
    yes = t.parse("1) Bet $10\n2) Stop", "", "first")
    assert (yes.action, yes.valid, yes.end) == ("yes", True, len("1) Bet $10\n")) and math.isnan(yes.amount)
    assert t.parse("2) Stop playing\n", "", "first").action == "no" and t.parse(" No thanks", "", "first").valid
    none = t.parse("Maybe\n1\n", "", "first")
    assert (none.action, none.valid, none.reason, none.end) == ("none", False, "no yes or no found", 6)
    assert t.answer_end("yes\nand more") == 4


@pytest.mark.parametrize("spec, says", [
    ("no/such/task.py", "no such file"),
    ("no_such_module_anywhere", "names no installed task and no importable module"),
    ("json", "does not define a pathreplay.task.Task"),
])
def test_a_spec_that_names_no_task_is_one_line(spec, says):
    with pytest.raises(UserError, match=says):
        load_task(spec)


def test_a_task_is_checked_against_its_parsers_and_measures():
    with pytest.raises(UserError, match="has no parser 'legacy'"):
        check_task(load_task(YES_NO), "legacy")
    no_rate = Task("t", lambda *a: Answer("x", 0.0, True, "", 0), ("p",), (Mean("m", "x"),), ("a", "b"), amount="m")
    with pytest.raises(UserError, match="no Rate measure"):
        check_task(no_rate, "p")
    with pytest.raises(UserError, match="no amount column"):
        check_task(no_rate._replace(measures=(Rate("x", "x"), Mean("m", "x")), amount=None), "p")


YES_NO_CONFIG = {
    "task": "tests/tasks/yes_no.py",
    "prompts": {"file": "tests/tasks/yes_no_prompts.jsonl", "per_feature": 3},
    "features": {"table": "tests/tasks/yes_no_features.tsv"},
    "screen": {"prompts": ["ask_00", "ask_01"], "top_n": 4, "trials": 16},
    "select": {"top_n": 3, "shard_size": 2, "labels": []},
    "replay": {"trials": 6, "max_new_tokens": 8},
    "stats": {"max_chains": 5},
}


@pytest.mark.workflow
def test_a_second_task_runs_the_whole_dag(tmp_path):
    from test_workflow import snakemake

    r = snakemake(tmp_path, "--cores", "2", config=YES_NO_CONFIG)
    assert r.returncode == 0, r.stderr[-4000:]
    res = tmp_path / "results"
    screen = pd.read_parquet(res / "screen" / "behaviour.parquet")
    assert {"yes_rate", "delta_yes", "p_yes", "q_yes", "n_pairs_valid"} <= set(screen.columns)
    assert not any("stop" in c or "bet" in c for c in screen.columns)
    assert set(pd.read_parquet(res / "screen" / "features.parquet")["label"]) <= {"yes", "no", "neutral", "disruptive"}
    trials = pd.read_parquet(next((res / "replay" / "patched").glob("*/trials.parquet")))
    assert set(trials["action"]) <= {"yes", "no", "none"} and "bet" not in trials.columns and trials["valid"].any()
    beh = pd.read_parquet(res / "behavior" / "effects.parquet")
    assert "yes_rate" in beh.columns and len(beh)
    assert not (res / "exp1").exists()  # the yes/no task plays no games: its feature table is the user's
    for out in ("pathways/edges.parquet", "pathways/paths.tsv", "report/pathways.svg", "qc/null.tsv"):
        assert (res / out).exists(), out
    assert any(p.name.endswith(".decisions.svg") for p in (res / "report" / "sources").iterdir())


@pytest.mark.workflow
def test_a_task_without_games_needs_a_feature_table(tmp_path):
    from test_workflow import snakemake

    cfg = {**YES_NO_CONFIG, "features": {"table": None}}
    r = snakemake(tmp_path, "-n", config=cfg)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "pathreplay: error:" in ln]
    assert len(lines) == 1 and "features.table" in lines[0] and "plays no Exp1 games" in lines[0], r.stderr[-2000:]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
