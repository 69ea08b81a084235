import pandas as pd

from pathreplay.io import read_table, write_table
from pathreplay.workflow import run_script


def main(sm):
    write_table(pd.concat([read_table(p) for p in sm.input], ignore_index=True), sm.output[0])


run_script(snakemake, main)  # noqa: F821
