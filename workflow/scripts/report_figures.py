import logging

import pandas as pd

from pathreplay.figures import pathway_graph, report_figures
from pathreplay.io import atomic_dir, atomic_path, read_table
from pathreplay.workflow import run_script


def main(sm):
    edges, paths = read_table(sm.input.edges), read_table(sm.input.paths)
    behaviour = read_table(sm.input.behaviour)
    sources = sorted(pd.read_csv(sm.input.plan, sep="\t")["feature"].unique())
    with atomic_path(sm.output.graph) as tmp:
        left = pathway_graph(edges, paths, tmp, cap=sm.params.cap, fmt="svg")
    with atomic_dir(sm.output.sources) as tmp:
        report_figures(edges, paths, behaviour, sources, tmp)
    logging.info("pathway graph of %d edges (%d left out by the cap of %d); figures of %d sources", len(edges),
                 left, sm.params.cap, len(sources))


run_script(snakemake, main)  # noqa: F821
