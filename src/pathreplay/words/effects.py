"""Per (feature, contrast, text, word): counts, the 2x2 test or the dose trend, the log-odds ratio
with its prior, and BH q-values within each (feature, contrast, text)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from ..errors import fail
from ..features import feature_name
from ..stats.multiple import bh
from ..stats.tables import chi2_2x2, cochran_armitage, fisher_exact_2x2, log_odds_prior
from .counts import Counts, count_logs, shard_of
from .settings import ORIGINAL_CONTRASTS, TEXTS, Contrast, WordsConfig, level_label

log = logging.getLogger("pathreplay.words")

FC = ["layer", "feature_id", "context"]
EFFECT_COLUMNS = [
    "layer", "feature_id", "context", "contrast", "kind", "text", "word", "stem", "forms",
    "baseline", "patched", "baseline_n", "patched_n", "baseline_count", "patched_count",
    "baseline_freq", "patched_freq", "log_odds_ratio", "log_odds_z", "effect", "p_value", "q_value",
    "test", "level_values", "level_n", "level_count",
]


def _const(value: str, n: int) -> np.ndarray:
    """A column of one string."""
    return np.full(n, value, dtype=object)


def _in_context(groups: pd.DataFrame, c: Contrast) -> pd.DataFrame:
    """The groups a contrast reads: its context's, or every context's."""
    return groups if c.context is None else groups[groups.context == c.context]


def _pairs(g: pd.DataFrame, c: Contrast) -> pd.DataFrame:
    """(feature, context) with their patched and baseline group; a feature without its own
    baseline uses the context's shared one (layer -1, as the replay logs its baselines)."""
    def side(cond: str, role: str) -> pd.DataFrame:
        return g.loc[g.condition == cond, [*FC, "gid", "n"]].rename(columns={"gid": f"gid_{role}", "n": f"n_{role}"})

    base, pairs = side(c.baseline, "b"), side(c.patched, "p")
    pairs = pairs.merge(base, on=FC, how="left")
    missing = pairs.gid_b.isna().to_numpy()
    if missing.any():
        shared = base[base.layer < 0].drop(columns=["layer", "feature_id"]).drop_duplicates("context")
        fill = pairs.loc[missing, ["context"]].merge(shared, on="context", how="left")
        pairs.loc[missing, ["gid_b", "n_b"]] = fill[["gid_b", "n_b"]].to_numpy()
    return pairs.dropna(subset=["gid_b"]).astype({"gid_b": np.int64, "n_b": np.int64})


def _pairwise(counts: Counts, c: Contrast, cfg: WordsConfig) -> pd.DataFrame | None:
    g = _in_context(counts.groups, c)
    pairs = _pairs(g, c)
    if pairs.empty:
        return None
    parts = []
    for role in ("b", "p"):
        part = counts.docs.merge(pairs[[*FC, f"gid_{role}"]], left_on="gid", right_on=f"gid_{role}")
        parts.append(part[[*FC, "text", "word", "docs"]].rename(columns={"docs": f"d_{role}"}))
    m = parts[0].merge(parts[1], on=[*FC, "text", "word"], how="outer").fillna({"d_b": 0, "d_p": 0})
    m = m.merge(pairs[[*FC, "n_b", "n_p"]], on=FC)
    m = m[m.d_b + m.d_p >= cfg.min_count]
    if m.empty:
        return None
    a, c0 = m.d_p.to_numpy(np.int64), m.d_b.to_numpy(np.int64)
    n1, n0 = m.n_p.to_numpy(np.int64), m.n_b.to_numpy(np.int64)
    p = fisher_exact_2x2(a, n1 - a, c0, n0 - c0) if cfg.test == "fisher" else chi2_2x2(a, n1 - a, c0, n0 - c0)
    n = len(m)
    return pd.DataFrame({
        **{k: m[k].to_numpy() for k in [*FC, "text", "word"]},
        "contrast": _const(c.name, n) if c.context else m.context.map(lambda x: f"{x}_{c.name}").to_numpy(object),
        "kind": _const("pairwise", n), "baseline": _const(c.baseline, n), "patched": _const(c.patched, n),
        "baseline_n": n0, "patched_n": n1, "baseline_count": c0, "patched_count": a,
        "p_value": p, "test": _const("fisher_exact" if cfg.test == "fisher" else "chi2_yates", n),
        "effect": a / n1 - c0 / n0, "pool": (a + c0) / (n1 + n0),
    })


