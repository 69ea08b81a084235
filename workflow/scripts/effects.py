import logging

import pandas as pd

from pathreplay.effects import MIN_PROMPTS_TESTED, feature_effects, read_codes
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
    res = feature_effects(patched, base, codes, st["min_delta"], st["min_prompts"],
                          where=f"effects of {name} (replay shard {part_of(sm.input.patched)})")
    e = res.effects
    if patched["prompt_id"].nunique() < MIN_PROMPTS_TESTED:
        logging.info("%s: prompt_last not tested: %d prompts, and an exact sign-flip test across prompts needs %d",
                     name, patched["prompt_id"].nunique(), MIN_PROMPTS_TESTED)
    logging.info("%s: %d tests (%d of the real conditions), %d upstream rows; sham and upstream forced exact",
                 name, int(e["p_value"].notna().sum()), int(e.loc[e["control"] == "real", "p_value"].notna().sum()),
                 len(res.upstream))
    write_table(e, sm.output.effects)
    write_table(res.upstream, sm.output.upstream)


run_script(snakemake, main)  # noqa: F821
