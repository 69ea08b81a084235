import logging

import pandas as pd

from pathreplay.effects.codes import read_codes
from pathreplay.effects.placebo import CALIBRATION, PLACEBO_COLUMNS, placebo_floors, placebo_study, split_minima
from pathreplay.io import read_table, write_table
from pathreplay.sae.encode import part_of
from pathreplay.workflow import run_script


def study(baseline, codes, sets, splits, p, **kw):
    return placebo_study(baseline, codes, sets, splits, p.seed, p.stats["min_delta"], p.stats["min_prompts"], **kw)


def main(sm):
    p = sm.params
    baseline = pd.concat([read_table(f).assign(part=part_of(f)) for f in sm.input.baseline], ignore_index=True)
    sets = [tuple(s) for s in p.prompt_sets]  # each distinct set once
    codes = read_codes(sm.input.codes, sorted(baseline["part"].unique()))
    logging.info("placebo: %d check splits and %d calibration splits of %d prompt sets", p.splits,
                 p.calibration_splits, len(sets))
    frames = list(study(baseline, codes, sets, p.splits, p))
    check = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PLACEBO_COLUMNS)
    calibration = study(baseline, codes, sets, p.calibration_splits, p, label=CALIBRATION, big_only=True)
    minima = split_minima(calibration, p.stats["min_delta"])
    floors = placebo_floors(minima, p.calibration_splits, p.stats["placebo_fwer"])
    for r in floors.itertuples():
        logging.info("floor %s, %s level: p < %.3g (split minimum %d of %d; median %.3g)", r.scope, r.level, r.floor,
                     r.rank, r.splits, r.min_p_median)
    write_table(check, sm.output.study)
    write_table(floors, sm.output.floors)


run_script(snakemake, main)  # noqa: F821
