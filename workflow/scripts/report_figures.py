import logging

from pathreplay.io import atomic_dir, read_table
from pathreplay.report.figures import pathway_graph, report_figures
from pathreplay.task import load_task
from pathreplay.workflow import run_script


def main(sm):
    edges, paths = read_table(sm.input.edges), read_table(sm.input.paths)
    behaviour = read_table(sm.input.behaviour)
    sources = sm.params.sources
    cap, links = sm.params.cap, {int(k): v for k, v in sm.params.links.items()}
    left = pathway_graph(edges, paths, sm.output.graph, cap=cap, links=links, html=sm.output.explore)
    with atomic_dir(sm.output.sources) as tmp:
        report_figures(edges, paths, behaviour, sources, tmp, rate=load_task(sm.params.task).primary.name, cap=cap,
                       links=links)
    logging.info("pathway graph: %d of %d edges drawn (%d left out by the cap of %d and the 30 a layer); figures of "
                 "%d sources", len(edges) - left, len(edges), left, cap, len(sources))


run_script(snakemake, main)  # noqa: F821
