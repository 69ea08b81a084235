import logging

import pandas as pd

from pathreplay.behaviour import behaviour_effects
from pathreplay.effects import COLUMNS
from pathreplay.io import read_tables, write_table
from pathreplay.pathways import chains, edges, null_summary, patch_fidelity, patch_signs, run_wide, upstream_summary
from pathreplay.workflow import run_script


def main(sm):
    st = sm.params.stats
    effects = run_wide(read_tables(sm.input.effects, pd.DataFrame(columns=COLUMNS)))
    e = edges(effects, st["alpha"], st["min_delta"])
    patched = read_tables(sm.input.patched)
    baseline = read_tables(sm.input.baseline)
    real = effects["control"] == "real"
    logging.info("%d edges (%d robust, %d nonspecific) from %d real tests; run-wide BH", len(e),
                 int(e["robust"].sum()), int(e["nonspecific"].sum()), int(effects.loc[real, "p_value"].notna().sum()))
    write_table(e, sm.output.edges)
    write_table(chains(e, patch_signs(patched)), sm.output.chains)
    main_baseline = baseline[baseline["condition"] == "baseline"]
    write_table(behaviour_effects(patched[patched["run"] == "generated"], main_baseline), sm.output.behaviour)
    write_table(null_summary(effects, st["alpha"], st["min_delta"]), sm.output.null)
    write_table(upstream_summary(read_tables(sm.input.upstream, pd.DataFrame(columns=COLUMNS[:-1]))), sm.output.upstream)
    write_table(patch_fidelity(patched), sm.output.fidelity)


run_script(snakemake, main)  # noqa: F821
