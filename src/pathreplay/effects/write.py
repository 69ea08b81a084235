"""Write one source feature's effects as they are computed, a layer at a time: memory stays at
one layer's rows whatever the study's size.

Upstream rows go straight to their Parquet file. Downstream rows need q_within_source, a BH over
all of the source's downstream p: they are staged (Arrow IPC stream, uncompressed, next to the
output) while only p, the condition's code and the real flag are kept, then q is computed once
(effects.layers.q_within_source, as feature_effects does) and the staged rows are written with it.
Both files appear under their final names only when complete (io.atomic_path)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..io import atomic_path
from .layers import empty_rows, q_within_source, within_source


class _Parquet:
    """A Parquet file written frame by frame (schema and pandas metadata from the first)."""

    def __init__(self, path: Path) -> None:
        self.path, self.writer, self.rows = path, None, 0

    def write(self, frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table)
        self.rows += len(frame)

    def close(self, empty: pd.DataFrame) -> None:
        if self.writer is None:
            empty.to_parquet(self.path, index=False)
        else:
            self.writer.close()


def write_effects(layers: Iterable[tuple[int, pd.DataFrame]], source_layer: int, source_feature: int,
                  effects: str | os.PathLike[str], upstream: str | os.PathLike[str]) -> dict[str, int]:
    """Write effects.layers.layer_effects' layers: those downstream of the source with q_within_source to
    `effects`, the others to `upstream`; the same rows, columns and values as feature_effects'
    two tables. Returns counts: effects and upstream rows, tests, real tests."""
    with atomic_path(upstream) as up_tmp, atomic_path(effects) as eff_tmp:
        up = _Parquet(up_tmp)
        staged = Path(tempfile.mkstemp(prefix=f".{Path(effects).name}.", suffix=".staged", dir=eff_tmp.parent)[1])
        try:
            kept, like = _stage(layers, source_layer, up, staged)
            up.close(like if like is not None else empty_rows(source_layer, source_feature))
            p, cond, real = (np.concatenate(x) if x else np.zeros(0) for x in kept)
            q = q_within_source(p, cond, real.astype(bool))
            down = _finish(staged, q, eff_tmp, source_layer, source_feature, like)
        finally:
            staged.unlink(missing_ok=True)
    return {"effects_rows": down, "upstream_rows": up.rows, "tests": int(np.isfinite(p).sum()),
            "real_tests": int(np.isfinite(p[real.astype(bool)]).sum())}


def _stage(layers: Iterable[tuple[int, pd.DataFrame]], source_layer: int, up: _Parquet,
           staged: Path) -> tuple[tuple[list, list, list], pd.DataFrame | None]:
    """Upstream layers to `up`, downstream ones to the staged stream; returns the downstream
    rows' (p, condition code, real) per layer and an empty frame of the rows' columns."""
    ps, conds, reals, like, writer = [], [], [], None, None
    with pa.OSFile(str(staged), "wb") as sink:
        for target, rows in layers:
            like = rows.iloc[:0] if like is None else like
            if target < source_layer:
                up.write(rows)
                continue
            table = pa.Table.from_pandas(rows, preserve_index=False)
            writer = writer or pa.ipc.new_stream(sink, table.schema)
            writer.write_table(table)
            ps.append(rows["p_value"].to_numpy(float))
            conds.append(rows["condition"].cat.codes.to_numpy())
            reals.append((rows["control"] == "real").to_numpy())
        if writer is not None:
            writer.close()
    return (ps, conds, reals), like


def _finish(staged: Path, q: np.ndarray, path: Path, source_layer: int, source_feature: int,
            like: pd.DataFrame | None) -> int:
    """The staged downstream rows with q appended, to `path` (Parquet); returns the row count."""
    empty = within_source(like if like is not None else empty_rows(source_layer, source_feature))
    if not len(q):
        empty.to_parquet(path, index=False)
        return 0
    schema = pa.Schema.from_pandas(empty, preserve_index=False)
    done = 0
    with pa.OSFile(str(staged), "rb") as src, pq.ParquetWriter(path, schema) as out:
        for batch in pa.ipc.open_stream(src):
            t = pa.Table.from_batches([batch]).append_column("q_within_source", pa.array(q[done: done + len(batch)]))
            out.write_table(t.replace_schema_metadata(schema.metadata))
            done += len(batch)
    return done
