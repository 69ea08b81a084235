"""Words each feature's patch makes the model say more or less (RQ2), from logged trials.

Trials stream in chunks; each response counts once per word it contains ("says the word or
not"), in its full text and in its text cut where the answer ends (`decision_boundary`). Only
counts are kept: responses per (feature, context, condition) and, per word, how many of those
responses say it. Per (feature, contrast, text, word) the statistics are a 2x2 test on
responses (Fisher's exact or chi-square), the log-odds ratio of saying the word with an
informative Beta/Dirichlet prior and its z-score (Monroe, Colaresi & Quinn 2008, "Fightin'
Words", applied to response counts), a Cochran-Armitage trend test over ordered levels, and
Benjamini-Hochberg q-values within each (feature, contrast, text).
"""

from __future__ import annotations

import glob
import gzip
import json
import logging
import math
import os
import re
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import pandas as pd
from scipy import special, stats as sps

from .decision import decision_boundary
from .errors import fail

log = logging.getLogger("pathreplay.words")

# ----------------------------------------------------------------------------- configuration


class Contrast(NamedTuple):
    """Baseline vs patched condition; with no context it is tested within every context."""

    name: str
    baseline: str
    patched: str
    context: str | None = None


# The original analysis' four comparisons and its JSON key prefixes.
ORIGINAL_CONTRASTS = (
    Contrast("risky_feature", "safe_baseline", "safe_with_risky_patch", "safe"),
    Contrast("safe_feature", "risky_baseline", "risky_with_safe_patch", "risky"),
    Contrast("safe_amplification", "safe_baseline", "safe_with_safe_patch", "safe"),
    Contrast("risky_amplification", "risky_baseline", "risky_with_risky_patch", "risky"),
)
# The original also kept the top 50 effects of its first two comparisons under these keys.
ORIGINAL_ALL_KEYS = {"risky_feature": "safe_risky_patch_all", "safe_feature": "risky_safe_patch_all"}

# The original analysis' stopwords, kept as the default so its vocabulary stays comparable.
ORIGINAL_STOPWORDS = frozenset("""
the a an and or but in on at to for of with by from up about into through during before after
above below between under again further then once here there when where why how all both each
few more most other some such no nor not only own same so than too very can will just should now
""".split())

CANONICAL = ("layer", "feature_id", "feature", "context", "condition", "level", "response", "trial")
TEXTS = ("cut", "full")


class WordsConfig(NamedTuple):
    """Settings of the word analysis (config section `words`)."""

    logs: tuple[str, ...] = ()
    columns: Mapping[str, str] = {}
    contexts: tuple[str, ...] = ()
    contrasts: tuple[Contrast, ...] = ORIGINAL_CONTRASTS
    levels: str = "none"
    texts: tuple[str, ...] = TEXTS
    stopwords: frozenset[str] = ORIGINAL_STOPWORDS
    min_length: int = 3
    min_count: int = 5
    stem: bool = True
    test: str = "fisher"
    prior_strength: float = 10.0
    alpha: float = 0.05
    top_words: int = 20
    shards: int = 4
    top_features_plot: int = 12
    chunk_rows: int = 20_000


def _level_label(x: Any) -> str:
    """One spelling per numeric level, so `1`, `1.0` and "1.00" name the same condition."""
    try:
        return format(float(x), "g")
    except (TypeError, ValueError):
        return str(x)


