import logging

import pandas as pd

from pathreplay.effects import feature_effects, read_codes
from pathreplay.encode import part_of
from pathreplay.io import read_table, write_table
from pathreplay.workflow import run_script


def main(sm):
    st = sm.params.stats
    name = sm.wildcards.feature
    patched = read_table(sm.input.patched)
    patched = patched[patched["feature"] == name].assign(part=part_of(sm.input.patched))
    base = pd.concat([read_table(f).assign(part=part_of(f)) for f in sm.input.baseline])
    codes = read_codes(sm.input.codes, sorted(set(patched["part"]) | set(base["part"])))
    res = feature_effects(patched, base, codes, st["min_delta"], st["min_prompts"])
    logging.info("%s: %d tests, %d placebo tests", name, len(res.effects), len(res.placebo))
    write_table(res.effects, sm.output.effects)
    write_table(res.placebo, sm.output.placebo)


run_script(snakemake, main)  # noqa: F821
