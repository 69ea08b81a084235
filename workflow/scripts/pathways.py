import logging

from pathreplay.effects.placebo import read_floors
from pathreplay.io import read_table, read_tables, write_table
from pathreplay.pathways.checks import (
    annotate,
    never_firing,
    patch_fidelity,
    patched_quality,
    placebo_summary,
    with_placebo,
)
from pathreplay.pathways.edges import chains, headline, patch_signs
from pathreplay.pathways.runwide import run_tables
from pathreplay.workflow import run_script


def main(sm):
    st = sm.params.stats
    floors = read_floors(sm.input.placebo_floors)
    # file by file; pass 2 in the rule's threads (forked processes)
    run = run_tables(sm.input.effects, sm.input.upstream, st["alpha"], st["min_delta"], workers=int(sm.threads or 1),
                     floors=floors)
    patched = read_tables(sm.input.patched)
    fidelity = patch_fidelity(patched)
    quality = patched_quality(read_tables(sm.input.patched_quality), read_table(sm.input.sae_quality),
                              sm.params.max_fvu_ratio)
    for feature, condition in never_firing(fidelity):
        logging.warning("%s never fires under %s at any patched position: that condition makes no edge",
                        feature, condition)
    e = annotate(run.edges, fidelity, quality)
    top = headline(e)
    logging.info("%d edges from %d real tests (run-wide BH): %d computed and specific, %d computed but nonspecific, "
                 "%d passthrough, %d off the SAEs' distribution", len(e), run.real_tests, int(top.sum()),
                 int(((e["kind"] == "computed") & e["nonspecific"]).sum()), int((e["kind"] == "passthrough").sum()),
                 int(e["off_distribution"].sum()))
    write_table(e, sm.output.edges)
    write_table(chains(e, patch_signs(patched)), sm.output.chains)
    study = placebo_summary(read_table(sm.input.placebo), run.cutoffs, st["alpha"], st["min_delta"],
                            len(sm.params.prompt_sets), floors)
    for r in study.itertuples():
        logging.info("placebo %s, %s level: %d splits, mean share of p < %g %.4f (95th percentile %.4f), "
                     "%d splits with a discovery at the real cutoff %.3g and floor %.3g", r.scope, r.level, r.splits,
                     st["alpha"], r.p_below_alpha, r.p_below_alpha_p95, r.splits_with_discoveries, r.cutoff, r.floor)
    write_table(with_placebo(run.null, study), sm.output.null)
    write_table(run.upstream, sm.output.upstream)
    write_table(fidelity, sm.output.fidelity)
    write_table(quality, sm.output.quality)


run_script(snakemake, main)  # noqa: F821
