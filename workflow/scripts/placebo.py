import pandas as pd

from pathreplay.effects.codes import read_codes
from pathreplay.effects.placebo import PLACEBO_COLUMNS, placebo_study
from pathreplay.io import atomic_path, read_table
from pathreplay.sae.encode import part_of
from pathreplay.workflow import run_script


def main(sm):
    p = sm.params
    baseline = pd.concat([read_table(f).assign(part=part_of(f)) for f in sm.input.baseline], ignore_index=True)
    sets = [tuple(s) for s in p.prompt_sets]  # each distinct set once
    codes = read_codes(sm.input.codes, sorted(baseline["part"].unique()))
    frames = list(placebo_study(baseline, codes, sets, p.splits, p.seed, p.stats["min_delta"], p.stats["min_prompts"]))
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PLACEBO_COLUMNS)
    with atomic_path(sm.output[0]) as tmp:
        out.to_parquet(tmp, index=False)


run_script(snakemake, main)  # noqa: F821