def _trend(counts: Counts, cfg: WordsConfig) -> pd.DataFrame | None:
    g = counts.groups.dropna(subset=["level"])
    nlev = g.groupby(FC)["level"].transform("nunique")
    g = g[nlev >= 2].sort_values([*FC, "level"])
    if g.empty:
        return None
    g = g.assign(rank=g.groupby(FC).cumcount())
    fc = g.groupby(FC, sort=False).agg(levels=("level", list), ns=("n", list), K=("level", "size")).reset_index()
    fc["fc"] = np.arange(len(fc))
    g = g.merge(fc[[*FC, "fc"]], on=FC)
    d = counts.docs.merge(g[["gid", "fc", "rank"]], on="gid")
    rows = d.groupby(["fc", "text", "word"], sort=False)
    d["row"] = rows.ngroup()
    keys = d.drop_duplicates("row").sort_values("row")[["row", "fc", "text", "word"]]
    kmax = int(fc.K.max())
    mat = np.zeros((len(keys), kmax), np.int64)
    mat[d.row.to_numpy(), d["rank"].to_numpy()] = d.docs.to_numpy()
    fcs = keys.fc.to_numpy()
    K = fc.K.to_numpy()[fcs]
    x = np.full((len(fc), kmax), np.nan)
    nn = np.zeros((len(fc), kmax), np.int64)
    for i, (lv, ns) in enumerate(zip(fc.levels, fc.ns)):
        x[i, :len(lv)], nn[i, :len(ns)] = lv, ns
    X, Nk = np.nan_to_num(x[fcs]), nn[fcs]
    keep = mat.sum(1) >= cfg.min_count
    mat, X, Nk, K, keys, fcs = mat[keep], X[keep], Nk[keep], K[keep], keys[keep], fcs[keep]
    if not len(keys):
        return None
    _, slope, p = cochran_armitage(mat, Nk, X)
    idx = np.arange(len(keys))
    top = K - 1
    f = fc.iloc[fcs]
    lows, highs = [lv[0] for lv in f.levels], [lv[-1] for lv in f.levels]
    return pd.DataFrame({
        **{k: f[k].to_numpy() for k in FC}, "text": keys.text.to_numpy(), "word": keys.word.to_numpy(),
        "contrast": f.context.map(lambda x: f"{x}_dose").to_numpy(object), "kind": _const("trend", len(f)),
        "baseline": pd.Series(lows).map(level_label).to_numpy(object),
        "patched": pd.Series(highs).map(level_label).to_numpy(object),
        "baseline_n": Nk[idx, 0], "patched_n": Nk[idx, top], "baseline_count": mat[idx, 0],
        "patched_count": mat[idx, top], "effect": slope, "p_value": p,
        "test": _const("cochran_armitage", len(f)), "pool": mat.sum(1) / Nk.sum(1), "level_values": list(f.levels), "level_n": list(f.ns),
        "level_count": [r[:k].tolist() for r, k in zip(mat, K)],
    })


