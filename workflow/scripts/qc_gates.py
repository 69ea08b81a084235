from pathreplay.io import read_table, read_tables, write_table
from pathreplay.pathways.gates import check_gates, gate_rows
from pathreplay.workflow import run_script


def main(sm):
    gates = gate_rows(read_table(sm.input.quality), read_tables(sm.input.baseline), sm.params.qc)
    check_gates(gates)  # a failed gate stops the run here, before any edge is claimed
    write_table(gates, sm.output[0])


run_script(snakemake, main)  # noqa: F821
