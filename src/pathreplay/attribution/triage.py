"""Attribution as triage: had only the sources attribution ranks highest been replayed, how many
of the replay's edges would the run have found?

Per variant that runs blocks and readout, each source's score is the number of targets whose
predicted computed part (any real condition) is larger than min_delta, ties broken by the sum of
|predicted computed part|; the `screen_top` best are kept. recall = headline edges (computed and
specific, forced scope) of the kept sources / those of every source; recall_random = screen_top /
sources, the expected recall of keeping screen_top sources at random, when edges spread evenly."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..features import feature_name
from ..pathways.edges import headline
from .agreement import READOUTS

TRIAGE_COLUMNS = ["variant", "readout", "screen_top", "sources", "kept", "edges", "edges_kept", "recall",
                  "recall_random", "sources_with_edges", "sources_with_edges_kept"]


def triage(pred: pd.DataFrame, edges: pd.DataFrame, sources: list[str], screen_top: int, min_delta: float
           ) -> pd.DataFrame:
    """TRIAGE_COLUMNS rows (module docstring); `sources`: every replayed source's name."""
    e = edges[(edges["scope"] == "forced")]
    e = e[headline(e)]
    found = pd.Series([feature_name(a, b) for a, b in zip(e["source_layer"], e["source_feature"])],
                      dtype=object).value_counts().reindex(sources, fill_value=0)
    rows = []
    real = pred[pred["control"] == "real"]
    real = real.assign(source=[feature_name(a, b) for a, b in zip(real["source_layer"], real["source_feature"])])
    for variant in [v for v in ("frozen", "jacobian") if v in set(pred["variant"])]:
        for readout, suffix in READOUTS.items():
            p = real[real["variant"] == variant]
            size = p[f"computed{suffix}"].abs()
            score = pd.DataFrame({"n": (size > min_delta).groupby(p["source"]).sum(),
                                  "sum": size.groupby(p["source"]).sum()}).reindex(sources, fill_value=0)
            order = score.assign(name=score.index).sort_values(["n", "sum", "name"], ascending=[False, False, True])
            kept = list(order.index[:screen_top])
            total = int(found.sum())
            rows.append({"variant": variant, "readout": readout, "screen_top": screen_top, "sources": len(sources),
                         "kept": ",".join(kept), "edges": total, "edges_kept": int(found[kept].sum()),
                         "recall": float(found[kept].sum() / total) if total else np.nan,
                         "recall_random": min(screen_top, len(sources)) / len(sources) if sources else np.nan,
                         "sources_with_edges": int((found > 0).sum()),
                         "sources_with_edges_kept": int((found[kept] > 0).sum())})
    return pd.DataFrame(rows, columns=TRIAGE_COLUMNS)
