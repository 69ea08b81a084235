import logging

from pathreplay.io import atomic_dir, read_table
from pathreplay.report.figures import pathway_graph, report_figures
from pathreplay.task import load_task
from pathreplay.workflow import run_script


def main(sm):
    edges, paths = read_table(sm.input.edges), read_table(sm.input.paths)
    behaviour = read_table(sm.input.behaviour)
    sources = sorted(read_table(sm.input.plan)["feature"].unique())
    cap = sm.params.cap
    left = pathway_graph(edges, paths, sm.output.graph, cap=cap)
    with atomic_dir(sm.output.sources) as tmp:
        report_figures(edges, paths, behaviour, sources, tmp, rate=load_task(sm.params.task).primary.name, cap=cap)
    logging.info("pathway graph of %d edges (%d left out by the cap of %d); figures of %d sources", len(edges),
                 left, cap, len(sources))


run_script(snakemake, main)  # noqa: F821