def words_config(section: Mapping[str, Any] | None) -> WordsConfig:
    """Build a WordsConfig from the `words` config section, defaults filled in."""
    s = dict(section or {})
    d = WordsConfig()
    known = set(WordsConfig._fields)
    for key in s:
        if key not in known:
            fail(f"config words.{key}", "unknown key", f"use one of {', '.join(sorted(known))}")
    columns = dict(s.get("columns") or {})
    for canon in columns:
        if canon not in CANONICAL:
            fail(f"config words.columns.{canon}", "not a field the analysis reads",
                 f"map one of {', '.join(CANONICAL)} to a column of your logs")
    levels = str(s.get("levels", d.levels))
    if levels not in ("none", "ordered"):
        fail("config words.levels", f"{levels!r} is not none or ordered", "set words.levels: ordered or none")
    raw = s.get("contrasts")
    contrasts = d.contrasts
    if raw is not None:
        out = []
        for i, c in enumerate(raw):
            if not isinstance(c, Mapping) or not {"name", "baseline", "patched"} <= set(c):
                fail(f"config words.contrasts[{i}]", "needs name, baseline and patched",
                     "write {name: ..., baseline: <condition>, patched: <condition>, context: <optional>}")
            ctx = c.get("context")
            out.append(Contrast(str(c["name"]), _level_label(c["baseline"]), _level_label(c["patched"]),
                                None if ctx is None else str(ctx)))
        contrasts = tuple(out)
    texts = tuple(s.get("texts", d.texts))
    if not texts or not set(texts) <= set(TEXTS):
        fail("config words.texts", f"{list(texts)} is not a list of cut / full", "set words.texts: [cut, full]")
    sw = s.get("stopwords", "default")
    if sw == "default":
        stopwords = ORIGINAL_STOPWORDS
    elif sw in ("none", None):
        stopwords = frozenset()
    elif isinstance(sw, (list, tuple)):
        stopwords = frozenset(str(w).lower() for w in sw)
    else:
        fail("config words.stopwords", f"{sw!r} is not default, none or a list", "give a list of words")
    test = str(s.get("test", d.test))
    if test not in ("fisher", "chi2"):
        fail("config words.test", f"{test!r} is not fisher or chi2", "set words.test: fisher")
    cfg = WordsConfig(
        logs=tuple(str(p) for p in (s.get("logs") or ())), columns=columns,
        contexts=tuple(str(c) for c in (s.get("contexts") or ())), contrasts=contrasts, levels=levels,
        texts=texts, stopwords=stopwords, min_length=int(s.get("min_length", d.min_length)),
        min_count=int(s.get("min_count", d.min_count)), stem=bool(s.get("stem", d.stem)), test=test,
        prior_strength=float(s.get("prior_strength", d.prior_strength)), alpha=float(s.get("alpha", d.alpha)),
        top_words=int(s.get("top_words", d.top_words)), shards=int(s.get("shards", d.shards)),
        top_features_plot=int(s.get("top_features_plot", d.top_features_plot)),
        chunk_rows=int(s.get("chunk_rows", d.chunk_rows)))
    for key in ("min_count", "shards", "chunk_rows"):
        if getattr(cfg, key) < 1:
            fail(f"config words.{key}", "must be at least 1", f"set words.{key} to a positive integer")
    if not 0 < cfg.alpha < 1 or cfg.prior_strength <= 0:
        fail("config words.alpha / prior_strength", "alpha must lie in (0, 1) and prior_strength be > 0",
             "use e.g. alpha: 0.05, prior_strength: 10")
    return cfg


# ----------------------------------------------------------------------------- words


_IRREGULAR = {
    "won": "win", "lost": "lose", "chose": "choose", "chosen": "choose", "paid": "pay", "made": "make",
    "went": "go", "gone": "go", "got": "get", "gotten": "get", "gave": "give", "given": "give",
    "took": "take", "taken": "take", "had": "have", "has": "have", "did": "do", "does": "do",
    "was": "be", "were": "be", "been": "be", "are": "be", "spun": "spin", "spent": "spend",
    "bought": "buy", "felt": "feel", "thought": "think", "knew": "know", "known": "know", "said": "say",
    "ran": "run", "began": "begin", "begun": "begin", "wagered": "wager",
}


def _cons(w: str, i: int) -> bool:
    ch = w[i]
    if ch in "aeiou":
        return False
    return ch != "y" or i == 0 or not _cons(w, i - 1)


def _measure(w: str) -> int:
    """Porter's m: the number of vowel-consonant runs."""
    m, prev_vowel = 0, False
    for i in range(len(w)):
        c = _cons(w, i)
        if c and prev_vowel:
            m += 1
        prev_vowel = not c
    return m


def _has_vowel(w: str) -> bool:
    return any(not _cons(w, i) for i in range(len(w)))


def _cvc(w: str) -> bool:
    n = len(w)
    return n >= 3 and _cons(w, n - 3) and not _cons(w, n - 2) and _cons(w, n - 1) and w[-1] not in "wxy"


def _double(w: str) -> bool:
    return len(w) >= 2 and w[-1] == w[-2] and _cons(w, len(w) - 1)


def stem(word: str) -> str:
    """Rule-based grouping key (Porter steps 1a-1c and 5, plus irregular verbs): bet/bets/betting -> bet."""
    w = _IRREGULAR.get(word, word)
    if len(w) <= 2:
        return w
    if w.endswith("sses") or w.endswith("ies"):
        w = w[:-2]
    elif w.endswith("s") and not w.endswith("ss"):
        w = w[:-1]
    trimmed = False
    if w.endswith("eed"):
        if _measure(w[:-3]) > 0:
            w = w[:-1]
    elif w.endswith("ed") and _has_vowel(w[:-2]):
        w, trimmed = w[:-2], True
    elif w.endswith("ing") and _has_vowel(w[:-3]):
        w, trimmed = w[:-3], True
    if trimmed:
        if w.endswith(("at", "bl", "iz")):
            w += "e"
        elif _double(w) and w[-1] not in "lsz":
            w = w[:-1]
        elif _measure(w) == 1 and _cvc(w):
            w += "e"
    if w.endswith("y") and _has_vowel(w[:-1]):
        w = w[:-1] + "i"
    if w.endswith("e"):
        m = _measure(w[:-1])
        if m > 1 or (m == 1 and not _cvc(w[:-1])):
            w = w[:-1]
    if w.endswith("ll") and _measure(w) > 1:
        w = w[:-1]
    return w


