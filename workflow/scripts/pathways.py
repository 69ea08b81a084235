import logging

import pandas as pd

from pathreplay.behaviour import behaviour_effects
from pathreplay.effects import EDGE_COLUMNS, edges
from pathreplay.io import read_table, write_table
from pathreplay.pathways import chains, patch_fidelity, placebo_summary
from pathreplay.workflow import run_script


def concat(paths, columns=None):
    frames = [read_table(p) for p in paths]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def main(sm):
    st = sm.params.stats
    effects = concat(sm.input.effects, EDGE_COLUMNS)
    placebo = concat(sm.input.placebo, EDGE_COLUMNS)
    e = edges(effects, st["alpha"], st["min_delta"])
    patched = concat(sm.input.patched)
    baseline = concat(sm.input.baseline)
    logging.info("%d edges (%d robust) from %d tests", len(e), int(e["robust"].sum()) if len(e) else 0,
                 len(effects))
    write_table(e, sm.output.edges)
    write_table(chains(e), sm.output.paths)
    main_baseline = baseline[baseline["condition"] == "baseline"] if len(baseline) else baseline
    write_table(behaviour_effects(patched, main_baseline), sm.output.behaviour)
    write_table(placebo_summary(placebo, st["alpha"], st["min_delta"]), sm.output.placebo)
    write_table(patch_fidelity(patched), sm.output.fidelity)


run_script(snakemake, main)  # noqa: F821
