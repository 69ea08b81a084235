import logging

import pandas as pd
import pyarrow.dataset as ds

from pathreplay.effects import Pairs, source_effects
from pathreplay.io import read_table, write_table
from pathreplay.workflow import run_script


def pairs_of(treated: pd.DataFrame, control: pd.DataFrame, condition: str) -> Pairs:
    """Pair treated and control trials that share a prompt and a trial number (one seed)."""
    m = treated.merge(control, on=["prompt_id", "trial"], suffixes=("_t", "_c"))
    return Pairs(condition, m["prompt_id"].to_numpy(), list(zip(m["part_t"], m["row_t"])),
                 list(zip(m["part_c"], m["row_c"])))


def main(sm):
    st = sm.params.stats
    name = sm.wildcards.feature
    patched = read_table(sm.input.patched)
    patched = patched[patched["feature"] == name]
    shard = sm.input.patched.split("/")[-2]
    patched = patched.assign(part=f"patched/{shard}")
    base = pd.concat([read_table(f).assign(part=f"baseline/{f.split('/')[-2]}") for f in sm.input.baseline])
    main_base = base[base["condition"] == "baseline"]
    layer, fid = int(patched["layer"].iloc[0]), int(patched["feature_id"].iloc[0])
    parts = sorted(set(patched["part"]) | set(base["part"]))
    codes = {}
    for f in sm.input.codes:
        t = int(f.split("/L")[-1].split(".")[0])
        codes[t] = ds.dataset(f).to_table(filter=ds.field("part").isin(parts)).to_pandas()
    pairs = [pairs_of(g, main_base, cond) for cond, g in patched.groupby("condition")]
    eff = source_effects(codes, pairs, layer, fid, st["min_delta"], st["min_prompts"])
    placebo_trials = base[base["condition"] == "placebo"]
    placebo = source_effects(codes, [pairs_of(placebo_trials, main_base, "placebo")] if len(placebo_trials) else [],
                             layer, fid, st["min_delta"], st["min_prompts"])
    logging.info("%s: %d tests, %d placebo tests", name, len(eff), len(placebo))
    write_table(eff, sm.output.effects)
    write_table(placebo, sm.output.placebo)


run_script(snakemake, main)  # noqa: F821
