import pandas as pd

from pathreplay.encode import encode_parts, part_of
from pathreplay.io import write_table
from pathreplay.sae import load_sae, sae_dir
from pathreplay.workflow import claim_device, run_script


def main(sm):
    layer = int(sm.wildcards.layer)
    dev = claim_device(sm.params.device)
    s = sm.params.saes
    sae = load_sae(sae_dir(s["path"], layer), s["format"], layer, dev)
    codes, quality = encode_parts(sae, [(part_of(f), f) for f in sm.input], layer)
    write_table(codes, sm.output.codes)
    write_table(pd.DataFrame([quality._asdict()]), sm.output.quality)


run_script(snakemake, main)  # noqa: F821
