from pathreplay.io import write_table
from pathreplay.study.demo import measure_figures
from pathreplay.workflow import claim_device, run_script


def main(sm):
    p = sm.params
    claim_device(p.device)
    table = measure_figures(p.model, p.saes["path"], p.layers, p.saes["format"], seed=p.seed, device=p.device)
    write_table(table, sm.output[0])


run_script(snakemake, main)  # noqa: F821
