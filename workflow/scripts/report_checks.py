from pathreplay.io import read_table
from pathreplay.report.figures import html_table
from pathreplay.workflow import run_script


def main(sm):
    for key in ("quality", "null", "upstream", "fidelity", "patched_quality", "gates"):
        html_table(read_table(sm.input[key]), sm.output[key])


run_script(snakemake, main)  # noqa: F821