_ALPHA = re.compile(r"[a-z]+")
_DOLLAR = re.compile(r"\$\s?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?")


class Tokenizer:
    """Distinct word ids of a text: case-folded letters-only words (stopwords and short ones
    dropped, stems grouped) and `$` amounts as tokens of their own ("$10.00" -> "$10")."""

    def __init__(self, stopwords: frozenset[str] = ORIGINAL_STOPWORDS, min_length: int = 3,
                 use_stem: bool = True) -> None:
        self.stopwords, self.min_length, self.use_stem = stopwords, min_length, use_stem
        self.keys: list[str] = []  # word id -> grouping key (stem or `$` amount)
        self._ids: dict[str, int] = {}
        self._surface: dict[str, int] = {}  # surface form -> word id, -1 when dropped

    def _word(self, surface: str) -> int:
        keep = len(surface) >= self.min_length and surface not in self.stopwords
        return self._intern(surface, (stem(surface) if self.use_stem else surface) if keep else None)

    def _amount(self, whole: str, frac: str) -> int:
        amount = "$" + whole.replace(",", "")
        if frac and frac.strip("0"):
            amount += "." + frac.rstrip("0")
        wid = self._surface.get(amount)
        return self._intern(amount, amount) if wid is None else wid

    def _intern(self, surface: str, key: str | None) -> int:
        wid = -1
        if key is not None:
            wid = self._ids.get(key, -1)
            if wid < 0:
                wid = self._ids[key] = len(self.keys)
                self.keys.append(key)
        self._surface[surface] = wid
        return wid

    def ids(self, text: str) -> tuple[int, ...]:
        low = text.lower()
        surf = self._surface
        out = {surf[w] if w in surf else self._word(w) for w in set(_ALPHA.findall(low))}
        if "$" in low:
            out.update(self._amount(w, f) for w, f in set(_DOLLAR.findall(low)))
        out.discard(-1)
        return tuple(out)

    def form_lists(self) -> list[list[str]]:
        """Per word id, the surface forms seen, shortest first."""
        forms: list[list[str]] = [[] for _ in self.keys]
        for surface, wid in self._surface.items():
            if wid >= 0:
                forms[wid].append(surface)
        return [sorted(f, key=lambda s: (len(s), s)) for f in forms]


# ----------------------------------------------------------------------------- reading


def log_paths(patterns: Sequence[str], repo: Path | None = None) -> list[str]:
    """Expand `words.logs` globs (relative to the working directory, else `repo`), sorted and
    deduplicated; a pattern that matches nothing is a user error."""
    out: list[str] = []
    for pat in patterns:
        bases = [Path(pat)] if os.path.isabs(pat) else [Path.cwd() / pat] + ([repo / pat] if repo else [])
        hits: list[str] = []
        for b in bases:
            hits = sorted(glob.glob(str(b), recursive=True))
            if hits:
                break
        if not hits:
            fail(f"config words.logs: {pat!r}", "matches no file", "fix the path or glob (relative to the working directory)")
        out.extend(h for h in hits if h not in out)
    return out


def _format(path: str) -> str:
    name = path[:-3] if path.endswith(".gz") else path
    suffix = Path(name).suffix.lower()
    kinds = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv",
             ".parquet": "parquet", ".pq": "parquet"}
    if suffix not in kinds:
        fail(path, f"unknown log format {suffix!r}", "use .json (a list of trials), .jsonl, .csv, .tsv or .parquet")
    return kinds[suffix]


def _open(path: str) -> IO[str]:
    return gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")


def _source_columns(cfg: WordsConfig) -> dict[str, str]:
    return {c: cfg.columns.get(c, c) for c in CANONICAL}


def _chunks_json(path: str, chunk: int) -> Iterator[list[dict]]:
    with _open(path) as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as e:
            fail(f"{path}:{e.lineno}", f"not valid JSON ({e.msg})", "give a JSON list of trial objects")
    if isinstance(data, Mapping) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))
    if not isinstance(data, list):
        fail(path, "top level is not a list", "give a JSON list of trial objects (or use .jsonl)")
    for i in range(0, len(data), chunk):
        yield data[i:i + chunk]


def _chunks_jsonl(path: str, chunk: int) -> Iterator[list[dict]]:
    def parse(lines: list[str], numbers: list[int]) -> list[dict]:
        try:  # one call per chunk is ~1.5x faster than a call per line
            return json.loads("[" + ",".join(lines) + "]")
        except json.JSONDecodeError:
            for n, line in zip(numbers, lines):
                try:
                    json.loads(line)
                except json.JSONDecodeError as e:
                    fail(f"{path}:{n}", f"not valid JSON ({e.msg})", "write one JSON object per line")
            raise

    lines: list[str] = []
    numbers: list[int] = []
    with _open(path) as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                lines.append(line)
                numbers.append(n)
            if len(lines) >= chunk:
                yield parse(lines, numbers)
                lines, numbers = [], []
    if lines:
        yield parse(lines, numbers)


