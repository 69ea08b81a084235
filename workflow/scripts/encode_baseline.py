from pathreplay.io import write_table
from pathreplay.sae.encode import encode_part, part_of, save_partial
from pathreplay.sae.exact import SAESource
from pathreplay.workflow import claim_device, run_script


def main(sm):
    source, device = SAESource(**sm.params.saes), claim_device(sm.params.device)
    for i, (layer, states) in enumerate(zip(sm.params.layers, sm.input, strict=True)):
        sae = source.load(layer, device)  # one SAE resident at a time
        codes, partial = encode_part(sae, part_of(states), states)
        write_table(codes, sm.output.codes[i])
        if partial is not None:  # a baseline part: its share of the layer's quality sums
            save_partial(partial, sm.output.quality[i])
        del sae


run_script(snakemake, main)  # noqa: F821
