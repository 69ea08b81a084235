import pandas as pd

from pathreplay.effects.codes import code_layer
from pathreplay.io import write_table
from pathreplay.sae.encode import load_partial, log_quality, merge_quality
from pathreplay.workflow import run_script


def main(sm):
    parts = {}  # layer -> its baseline parts' partial sums, in input order (prompts sorted)
    for f in sm.input:
        parts.setdefault(code_layer(f), []).append(load_partial(f))
    rows = [merge_quality(layer, ps) for layer, ps in parts.items()]
    for q in rows:
        log_quality(q)
    write_table(pd.DataFrame([q._asdict() for q in rows]), sm.output[0])


run_script(snakemake, main)  # noqa: F821
