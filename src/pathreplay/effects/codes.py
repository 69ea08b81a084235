"""The encode stage's codes as effects read them: a layer's codes files, of only the parts and rows
a source needs, read when the layer is reached (`Codes`), and as dense [trials, targets] matrices
(`dense`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds


def code_layer(path: str | Path) -> int:
    """The target layer of a codes file: results/encode/patched/s000/L<layer>.parquet -> layer."""
    return int(Path(path).stem.removeprefix("L"))


class Codes(Mapping[int, pd.DataFrame]):
    """Target layer -> code rows (part, row, feature, last, gen) of the given parts, read from the
    layer's files when asked for, so effects hold one layer's codes at a time. The workflow's
    files (results/encode/<kind>/<job>/L<layer>.parquet) hold their `part` column (one
    dictionary entry on disk) and are read through one filter: the given parts, and of a part
    named in `rows` only those rows (a shard holds every trial of its features; a feature reads
    its own). A file without the column is the part its path names."""

    def __init__(self, paths: Iterable[str | Path], parts: list[str],
                 rows: Mapping[str, Iterable[int]] | None = None) -> None:
        self.files: dict[int, list[Path]] = {}
        for f in paths:
            self.files.setdefault(code_layer(f), []).append(Path(f))
        self.parts = parts
        self.rows = {p: sorted(set(map(int, r))) for p, r in (rows or {}).items()}
        self.keep = self._filter()  # built once: every file with a `part` column reads through it

    def _rows(self, part: str) -> ds.Expression | None:
        return ds.field("row").isin(self.rows[part]) if part in self.rows else None

    def _filter(self) -> ds.Expression | None:
        keep = None
        for p in self.parts:
            one = ds.field("part") == p
            extra = self._rows(p)
            one = one if extra is None else one & extra
            keep = one if keep is None else keep | one
        return keep

    def _read(self, f: Path) -> pd.DataFrame | None:
        # `part` as one categorical over self.parts in every frame, so the layer's frames
        # concatenate as codes, not as millions of strings.
        kind = pd.CategoricalDtype(self.parts)
        data = ds.dataset(str(f))
        if "part" in data.schema.names:
            keep = self.keep
            df = (data.to_table(filter=keep) if keep is not None else data.schema.empty_table()).to_pandas()
            col = df["part"]
            return df.assign(part=col.cat.set_categories(self.parts) if isinstance(col.dtype, pd.CategoricalDtype)
                             else col.astype(kind))
        part = f"{f.parent.parent.name}/{f.parent.name}"
        if part not in self.parts:
            return None
        df = data.to_table(filter=self._rows(part)).to_pandas()
        df.insert(0, "part", pd.Categorical.from_codes(np.full(len(df), self.parts.index(part), np.int32), dtype=kind))
        return df

    def __getitem__(self, layer: int) -> pd.DataFrame:
        fs = [df for df in map(self._read, self.files[layer]) if df is not None]
        if not fs:
            return pd.DataFrame(columns=["part", "row", "feature", "last", "gen"])
        return fs[0] if len(fs) == 1 else pd.concat(fs, ignore_index=True)

    def __iter__(self) -> Iterator[int]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


def read_codes(paths: Iterable[str | Path], parts: list[str],
               rows: Mapping[str, Iterable[int]] | None = None) -> Codes:
    """The codes of the given parts per target layer, layers in file order (Codes)."""
    return Codes(paths, parts, rows)


def _row_index(codes: pd.DataFrame, pos: Mapping[tuple[str, int], int]) -> np.ndarray:
    """Each code row's number in `pos` (-1: not one of these trials), without a Python loop over
    code rows: the parts as categorical codes, then one lookup table over (part, row)."""
    parts = sorted({p for p, _ in pos})
    which = {p: i for i, p in enumerate(parts)}
    top = np.zeros(len(parts), np.int64)
    for p, r in pos:
        top[which[p]] = max(top[which[p]], r + 1)
    offset = np.r_[0, np.cumsum(top)[:-1]].astype(np.int64)
    lut = np.full(int(top.sum()), -1, np.int64)
    for (p, r), i in pos.items():
        lut[offset[which[p]] + r] = i
    col = codes["part"]
    if isinstance(col.dtype, pd.CategoricalDtype):  # map the categories, not the rows
        of_cat = np.array([which.get(str(c), -1) for c in col.cat.categories], np.int64)
        part = np.where(col.cat.codes.to_numpy() >= 0, of_cat[np.maximum(col.cat.codes.to_numpy(), 0)], -1)
    else:
        part = col.astype(str).map(which).fillna(-1).to_numpy(np.int64)
    row = codes["row"].to_numpy(np.int64)
    ok = (part >= 0) & (row >= 0) & (row < top[np.maximum(part, 0)])
    idx = np.full(len(codes), -1, np.int64)
    idx[ok] = lut[offset[part[ok]] + row[ok]]
    return idx


def dense(codes: pd.DataFrame, pos: Mapping[tuple[str, int], int], also: pd.DataFrame | None = None
          ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(feats, {last, gen}, {last, gen} of `also`): the features any of the rows `pos` numbers
    has in `codes` or `also` (ascending, in the codes' own integer type), and for each of the two
    the [len(pos), len(feats)] matrices of their values, in the codes' float type (float32 from
    encode: lossless, half float64's memory); `also` (the read-through codes) is all zeros when
    None. The features by a presence table (one pass, no sort); each value written at
    row * len(feats) + column."""
    frames = [codes] + ([also] if also is not None else [])
    found = []
    for c in frames:
        idx = _row_index(c, pos) if len(c) else np.zeros(0, np.int64)
        found.append((idx, idx >= 0))
    fs = [c["feature"].to_numpy()[sel] for c, (_, sel) in zip(frames, found)]
    top = max((int(f.max()) + 1 for f in fs if len(f)), default=0)
    present = np.zeros(top, bool)
    for f in fs:
        present[f] = True
    feats = np.flatnonzero(present).astype(fs[0].dtype if len(fs[0]) or len(fs) == 1 else fs[-1].dtype)
    column = np.cumsum(present) - 1
    out = []
    for c, (idx, sel), f in zip(frames, found, fs):
        flat = idx[sel] * len(feats) + column[f]
        mats = {}
        for name in ("last", "gen"):
            v = c[name].to_numpy()[sel]
            m = np.zeros(len(pos) * len(feats), np.result_type(v.dtype, np.float32))
            m[flat] = v
            mats[name] = m.reshape(len(pos), len(feats))
        out.append(mats)
    if also is None:
        out.append({k: np.zeros_like(v) for k, v in out[0].items()})
    return feats, out[0], out[1]
