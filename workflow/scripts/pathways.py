import logging

from pathreplay.behaviour.measures import behaviour_effects
from pathreplay.io import read_tables, write_table
from pathreplay.pathways.checks import patch_fidelity
from pathreplay.pathways.edges import chains, patch_signs
from pathreplay.pathways.runwide import run_tables
from pathreplay.task import load_task
from pathreplay.workflow import run_script


def main(sm):
    st = sm.params.stats
    # file by file; pass 2 in the rule's threads (forked processes)
    run = run_tables(sm.input.effects, sm.input.upstream, st["alpha"], st["min_delta"], workers=int(sm.threads or 1))
    e = run.edges
    patched = read_tables(sm.input.patched)
    baseline = read_tables(sm.input.baseline)
    logging.info("%d edges (%d robust, %d nonspecific) from %d real tests; run-wide BH", len(e),
                 int(e["robust"].sum()), int(e["nonspecific"].sum()), run.real_tests)
    write_table(e, sm.output.edges)
    write_table(chains(e, patch_signs(patched)), sm.output.chains)
    main_baseline = baseline[baseline["condition"] == "baseline"]
    task = load_task(sm.params.task)
    write_table(behaviour_effects(patched[patched["run"] == "generated"], main_baseline, task), sm.output.behaviour)
    write_table(run.null, sm.output.null)
    write_table(run.upstream, sm.output.upstream)
    write_table(patch_fidelity(patched), sm.output.fidelity)


run_script(snakemake, main)  # noqa: F821
