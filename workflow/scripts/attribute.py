import logging
import time

import pandas as pd

from pathreplay.attribution.predict import AttributionSettings, ChainHold, predict_source, source_of
from pathreplay.features import parse_feature_name
from pathreplay.io import read_table, read_tables, write_table
from pathreplay.pathways.mediation import to_mediate
from pathreplay.replay.plan import parse_conditions
from pathreplay.replay.prompts import read_prompts
from pathreplay.sae.exact import SAESource
from pathreplay.workflow import open_model, run_script


def holds(chains, name, saes, dev):
    """The mediation's (condition, mediator) holds of the chains it mediates that start at `name`."""
    mine = chains[chains["a"] == name]
    out = []
    for (cond, mid), g in mine.assign(mid=mine["mids"].str.split("|")).explode("mid").groupby(["condition", "mid"]):
        layer, fid = parse_feature_name(mid)
        ends = tuple((c, *parse_feature_name(c)) for c in sorted(set(g["c"])))
        out.append(ChainHold(str(cond), mid, layer, saes.feature(layer, fid, dev),
                             tuple((c, b, saes.feature(b, i, dev)) for c, b, i in ends)))
    return out


def main(sm):
    p = sm.params
    name = sm.wildcards.feature
    a = p.attribution
    settings = AttributionSettings(**p.settings, method=a["method"], variants=tuple(a["variants"]))
    texts = {q.id: q.text for q in read_prompts(sm.input.prompts)}
    row = pd.DataFrame(p.features).set_index("feature").loc[name]  # the plan's row of the feature
    baseline = read_tables(sm.input.baseline)
    # the tangent in float32 whatever the replay's dtype: a bf16 tangent would be rounding
    model, tok = open_model(p.device, p.model["path"], "float32", p.model["trust_remote_code"])
    dev = next(model.parameters()).device
    saes = SAESource(**p.saes)
    layer, fid = int(row["layer"]), int(row["feature_id"])
    src = source_of(name, layer, saes.feature(layer, fid, dev), row, parse_conditions(p.conditions), p.seed)
    layers = {b: saes.load(b, dev) for b in p.layers if b > layer}
    chains = holds(to_mediate(read_table(sm.input.chains), p.max_chains), name, saes, dev)
    t0 = time.perf_counter()
    pred = predict_source(model, tok, src, baseline, texts, layers, settings, chains)
    logging.info("%s: %d (trial, patch) rows, %d forced passes, %.1f s; %d predictions, %d chain holds", name,
                 pred.rows, pred.passes, time.perf_counter() - t0, len(pred.table), len(chains))
    write_table(pred.table, sm.output.predictions)
    write_table(pred.shares, sm.output.shares)


run_script(snakemake, main)  # noqa: F821
