from pathreplay.io import read_tables, write_table
from pathreplay.workflow import run_script


def main(sm):
    write_table(read_tables(sm.input), sm.output[0])


run_script(snakemake, main)  # noqa: F821
