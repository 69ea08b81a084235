import pandas as pd

from pathreplay.encode import encode_parts, part_of
from pathreplay.io import write_table
from pathreplay.sae import SAESource
from pathreplay.workflow import claim_device, run_script


def main(sm):
    layer = int(sm.wildcards.layer)
    sae = SAESource(**sm.params.saes).load(layer, claim_device(sm.params.device))
    codes, quality = encode_parts(sae, [(part_of(f), f) for f in sm.input], layer)
    write_table(codes, sm.output.codes)
    write_table(pd.DataFrame([quality._asdict()]), sm.output.quality)


run_script(snakemake, main)  # noqa: F821
