from pathreplay.io import atomic_path, read_table
from pathreplay.report.overview import findings, overview
from pathreplay.task import load_task
from pathreplay.workflow import run_script

SECTIONS = {"pathways": "1. Pathways", "sources": "2. Sources", "checks": "3. Checks"}


def main(sm):
    t = {k: read_table(v) for k, v in sm.input.items() if k not in ("text", "plan")}
    sources = len(sm.params.sources)
    rst = findings(t["edges"], t["paths"], t["layers"], t["behaviour"], t["gates"], t["null"], t["upstream"], sources,
                   sm.params.alpha, load_task(sm.params.task).primary.name, SECTIONS)
    with open(sm.input.text, encoding="utf-8") as fh:
        text = fh.read()
    with atomic_path(sm.output[0]) as tmp:
        tmp.write_text(overview(text, rst), encoding="utf-8")


run_script(snakemake, main)  # noqa: F821
