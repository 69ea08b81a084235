import pandas as pd

from pathreplay.effects.codes import code_layer
from pathreplay.io import read_table, write_table
from pathreplay.replay.coupled import patch_vectors
from pathreplay.sae.encode import part_of
from pathreplay.sae.exact import SAESource
from pathreplay.sae.passthrough import shard_layer
from pathreplay.workflow import claim_device, run_script


def main(sm):
    p = sm.params
    source, device = SAESource(**p.saes), claim_device(p.device)
    trials = read_table(sm.input.trials)
    baseline = pd.concat([read_table(f).assign(part=part_of(f)) for f in sm.input.baseline_trials])
    feats = source.slices(trials[["layer", "feature_id"]].drop_duplicates())
    vectors = patch_vectors(trials, feats, p.mode, p.seed)
    quality = []
    for i, (layer, states) in enumerate(zip(p.layers, sm.input.states, strict=True)):
        files = {part_of(f): f for f in sm.input.baseline_states if code_layer(f) == layer}
        sae = source.load(layer, device)  # one SAE resident at a time
        out = shard_layer(sae, layer, part_of(states), states, trials, baseline, vectors, files, p.dtype)
        write_table(out.codes, sm.output.codes[i])
        write_table(out.passthrough, sm.output.passthrough[i])
        quality.append(out.quality)
        del sae
    write_table(pd.concat(quality, ignore_index=True), sm.output.quality)


run_script(snakemake, main)  # noqa: F821
