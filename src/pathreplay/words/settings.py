"""Settings of the word analysis (config section `words`), its defaults from the config schema."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple, cast

from ..errors import fail
from ..schema import defaults


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

# The fields of a trial that the analysis reads (words.columns maps them to your log's columns).
LOG_FIELDS = ("layer", "feature_id", "feature", "context", "condition", "level", "response", "trial")
TEXTS = ("cut", "full")
Text = Literal["cut", "full"]


class WordsConfig(NamedTuple):
    """Settings of the word analysis (config section `words`); build it with `words_config`,
    which fills in the schema's defaults."""

    logs: tuple[str, ...]
    columns: Mapping[str, str]
    contexts: tuple[str, ...]
    contrasts: tuple[Contrast, ...]
    levels: Literal["none", "ordered"]
    texts: tuple[Text, ...]
    stopwords: frozenset[str]
    min_length: int
    min_count: int
    stem: bool
    test: Literal["fisher", "chi2"]
    prior_strength: float
    alpha: float
    top_words: int
    shards: int
    top_features_plot: int
    chunk_rows: int
    allow_empty: bool = False  # zero tested words, or a contrast that matches nothing, is then no error


def level_label(x: Any) -> str:
    """One spelling per numeric level, so `1`, `1.0` and "1.00" name the same condition."""
    try:
        return format(float(x), "g")
    except (TypeError, ValueError):
        return str(x)


def _contrasts(raw: Any) -> tuple[Contrast, ...]:
    """`words.contrasts` as Contrasts; None means the original four."""
    if raw is None:
        return ORIGINAL_CONTRASTS
    out = []
    for i, c in enumerate(raw):
        if not isinstance(c, Mapping) or not {"name", "baseline", "patched"} <= set(c):
            fail(f"config words.contrasts[{i}]", "needs name, baseline and patched",
                 "write {name: ..., baseline: <condition>, patched: <condition>, context: <optional>}")
        ctx = c.get("context")
        out.append(Contrast(str(c["name"]), level_label(c["baseline"]), level_label(c["patched"]),
                            None if ctx is None else str(ctx)))
    return tuple(out)


def _stopwords(sw: Any) -> frozenset[str]:
    if sw == "default":
        return ORIGINAL_STOPWORDS
    if sw in ("none", None):
        return frozenset()
    if isinstance(sw, (list, tuple)):
        return frozenset(str(w).lower() for w in sw)
    fail("config words.stopwords", f"{sw!r} is not default, none or a list", "give a list of words")


def words_config(section: Mapping[str, Any] | None) -> WordsConfig:
    """Build a WordsConfig from the `words` config section, the schema's defaults filled in."""
    given = dict(section or {})
    known = set(WordsConfig._fields)
    for key in given:
        if key not in known:
            fail(f"config words.{key}", "unknown key", f"use one of {', '.join(sorted(known))}")
    s = {**defaults("words"), **given}
    columns = dict(s["columns"] or {})
    for canon in columns:
        if canon not in LOG_FIELDS:
            fail(f"config words.columns.{canon}", "not a field the analysis reads",
                 f"map one of {', '.join(LOG_FIELDS)} to a column of your logs")
    levels = str(s["levels"])
    if levels not in ("none", "ordered"):
        fail("config words.levels", f"{levels!r} is not none or ordered", "set words.levels: ordered or none")
    texts = tuple(s["texts"])
    if not texts or not set(texts) <= set(TEXTS):
        fail("config words.texts", f"{list(texts)} is not a list of cut / full", "set words.texts: [cut, full]")
    test = str(s["test"])
    if test not in ("fisher", "chi2"):
        fail("config words.test", f"{test!r} is not fisher or chi2", "set words.test: fisher")
    cfg = WordsConfig(
        logs=tuple(str(p) for p in (s["logs"] or ())), columns=columns,
        contexts=tuple(str(c) for c in (s["contexts"] or ())), contrasts=_contrasts(s.get("contrasts")),
        levels=cast(Literal["none", "ordered"], levels), texts=cast(tuple[Text, ...], texts),
        stopwords=_stopwords(s["stopwords"]), min_length=int(s["min_length"]), min_count=int(s["min_count"]),
        stem=bool(s["stem"]), test=cast(Literal["fisher", "chi2"], test), prior_strength=float(s["prior_strength"]),
        alpha=float(s["alpha"]), top_words=int(s["top_words"]), shards=int(s["shards"]),
        top_features_plot=int(s["top_features_plot"]), chunk_rows=int(s["chunk_rows"]),
        allow_empty=bool(s["allow_empty"]))
    for key in ("min_count", "shards", "chunk_rows"):
        if getattr(cfg, key) < 1:
            fail(f"config words.{key}", "must be at least 1", f"set words.{key} to a positive integer")
    if not 0 < cfg.alpha < 1 or cfg.prior_strength <= 0:
        fail("config words.alpha / prior_strength", "alpha must lie in (0, 1) and prior_strength be > 0",
             "use e.g. alpha: 0.05, prior_strength: 10")
    return cfg