def _columns_chunks(path: str, kind: str, wanted: set[str], chunk: int) -> Iterator[dict[str, list]]:
    """Chunks as {source column: values} for the wanted columns that the file has."""
    if kind in ("json", "jsonl"):
        reader = _chunks_json(path, chunk) if kind == "json" else _chunks_jsonl(path, chunk)
        for recs in reader:
            if not all(isinstance(r, Mapping) for r in recs[:50]):
                fail(path, "a trial is not a JSON object", "give one {field: value} object per trial")
            present = {k for r in recs[:50] for k in r} & wanted
            yield {k: [r.get(k) for r in recs] for k in present}
    elif kind in ("csv", "tsv"):
        sep = "," if kind == "csv" else "\t"
        header = pd.read_csv(path, sep=sep, nrows=0).columns
        use = [c for c in header if c in wanted]
        for df in pd.read_csv(path, sep=sep, usecols=use, chunksize=chunk, dtype=str, keep_default_na=False):
            yield {c: df[c].tolist() for c in use}
    else:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        use = [c for c in pf.schema_arrow.names if c in wanted]
        for batch in pf.iter_batches(batch_size=chunk, columns=use):
            yield {c: batch.column(c).to_pylist() for c in use}


_FEATURE = re.compile(r"^\s*L?(\d+)\s*[-_/:]\s*F?(\d+)\s*$", re.I)


def _ints(values: list, path: str, field: str) -> list[int]:
    try:
        return [int(float(v)) for v in values]
    except (TypeError, ValueError):
        bad = next(v for v in values if not _is_number(v))
        fail(path, f"field {field!r} has the non-number {bad!r}", f"map words.columns.{field} to an integer column")


