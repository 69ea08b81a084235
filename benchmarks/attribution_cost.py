"""Attribution's cost per source on the demo: seconds and teacher-forced passes of the prediction
(attribution.predict: every real condition, its random control and the sham, per variant that
runs blocks), beside the patched replay of the same source (replay.coupled.run_features: every
condition and control sampled and teacher-forced, with captures), on the same baseline trials.

    PYTHONPATH=src .venv/bin/python benchmarks/attribution_cost.py --device cpu
    PYTHONPATH=src .venv/bin/python benchmarks/attribution_cost.py --device cuda --sources L1-653 L2-816

Prints one row per source: (trial, patch) rows pushed, passes, seconds of the prediction (and per
variant), seconds of the replay, and their ratio. Timing lives here, never in a test."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from pathreplay.attribution.predict import AttributionSettings, predict_source, source_of
from pathreplay.features import parse_feature_name
from pathreplay.replay.coupled import run_baseline, run_features
from pathreplay.replay.plan import parse_conditions
from pathreplay.replay.prompts import read_prompts
from pathreplay.replay.trials import ReplaySettings
from pathreplay.runtime.model import load_model
from pathreplay.sae.exact import SAESource

clock: Callable[[], float] = time.perf_counter
DEMO = Path(__file__).resolve().parents[1] / "resources" / "demo"
# the demo run's selection (results/features/selected.tsv) with its risky_value column
SOURCES = {"L0-207": 0.3257, "L1-110": 0.6167, "L1-653": 0.5317, "L2-336": 0.6472, "L2-565": 0.9463,
           "L2-702": 1.1130, "L2-816": 2.1324, "L2-938": 0.3355}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sources", nargs="+", default=sorted(SOURCES))
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-replay", action="store_true", help="time the prediction alone")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, tok = load_model(str(DEMO / "model"), "float32", a.device)
    dev = next(model.parameters()).device
    saes = SAESource(str(DEMO / "saes" / "L{layer}R"), "llamascope")
    layers = [0, 1, 2, 3]
    prompts = read_prompts(str(DEMO / "prompts.jsonl"))[: a.prompts]
    conds = parse_conditions(["risky_value", "20*risky_value"])
    s = ReplaySettings(max_new_tokens=12, temperature=0.7, batch_size=64, capture_layers=layers)
    t0 = clock()
    base = pd.concat([run_baseline(model, tok, q, a.trials, 0, s).trials for q in prompts], ignore_index=True)
    print(f"{a.device}, {torch.get_num_threads()} threads: {len(prompts)} prompts x {a.trials} trials, baseline "
          f"replay {clock() - t0:.1f} s")
    texts = {q.id: q.text for q in prompts}
    sae_layers = {b: saes.load(b, dev) for b in layers}
    print("| source | rows | passes | predict s | frozen s | jacobian s | replay s | predict / replay |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in a.sources:
        layer, fid = parse_feature_name(name)
        feat = saes.feature(layer, fid, dev)
        row = pd.Series({"risky_value": SOURCES[name]})
        src = source_of(name, layer, feat, row, conds, 0)
        mine = {b: x for b, x in sae_layers.items() if b > layer}
        times = {}
        for variants in (("virtual", "frozen", "jacobian"), ("frozen",), ("jacobian",)):
            t = clock()
            pred = predict_source(model, tok, src, base, texts, mine, AttributionSettings(variants=variants))
            times[variants] = (clock() - t, pred)
        full, pred = times[("virtual", "frozen", "jacobian")]
        replay = float("nan")
        if not a.no_replay:
            sel = pd.DataFrame({"feature": [name], "layer": [layer], "feature_id": [fid],
                                "risky_value": [SOURCES[name]]}).set_index("feature")
            plan = pd.DataFrame({"feature": name, "prompt_id": [q.id for q in prompts]})
            t = clock()
            run_features(model, tok, sel, plan, {q.id: q for q in prompts}, {name: (layer, feat)}, conds, a.trials, 0,
                         s, base)
            replay = clock() - t
        print(f"| {name} | {pred.rows} | {pred.passes} | {full:.2f} | {times[('frozen',)][0]:.2f} | "
              f"{times[('jacobian',)][0]:.2f} | {replay:.2f} | {full / replay:.3f} |")


if __name__ == "__main__":
    main()