def word_effects(counts: Counts, cfg: WordsConfig, batch_features: int = 256) -> pd.DataFrame:
    """Every tested (feature, contrast, text, word) row with counts, effects, p and q."""
    g = counts.groups
    # Features are independent (tests, priors and q-values are all per feature), so batches of
    # features bound the memory of the joins; shared baselines (layer -1) go with every batch.
    shared = (g.layer < 0).to_numpy()
    feature = g.groupby(["layer", "feature_id"], sort=True).ngroup().to_numpy()
    batch_of_gid = np.full(len(g), -1, np.int64)
    batch_of_gid[g.gid.to_numpy()] = np.where(shared, -1, feature // batch_features)
    docs_batch = batch_of_gid[counts.docs.gid.to_numpy().astype(np.int64)]
    by_batch = dict(iter(counts.docs.groupby(docs_batch, sort=False)))
    shared_docs = by_batch.pop(-1, counts.docs.iloc[:0])
    batches = sorted(set(batch_of_gid[~shared].tolist())) or [0]
    frames = []
    for i, b in enumerate(batches):
        groups = g[(batch_of_gid[g.gid.to_numpy()] == b) | shared]
        docs = pd.concat([by_batch.get(b, counts.docs.iloc[:0]), shared_docs], ignore_index=True)
        out = _effects(Counts(groups, docs, counts.keys, counts.forms), cfg)
        frames.append(out if i == 0 else out[out.layer >= 0])  # shared rows' own tests: once
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_effects()
    out = pd.concat(frames, ignore_index=True)
    labels = np.array([_label(f) for f in counts.forms] + [""], dtype=object)
    forms = np.array(["|".join(f[:6]) for f in counts.forms] + [""], dtype=object)
    keys = np.array(list(counts.keys) + [""], dtype=object)
    w = out.word.to_numpy()
    out["stem"], out["forms"], out["word"] = keys[w], forms[w], labels[w]
    out["text"] = np.array(TEXTS, dtype=object)[out.text.to_numpy(np.int64)]
    return out[EFFECT_COLUMNS].astype(DTYPES).sort_values(SORT, ignore_index=True)


def _effects(counts: Counts, cfg: WordsConfig) -> pd.DataFrame:
    frames = [_pairwise(counts, c, cfg) for c in cfg.contrasts]
    if cfg.levels == "ordered":
        frames.append(_trend(counts, cfg))
    frames = [f for f in frames if f is not None and len(f)]
    if not frames:
        return empty_effects()
    out = pd.concat(frames, ignore_index=True)
    a, n1 = out.patched_count.to_numpy(float), out.patched_n.to_numpy(float)
    c0, n0 = out.baseline_count.to_numpy(float), out.baseline_n.to_numpy(float)
    out["baseline_freq"], out["patched_freq"] = c0 / n0, a / n1
    # The prior is centred on the word's rate over the responses this contrast compares.
    out["log_odds_ratio"], out["log_odds_z"] = log_odds_prior(a, n1, c0, n0, out.pool.to_numpy(),
                                                              cfg.prior_strength)
    family = out.groupby(["layer", "feature_id", "contrast", "text"], sort=False).ngroup().to_numpy()
    out["q_value"] = bh(out.p_value.to_numpy(), family)
    for col in ("level_values", "level_n", "level_count", "stem", "forms"):
        if col not in out:
            out[col] = None
    return out[EFFECT_COLUMNS]


SORT = ["layer", "feature_id", "contrast", "text", "p_value", "word"]
_STRINGS = ("context", "contrast", "kind", "text", "word", "stem", "forms", "baseline", "patched", "test")
DTYPES = {**dict.fromkeys(_STRINGS, "str"), "layer": "int64", "feature_id": "int64", "baseline_n": "int64", "patched_n": "int64",
           "baseline_count": "int64", "patched_count": "int64", "baseline_freq": "float64",
           "patched_freq": "float64", "log_odds_ratio": "float64", "log_odds_z": "float64",
           "effect": "float64", "p_value": "float64", "q_value": "float64"}


def empty_effects() -> pd.DataFrame:
    """A word-effects table with no rows and the right columns."""
    return pd.DataFrame({c: pd.Series(dtype=DTYPES.get(c, object)) for c in EFFECT_COLUMNS})


def _label(forms: Sequence[str]) -> str:
    """A stable display word for a stem: its shortest surface form, ties alphabetical."""
    return min(forms, key=lambda s: (len(s), s)) if forms else ""


def relabel(effects: pd.DataFrame) -> pd.DataFrame:
    """Give each stem one label across shards (shards see different surface forms)."""
    if effects.empty:
        return effects
    forms = effects.groupby("stem")["forms"].agg(lambda s: sorted({f for x in s for f in x.split("|") if f}))
    label = {k: _label(v) for k, v in forms.items()}
    return effects.assign(word=effects.stem.map(label)).astype(DTYPES)


def unmatched(counts: Counts, cfg: WordsConfig) -> list[Contrast]:
    """The contrasts that match no trials of the whole logs (every shard's features, within
    words.contexts): no feature's trial in the patched condition with baseline trials in its
    context."""
    seen = _in_contexts(counts, cfg)
    out = []
    for c in cfg.contrasts:
        ctxs = {x for x, cond, feature in seen if cond == c.patched and feature and c.context in (None, x)}
        if not any((x, c.baseline, f) in seen for x in ctxs for f in (False, True)):
            out.append(c)
    return out


def _in_contexts(counts: Counts, cfg: WordsConfig) -> frozenset[tuple[str, str, bool]]:
    return frozenset(k for k in counts.seen if not cfg.contexts or k[0] in cfg.contexts)


def refuse_empty(counts: Counts, cfg: WordsConfig) -> None:
    """Unless words.allow_empty: refuse logs that hold no trials (in words.contexts), a contrast
    of words.contrasts that matches no trials, and, with the original four contrasts and no
    levels, logs that none of them matches. The same for every shard (counts.read and .seen
    are the whole logs')."""
    if cfg.allow_empty:
        return
    fix = "or set words.allow_empty: true to accept an empty result"
    seen = _in_contexts(counts, cfg)
    conditions = _short(sorted({cond for _, cond, _ in seen}))
    if not counts.read:
        fail("config words.logs", "the logs hold no trials", f"check the files it names, {fix}")
    if not seen:
        fail("config words.contexts", f"no trial of the logs is in {list(cfg.contexts)} (they have "
             f"{_short(sorted({x for x, _, _ in counts.seen}))})", f"list contexts the logs have, {fix}")
    bad = unmatched(counts, cfg)
    if cfg.contrasts == ORIGINAL_CONTRASTS:
        if cfg.levels == "none" and len(bad) == len(cfg.contrasts):
            fail("config words.contrasts", f"none of the original four contrasts matches the logs' conditions "
                 f"({conditions})", f"list contrasts of your conditions under words.contrasts, {fix}")
    elif bad:
        c = bad[0]
        fail(f"config words.contrasts[{cfg.contrasts.index(c)}] ({c.name})",
             f"matches no trials: no feature's {c.patched!r} trials beside {c.baseline!r} trials"
             f"{f' in context {c.context!r}' if c.context else ''} (the logs' conditions: {conditions})",
             f"name conditions the logs have (words.columns.condition maps the column), {fix}")


def _short(items: Sequence[object], n: int = 8) -> str:
    head = ", ".join(map(str, list(items)[:n]))
    return head + (f", ... ({len(items)} in all)" if len(items) > n else "")


def untested(counts: Counts, cfg: WordsConfig) -> list[str]:
    """What the logs leave untested, said rather than dropped: contrasts that match no trials,
    features of a contrast without the baseline it needs, and (ordered levels) features with one
    level only."""
    g = counts.groups[counts.groups.layer >= 0]
    out = []
    empty = unmatched(counts, cfg)
    for c in cfg.contrasts:
        mine = _in_context(counts.groups, c)
        pairs = _pairs(mine, c)
        treated = mine[(mine.condition == c.patched) & (mine.layer >= 0)]
        if c in empty:
            out.append(f"contrast {c.name} ({c.baseline} vs {c.patched}) matches no trials")
        elif len(pairs) < len(treated):
            lost = treated.merge(pairs[FC], on=FC, how="left", indicator=True)
            lost = lost.loc[lost["_merge"] == "left_only", ["layer", "feature_id"]]
            names = sorted({feature_name(a, b) for a, b in lost.itertuples(index=False)})
            out.append(f"contrast {c.name}: {len(names)} features have no {c.baseline!r} trials "
                       f"({', '.join(names[:5])})")
    if cfg.levels == "ordered" and len(g):
        one = g.groupby(["layer", "feature_id", "context"])["level"].nunique()
        one = one[one < 2]
        if len(one):
            out.append(f"{len(one)} (feature, context) pairs have a single level, so no trend "
                       f"({', '.join(f'{feature_name(a, b)} {c}' for a, b, c in one.index[:5])})")
    return out


def run_shard(paths: Sequence[str], cfg: WordsConfig, answer_end: Callable[[str], int],
              shard: int | None = None) -> pd.DataFrame:
    """Count and test the features of one shard (all features when `shard` is None); refuse
    logs that leave nothing to test (refuse_empty), and say in the log what they leave
    untested. `answer_end`: where a response's answer ends (count_logs)."""
    counts = count_logs(paths, cfg, answer_end, shard)
    refuse_empty(counts, cfg)
    for what in untested(counts, cfg):
        log.warning("not tested: %s", what)
    out = word_effects(counts, cfg)
    if shard is not None and shard != shard_of(-1, -1, cfg.shards):
        out = out[out.layer >= 0].reset_index(drop=True)  # every shard counts the shared baselines
    return out