def _is_number(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


class Trials(NamedTuple):
    """One chunk of trials in canonical form (parallel lists)."""

    layer: list[int]
    feature_id: list[int]
    context: list[str]
    condition: list[str]
    level: list[float]
    response: list[str]


def _canonical(raw: dict[str, list], path: str, cfg: WordsConfig) -> Trials:
    src = _source_columns(cfg)
    n = len(next(iter(raw.values()))) if raw else 0

    def need(canon: str, fix: str) -> list:
        col = src[canon]
        if col not in raw:
            fail(path, f"column {col!r} (words.columns.{canon}) not found; it has {sorted(raw)}", fix)
        return raw[col]

    if src["layer"] in raw and src["feature_id"] in raw:
        layer = _ints(raw[src["layer"]], path, "layer")
        fid = _ints(raw[src["feature_id"]], path, "feature_id")
    else:
        layer, fid = [], []
        for v in need("feature", "map words.columns.layer and .feature_id, or .feature (\"L21-2794\")"):
            if v is None or not str(v).strip():  # no feature: a baseline shared by every feature
                layer.append(-1)
                fid.append(-1)
                continue
            m = _FEATURE.match(str(v))
            if not m:
                fail(path, f"feature {v!r} is not like 'L21-2794'", "map words.columns.layer and words.columns.feature_id")
            layer.append(int(m.group(1)))
            fid.append(int(m.group(2)))
    if cfg.levels == "ordered":
        raw_levels = need("level", "map words.columns.level to the numeric dose column (e.g. scale)")
        if not all(_is_number(v) for v in raw_levels):
            bad = next(v for v in raw_levels if not _is_number(v))
            fail(path, f"level {bad!r} is not a number", "map words.columns.level to a numeric column")
        level = [float(v) for v in raw_levels]
        condition = [_level_label(v) for v in level]
    else:
        condition = [str(v) for v in need("condition", "map words.columns.condition to the condition column")]
        level = [math.nan] * n
    if src["context"] in raw:
        context = [str(v) for v in raw[src["context"]]]
    else:  # the original logs name the context as the condition's prefix ("safe_with_risky_patch")
        context = [c.split("_", 1)[0] if "_" in c else "all" for c in condition]
    response = ["" if v is None else str(v) for v in need("response", "map words.columns.response to the text column")]
    return Trials(layer, fid, context, condition, level, response)


def read_trials(paths: Sequence[str], cfg: WordsConfig) -> Iterator[Trials]:
    """Stream every log file as canonical chunks of at most `cfg.chunk_rows` trials."""
    wanted = set(_source_columns(cfg).values())
    for path in paths:
        if not os.path.exists(path):
            fail(path, "log file not found", "fix words.logs")
        kind = _format(path)
        for raw in _columns_chunks(path, kind, wanted, cfg.chunk_rows):
            if raw:
                yield _canonical(raw, path, cfg)


# ----------------------------------------------------------------------------- counting


def shard_of(layer: int, feature_id: int, shards: int) -> int:
    """Deterministic shard of a feature (the same in every process and run)."""
    return zlib.crc32(f"{layer}:{feature_id}".encode()) % shards


class Counts(NamedTuple):
    """Streamed counts: responses per group, and per word the responses that say it."""

    groups: pd.DataFrame  # gid, layer, feature_id, context, condition, level, n
    docs: pd.DataFrame  # gid, text, word (id), docs
    keys: list[str]  # word id -> grouping key
    forms: list[list[str]]  # word id -> surface forms, most frequent first


class WordCounter:
    """Accumulates Counts chunk by chunk; memory grows with the distinct (group, word) pairs only."""

    def __init__(self, cfg: WordsConfig, shard: int | None = None, cache_size: int = 200_000) -> None:
        self.cfg, self.shard, self.cache_size = cfg, shard, cache_size
        self.tok = Tokenizer(cfg.stopwords, cfg.min_length, cfg.stem)
        self._gid: dict[tuple, int] = {}
        self._groups: list[tuple] = []
        self._n = np.zeros(0, np.int64)
        self._mine: dict[tuple[int, int], bool] = {}
        self._pairs = {t: (np.zeros(0, np.int64), np.zeros(0, np.int64)) for t in cfg.texts}
        self._pending_g: list[int] = []
        self._pending_r: list[int] = []
        self._reset_cache()
        self.trials = 0

    def _reset_cache(self) -> None:
        # Distinct responses -> row of a ragged table of their word ids, one table per text;
        # rows added since the last flush wait in lists, older ones live in numpy arrays.
        self._rid: dict[str, int] = {}
        self._flat: dict[str, list[int]] = {t: [] for t in self.cfg.texts}
        self._start: dict[str, list[int]] = {t: [] for t in self.cfg.texts}
        self._flat_np = {t: np.zeros(0, np.int64) for t in self.cfg.texts}
        self._start_np = {t: np.zeros(0, np.int64) for t in self.cfg.texts}

    def _row(self, resp: str) -> int:
        if len(self._rid) >= self.cache_size:  # bounded: distinct responses can be millions
            self._flush_pending()
            self._reset_cache()
        cut = decision_boundary(resp)
        head, tail = self.tok.ids(resp[:cut]), self.tok.ids(resp[cut:])
        for name in self.cfg.texts:
            ids = head if name == "cut" else set(head).union(tail)
            self._start[name].append(len(self._flat_np[name]) + len(self._flat[name]))
            self._flat[name].extend(ids)
        rid = self._rid[resp] = len(self._rid)
        return rid

    def add(self, t: Trials) -> None:
        contexts = set(self.cfg.contexts)
        shards, shard = self.cfg.shards, self.shard
        for layer, fid, ctx, cond, lvl, resp in zip(*t):
            mine = self._mine.get((layer, fid))
            if mine is None:
                mine = self._mine[(layer, fid)] = (shard is None or layer < 0  # shared baselines
                                                   or shard_of(layer, fid, shards) == shard)
            if not mine or (contexts and ctx not in contexts):
                continue
            key = (layer, fid, ctx, cond)
            gid = self._gid.get(key)
            if gid is None:
                gid = self._gid[key] = len(self._groups)
                self._groups.append((layer, fid, ctx, cond, lvl))
            rid = self._rid.get(resp)
            if rid is None:
                rid = self._row(resp)
            self._pending_g.append(gid)
            self._pending_r.append(rid)
        self._flush_pending()

    def _flush_pending(self) -> None:
        """Fold the buffered (group, response) trials into the counts."""
        gids = np.asarray(self._pending_g, np.int64)
        rids = np.asarray(self._pending_r, np.int64)
        self._pending_g, self._pending_r = [], []
        if not len(gids):
            return
        self.trials += len(gids)
        self._n = np.pad(self._n, (0, len(self._groups) - len(self._n)))
        self._n += np.bincount(gids, minlength=len(self._groups))
        for name in self.cfg.texts:
            flat = self._flat_np[name] = np.concatenate([self._flat_np[name], np.asarray(self._flat[name], np.int64)])
            self._start_np[name] = np.concatenate([self._start_np[name], np.asarray(self._start[name], np.int64)])
            self._flat[name], self._start[name] = [], []
            start = np.append(self._start_np[name], len(flat))
            lens = (start[1:] - start[:-1])[rids]
            # gather each trial's slice of the ragged table without a Python loop
            pos = np.repeat(start[rids] - np.cumsum(lens) + lens, lens) + np.arange(lens.sum())
            keys = (np.repeat(gids, lens) << 32) | flat[pos]
            self._pairs[name] = _merge_counts(*self._pairs[name], *np.unique(keys, return_counts=True))

    def counts(self) -> Counts:
        self._flush_pending()
        groups = pd.DataFrame(self._groups, columns=["layer", "feature_id", "context", "condition", "level"])
        groups.insert(0, "gid", np.arange(len(groups), dtype=np.int64))
        groups["n"] = self._n[:len(groups)] if len(groups) else np.zeros(0, np.int64)
        # text as its index in TEXTS: joins on a small int are far cheaper than on strings
        docs = [pd.DataFrame({"gid": k >> 32, "text": np.int8(TEXTS.index(name)), "word": k & 0xFFFFFFFF, "docs": c})
                for name, (k, c) in self._pairs.items()]
        return Counts(groups, pd.concat(docs, ignore_index=True), list(self.tok.keys), self.tok.form_lists())


def _merge_counts(old_k: np.ndarray, old_c: np.ndarray, new_k: np.ndarray,
                  new_c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Add sorted unique (key, count) pairs into sorted unique totals, in about one copy."""
    pos = np.searchsorted(old_k, new_k)
    hit = pos < len(old_k)
    hit[hit] = old_k[pos[hit]] == new_k[hit]
    old_c[pos[hit]] += new_c[hit]
    miss = ~hit
    return np.insert(old_k, pos[miss], new_k[miss]), np.insert(old_c, pos[miss], new_c[miss])


def count_logs(paths: Sequence[str], cfg: WordsConfig, shard: int | None = None) -> Counts:
    """Stream the logs once and count (only the features of `shard` when given)."""
    counter = WordCounter(cfg, shard)
    for chunk in read_trials(paths, cfg):
        counter.add(chunk)
    log.info("counted %d trials of shard %s", counter.trials, shard)
    return counter.counts()


# ----------------------------------------------------------------------------- statistics


def fisher_exact_2x2(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Two-sided Fisher exact p of [[a, b], [c, d]] per row: the probability, given the
    margins, of tables no more likely than the observed one (scipy's definition)."""
    tab = np.stack([a, b, c, d], 1).astype(np.int64)
    if len(tab) == 0:
        return np.zeros(0)
    uniq, inv = np.unique(tab, axis=0, return_inverse=True)
    p = np.empty(len(uniq))
    r1, r2, c1 = uniq[:, 0] + uniq[:, 1], uniq[:, 2] + uniq[:, 3], uniq[:, 0] + uniq[:, 2]
    N = r1 + r2
    lo, hi = np.maximum(0, c1 - r2), np.minimum(r1, c1)

    def logpmf(k: np.ndarray, r1: np.ndarray, r2: np.ndarray, c1: np.ndarray, N: np.ndarray) -> np.ndarray:
        lc = lambda n, k: special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)  # noqa: E731
        return lc(r1, k) + lc(r2, c1 - k) - lc(N, c1)

    step = max(1, 4_000_000 // int((hi - lo).max() + 1))  # bounded block memory
    for s in range(0, len(uniq), step):
        e = min(s + step, len(uniq))
        width = int((hi[s:e] - lo[s:e]).max()) + 1
        k = lo[s:e, None] + np.arange(width)[None, :]
        ok = k <= hi[s:e, None]
        args = (r1[s:e, None], r2[s:e, None], c1[s:e, None], N[s:e, None])
        lp = logpmf(np.where(ok, k, lo[s:e, None]), *args)
        obs = logpmf(uniq[s:e, 0:1], *args)
        keep = ok & (lp <= obs + 1e-7)
        p[s:e] = np.where(keep, np.exp(lp), 0.0).sum(1)
    return np.minimum(p, 1.0)[inv.ravel()]


def chi2_2x2(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Pearson chi-square p of [[a, b], [c, d]] with Yates' correction (scipy's 2x2 default)."""
    a, b, c, d = (np.asarray(x, float) for x in (a, b, c, d))
    n = a + b + c + d
    r1, r2, c1, c2 = a + b, c + d, a + c, b + d
    den = r1 * r2 * c1 * c2
    diff = np.maximum(np.abs(a * d - b * c) - n / 2, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = np.where(den > 0, n * diff**2 / den, 0.0)
    return sps.chi2.sf(stat, 1)


def log_odds_prior(a: np.ndarray, n1: np.ndarray, c: np.ndarray, n0: np.ndarray, pooled: np.ndarray,
                   strength: float) -> tuple[np.ndarray, np.ndarray]:
    """Log-odds ratio of saying the word (a of n1 patched vs c of n0 baseline responses) with an
    informative Beta prior of `strength` pseudo-responses centred on the pooled rate, and its z."""
    pi = np.clip(pooled, 1e-6, 1 - 1e-6)
    al, be = strength * pi, strength * (1 - pi)
    delta = np.log((a + al) / (n1 - a + be)) - np.log((c + al) / (n0 - c + be))
    var = 1 / (a + al) + 1 / (n1 - a + be) + 1 / (c + al) + 1 / (n0 - c + be)
    return delta, delta / np.sqrt(var)


def bh_by_group(p: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values computed separately within each group label."""
    p = np.asarray(p, float)
    if len(p) == 0:
        return p
    order = np.lexsort((p, group))
    g, ps = np.asarray(group)[order], p[order]
    starts = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
    sizes = np.diff(np.r_[starts, len(g)])
    rank = np.arange(len(g)) - np.repeat(starts, sizes) + 1
    q = ps * np.repeat(sizes, sizes) / rank
    q = pd.Series(q[::-1]).groupby(g[::-1]).cummin().to_numpy()[::-1]
    out = np.empty_like(q)
    out[order] = np.minimum(q, 1.0)
    return out


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
    g = counts.groups if c.context is None else counts.groups[counts.groups.context == c.context]
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
    D, N = mat.sum(1), Nk.sum(1)
    keep = D >= cfg.min_count
    mat, X, Nk, D, N, K, keys, fcs = mat[keep], X[keep], Nk[keep], D[keep], N[keep], K[keep], keys[keep], fcs[keep]
    if not len(keys):
        return None
    pbar = D / N
    sx, sxx = (Nk * X).sum(1), (Nk * X * X).sum(1)
    T = (mat * X).sum(1) - pbar * sx
    sxx_c = sxx - sx * sx / N
    var = pbar * (1 - pbar) * sxx_c
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(var > 0, T / np.sqrt(var), 0.0)
        slope = np.where(sxx_c > 0, T / sxx_c, 0.0)
    idx = np.arange(len(keys))
    top = K - 1
    f = fc.iloc[fcs]
    lows, highs = [lv[0] for lv in f.levels], [lv[-1] for lv in f.levels]
    return pd.DataFrame({
        **{k: f[k].to_numpy() for k in FC}, "text": keys.text.to_numpy(), "word": keys.word.to_numpy(),
        "contrast": f.context.map(lambda x: f"{x}_dose").to_numpy(object), "kind": _const("trend", len(f)),
        "baseline": pd.Series(lows).map(_level_label).to_numpy(object),
        "patched": pd.Series(highs).map(_level_label).to_numpy(object),
        "baseline_n": Nk[idx, 0], "patched_n": Nk[idx, top], "baseline_count": mat[idx, 0],
        "patched_count": mat[idx, top], "effect": slope, "p_value": 2 * sps.norm.sf(np.abs(z)),
        "test": _const("cochran_armitage", len(f)), "pool": pbar, "level_values": list(f.levels), "level_n": list(f.ns),
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
    return out[EFFECT_COLUMNS].astype(_DTYPES).sort_values(SORT, ignore_index=True)


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
    out["q_value"] = bh_by_group(out.p_value.to_numpy(), family)
    for col in ("level_values", "level_n", "level_count", "stem", "forms"):
        if col not in out:
            out[col] = None
    return out[EFFECT_COLUMNS]


SORT = ["layer", "feature_id", "contrast", "text", "p_value", "word"]
_STRINGS = ("context", "contrast", "kind", "text", "word", "stem", "forms", "baseline", "patched", "test")
_DTYPES = {**dict.fromkeys(_STRINGS, "str"), "layer": "int64", "feature_id": "int64", "baseline_n": "int64", "patched_n": "int64",
           "baseline_count": "int64", "patched_count": "int64", "baseline_freq": "float64",
           "patched_freq": "float64", "log_odds_ratio": "float64", "log_odds_z": "float64",
           "effect": "float64", "p_value": "float64", "q_value": "float64"}


def empty_effects() -> pd.DataFrame:
    """A word-effects table with no rows and the right columns."""
    return pd.DataFrame({c: pd.Series(dtype=_DTYPES.get(c, object)) for c in EFFECT_COLUMNS})


def _label(forms: Sequence[str]) -> str:
    """A stable display word for a stem: its shortest surface form, ties alphabetical."""
    return min(forms, key=lambda s: (len(s), s)) if forms else ""


def relabel(effects: pd.DataFrame) -> pd.DataFrame:
    """Give each stem one label across shards (shards see different surface forms)."""
    if effects.empty:
        return effects
    forms = effects.groupby("stem")["forms"].agg(lambda s: sorted({f for x in s for f in x.split("|") if f}))
    label = {k: _label(v) for k, v in forms.items()}
    return effects.assign(word=effects.stem.map(label)).astype(_DTYPES)


def run_shard(paths: Sequence[str], cfg: WordsConfig, shard: int | None = None) -> pd.DataFrame:
    """Count and test the features of one shard (all features when `shard` is None)."""
    out = word_effects(count_logs(paths, cfg, shard), cfg)
    if shard is not None and shard != shard_of(-1, -1, cfg.shards):
        out = out[out.layer >= 0].reset_index(drop=True)  # every shard counts the shared baselines
    return out


# ----------------------------------------------------------------------------- outputs


def _entry(r: Any) -> dict[str, Any]:
    return {"word": r.word, "baseline_freq": float(r.baseline_freq), "patched_freq": float(r.patched_freq),
            "log_odds_ratio": float(r.log_odds_ratio), "p_value": float(r.p_value),
            "baseline_count": int(r.baseline_count), "patched_count": int(r.patched_count),
            "baseline_n": int(r.baseline_n), "patched_n": int(r.patched_n), "log_odds_z": float(r.log_odds_z),
            "q_value": float(r.q_value), "effect": float(r.effect), "test": r.test, "stem": r.stem,
            "baseline": r.baseline, "patched": r.patched}


def _contrast_keys(rows: pd.DataFrame, cfg: WordsConfig) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for name, part in rows.groupby("contrast", sort=True):
        part = part.sort_values("log_odds_z", key=np.abs, ascending=False)
        sig = part[part.q_value < cfg.alpha]
        up = sig[sig.log_odds_ratio > 0] if part.kind.iloc[0] == "pairwise" else sig[sig.effect > 0]
        down = sig[sig.log_odds_ratio < 0] if part.kind.iloc[0] == "pairwise" else sig[sig.effect < 0]
        out[f"{name}_adds"] = [_entry(r) for r in up.head(cfg.top_words).itertuples()]
        out[f"{name}_removes"] = [_entry(r) for r in down.head(cfg.top_words).itertuples()]
        out[f"{name}_all"] = [_entry(r) for r in part.head(50).itertuples()]
        if name in ORIGINAL_ALL_KEYS:
            out[ORIGINAL_ALL_KEYS[name]] = out[f"{name}_all"]
    return out


def causal_json(effects: pd.DataFrame, cfg: WordsConfig) -> list[dict[str, Any]]:
    """The original `causal_word_effects` layout, one entry per feature: `<contrast>_adds` /
    `_removes` for the primary text (the first of `words.texts`), every text under `by_text`."""
    out = []
    for (layer, fid), rows in effects.groupby(["layer", "feature_id"], sort=True):
        by_text = {t: _contrast_keys(part, cfg) for t, part in rows.groupby("text")}
        primary = cfg.texts[0]
        out.append({"feature": f"L{layer}-{fid}", "layer": int(layer), "feature_id": int(fid),
                    "text": primary, **by_text.get(primary, {}), "by_text": by_text})
    return out


def top_features(effects: pd.DataFrame, cfg: WordsConfig) -> list[tuple[int, int]]:
    """Features with the most words at q < alpha in the primary text (ties: smallest p)."""
    e = effects[effects.text == cfg.texts[0]]
    if e.empty:
        return []
    score = e.assign(sig=e.q_value < cfg.alpha).groupby(["layer", "feature_id"]).agg(
        sig=("sig", "sum"), best=("p_value", "min")).reset_index()
    score = score.sort_values(["sig", "best", "layer", "feature_id"], ascending=[False, True, True, True])
    return [(int(a), int(b)) for a, b in score[["layer", "feature_id"]].head(cfg.top_features_plot).to_numpy()]


def volcano_plots(effects: pd.DataFrame, out_dir: str | os.PathLike[str], cfg: WordsConfig) -> list[Path]:
    """One PNG per top feature: log-odds ratio vs -log10 p, a panel per contrast."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for layer, fid in top_features(effects, cfg):
        e = effects[(effects.layer == layer) & (effects.feature_id == fid) & (effects.text == cfg.texts[0])]
        names = sorted(e.contrast.unique())
        fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4), squeeze=False)
        for ax, name in zip(axes[0], names):
            part = e[e.contrast == name]
            sig = part.q_value < cfg.alpha
            y = -np.log10(part.p_value.clip(lower=1e-300))
            ax.scatter(part.log_odds_ratio[~sig], y[~sig], s=10, c="0.6", label="q >= alpha")
            ax.scatter(part.log_odds_ratio[sig], y[sig], s=14, c="tab:red", label=f"q < {cfg.alpha:g}")
            for r, yy in zip(part[sig].head(8).itertuples(), y[sig].head(8)):
                ax.annotate(r.word, (r.log_odds_ratio, yy), fontsize=7, xytext=(2, 2), textcoords="offset points")
            ax.axvline(0, c="0.8", lw=0.8)
            versus = "highest vs lowest level" if part.kind.iloc[0] == "trend" else "patched vs baseline"
            ax.set(title=name, xlabel=f"log-odds ratio, {versus}", ylabel="-log10 p")
            ax.legend(fontsize=7, loc="upper left")
        fig.suptitle(f"L{layer}-{fid} ({cfg.texts[0]} text)")
        fig.tight_layout()
        path = out_dir / f"L{layer}-{fid}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def merge_shards(shard_paths: Sequence[str], cfg: WordsConfig, effects_path: str, json_path: str,
                 plot_dir: str) -> pd.DataFrame:
    """Concatenate shard tables and write the three final outputs, each atomically."""
    from .io import atomic_dir, write_json, write_table

    parts = [pd.read_parquet(p) for p in shard_paths]
    parts = [p for p in parts if len(p)]
    effects = pd.concat(parts, ignore_index=True) if parts else empty_effects()
    effects = relabel(effects).astype(_DTYPES).sort_values(SORT, ignore_index=True)
    write_table(effects, effects_path)
    write_json(causal_json(effects, cfg), json_path)
    with atomic_dir(plot_dir) as tmp:
        volcano_plots(effects, tmp, cfg)
    return effects
