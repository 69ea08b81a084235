"""Replay machinery: batches of one prompt and trial block, records, captures, what a job writes."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from safetensors import safe_open

from conftest import replay_prompts
from pathreplay.errors import UserError
from pathreplay.replay.plan import Condition, Job, baseline_jobs, patched_jobs
from pathreplay.replay.trials import (
    ReplayResult,
    ReplaySettings,
    _kept,
    batches,
    from_batches,
    run_batch,
    run_jobs,
    stack_results,
    write_result,
)
from pathreplay.runtime.patch import Patch
from pathreplay.sae.exact import load_feature

PROMPTS = replay_prompts()


def _settings(**kw):
    return ReplaySettings(max_new_tokens=5, temperature=0.7, batch_size=3, capture_layers=(0, 1), **kw)


def _result(rows, layers=(0, 1), d=2, first=0.0):
    n = len(rows)
    t = pd.DataFrame({"prompt_id": [f"p{i}" for i in range(n)], "row": rows, "n_positions": [1] * n})
    states = {b: first + b * 100 + torch.arange(n * 2 * d, dtype=torch.float16).reshape(n, 2, d) for b in layers}
    return ReplayResult(t, states, {b: states[b][:1].float() for b in layers})


def test_batches_hold_one_prompt_and_condition_cut_at_the_same_trials():
    jobs = patched_jobs(PROMPTS[:2], pd.Series({"risky_value": 1.0}), [Condition("a", "risky_value", 1.0),
                                                                    Condition("b", "risky_value", 2.0)], 7, 0)
    got = [[(j.prompt_id, j.condition, j.trial) for j in b] for b in batches(jobs, 3)]
    assert len(got) == 2 * 2 * 3  # prompts x conditions x trial blocks [0-2], [3-5], [6]
    assert all(len({(p, c) for p, c, _ in b}) == 1 for b in got)
    assert [[t for *_, t in b] for b in got[:3]] == [[0, 1, 2], [3, 4, 5], [6]]
    base = [[(j.prompt_id, j.trial) for j in b] for b in batches(baseline_jobs(PROMPTS[:2], 7, 0), 3)]
    assert base == [[(p, t) for p, _, t in b] for b in got if b[0][1] == "a"]  # the baseline's batches, row for row


def test_stack_results_numbers_rows_on_and_keeps_them_pointing_at_their_states():
    a, b = _result([0, 1]), _result([0, 1, 2], first=50.0)
    out = stack_results([a, b], (0, 1))
    assert out.trials["row"].tolist() == [0, 1, 2, 3, 4]
    assert out.trials["prompt_id"].tolist() == ["p0", "p1", "p0", "p1", "p2"]
    for layer in (0, 1):
        assert out.states[layer].shape == (5, 2, 2)
        assert torch.equal(out.states[layer][3], b.states[layer][1])  # stacked row 3 is b's row 1
        assert torch.equal(out.states[layer][:2], a.states[layer])
        assert out.sample[layer].shape == (2, 2, 2)
    assert a.trials["row"].tolist() == [0, 1]  # inputs untouched
    with pytest.raises(ValueError):
        stack_results([], (0,))


def test_write_result_keeps_each_layers_states_positions_and_sample(tmp_path):
    res = _result([0, 1, 2])
    res.trials["n_positions"] = [1, 0, 1]
    paths = [str(tmp_path / "L0.safetensors"), str(tmp_path / "L1.safetensors")]
    write_result(res, (0, 1), paths, str(tmp_path / "trials.parquet"))
    for layer, path in zip((0, 1), paths):
        with safe_open(path, framework="pt") as f:
            assert torch.equal(f.get_tensor("states"), res.states[layer])
            assert torch.equal(f.get_tensor("sample32"), res.sample[layer])
            assert f.get_tensor("n_positions").tolist() == [1, 0, 1] and f.metadata() == {"layer": str(layer)}
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "trials.parquet"), res.trials)
    with pytest.raises(ValueError):  # a layer without its file is a bug, not a silent skip
        write_result(res, (0, 1), paths[:1], str(tmp_path / "t2.parquet"))


def test_a_batch_records_its_run_tokens_and_fidelity(tiny_lm, tiny_saes):
    model, tok = tiny_lm
    s = _settings()
    feat = load_feature(tiny_saes[0], "llamascope", 0, 3)
    jobs = [Job("p0", "c", PROMPTS[0].text, "x", t, 100 + t, 2.0) for t in range(3)]
    b = run_batch(model, tok, jobs, s, None, patches=[Patch(0, feat, torch.full((3,), 2.0))])
    r = b.records[0]
    assert r["run"] == "generated" and len(r["tokens"]) == r["n_tokens"] and r["condition"] == "x"
    assert {"value_before_last", "pre_before_last", "dh_last", "dh_rel_last", "dh_generated"} <= set(r)
    assert r["dh_last"] == pytest.approx(2.0 - r["value_before_last"], rel=1e-4)  # a unit decoder row
    assert r["dh_rel_last"] > 0
    assert b.stats.shape[:2] == (6, 3) and b.sample[0].shape == (1, 5, model.config.hidden_size)
    # the signed step along the decoder row at the kept positions: dh = step u, one per kept position
    assert len(r["step"]) == 1 + r["n_positions"] and r["step"][0] == pytest.approx(2.0 - r["value_before_last"])
    assert r["fires_last"] in (0.0, 1.0) and 0 <= r["fires_generated"] <= 1
    forced = torch.full((3, 5), tok.pad_token_id)
    for i, rec in enumerate(b.records):
        forced[i, : rec["n_tokens"]] = torch.tensor(rec["tokens"])
    again = run_batch(model, tok, jobs, s, None, patches=[Patch(0, feat, torch.full((3,), 2.0))], forced=forced,
                      run="forced")
    assert [x["tokens"] for x in again.records] == [x["tokens"] for x in b.records]  # teacher-forced on them
    assert all(x["run"] == "forced" for x in again.records)
    for layer in (0, 1):
        assert torch.equal(again.states[layer], b.states[layer])  # the same patch on the same tokens


def test_non_finite_states_stop_the_job_in_one_line():
    good = torch.ones(2, 3, 4)
    assert _kept(good, [0, 1], torch.tensor([2, 1]), "x")[0].shape == (2, 3, 4)
    with pytest.raises(UserError, match=r"^shard s001: block 2: 1 captured values are inf or NaN \(the model's states"):
        bad = good.clone()
        bad[0, 0, 0] = float("nan")
        _kept(bad, [0, 1], torch.tensor([2, 1]), "shard s001: block 2")
    with pytest.raises(UserError, match="exceed fp16's range"):
        _kept(good * 1e5, [0, 1], torch.tensor([2, 1]), "x")


def test_screen_settings_capture_nothing(tiny_lm):
    model, tok = tiny_lm
    s = ReplaySettings(max_new_tokens=3, temperature=0.7, batch_size=4)
    jobs = patched_jobs([PROMPTS[0]], pd.Series({"risky_value": 1.0}),
                        [Condition("risky_value", "risky_value", 1.0)], 2, 3)
    res = run_jobs(model, tok, jobs, s)
    assert res.states == {} and (res.trials["n_positions"] == 0).all() and len(res.trials) == 2


def test_from_batches_numbers_rows_in_batch_order(tiny_lm):
    model, tok = tiny_lm
    s = _settings()
    jobs = baseline_jobs(PROMPTS[:2], 4, 1)
    done = [run_batch(model, tok, part, s, None) for part in batches(jobs, s.batch_size)]
    res = from_batches(done, (0, 1))
    assert res.trials["row"].tolist() == list(range(8))
    assert res.trials[["prompt_id", "trial"]].values.tolist() == [[p, t] for p in ("p0", "p1") for t in range(4)]
    assert res.states[0].shape[0] == 8 and res.sample[0].shape[0] == len(done)
