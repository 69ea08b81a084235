import logging

import pandas as pd

from pathreplay.effects.codes import read_codes
from pathreplay.effects.columns import MIN_PROMPTS_TESTED
from pathreplay.effects.layers import layer_effects
from pathreplay.effects.write import write_effects
from pathreplay.io import read_table
from pathreplay.replay.plan import control_of
from pathreplay.sae.encode import part_of
from pathreplay.workflow import run_script


def main(sm):
    st = sm.params.stats
    name = sm.wildcards.feature
    patched = read_table(sm.input.patched)
    patched = patched[patched["feature"] == name].assign(part=part_of(sm.input.patched))
    base = pd.concat([read_table(f).assign(part=part_of(f)) for f in sm.input.baseline])
    parts = sorted(set(patched["part"]) | set(base["part"]))
    mine = {part_of(sm.input.patched): patched["row"]}
    codes = read_codes(sm.input.codes, parts, rows=mine)
    through = read_codes(sm.input.passthrough, [part_of(sm.input.patched)], rows=mine)
    # a reconstruct patch is no multiple of one vector: its read-through is not separated
    undecomposed = frozenset(c for c in patched["condition"].unique() if control_of(c) == "real") \
        if sm.params.mode == "reconstruct" else frozenset()
    layers = layer_effects(patched, base, codes, st["min_delta"], st["min_prompts"],
                           where=f"effects of {name} (replay shard {part_of(sm.input.patched)})",
                           passthrough=through, undecomposed=undecomposed)
    got = write_effects(layers, int(patched["layer"].iloc[0]), int(patched["feature_id"].iloc[0]),
                        sm.output.effects, sm.output.upstream)
    if patched["prompt_id"].nunique() < MIN_PROMPTS_TESTED:
        logging.info("%s: prompt_last not tested: %d prompts, and an exact sign-flip test across prompts needs %d",
                     name, patched["prompt_id"].nunique(), MIN_PROMPTS_TESTED)
    logging.info("%s: %d tests (%d of the real conditions), %d upstream rows; sham and upstream forced exact",
                 name, got["tests"], got["real_tests"], got["upstream_rows"])


run_script(snakemake, main)  # noqa: F821
