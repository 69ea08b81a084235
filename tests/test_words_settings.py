"""The word analysis' settings: the schema's defaults, and bad settings refused in one line."""

from __future__ import annotations

import pytest

from pathreplay.errors import UserError
from pathreplay.schema import defaults
from pathreplay.words.settings import ORIGINAL_CONTRASTS, ORIGINAL_STOPWORDS, Contrast, level_label, words_config


def test_defaults_are_the_schemas():
    cfg = words_config({})
    d = defaults("words")
    for key in ("min_length", "min_count", "stem", "test", "prior_strength", "alpha", "top_words", "shards",
                "top_features_plot", "chunk_rows", "levels"):
        assert getattr(cfg, key) == d[key], key
    assert cfg.texts == tuple(d["texts"]) and cfg.logs == () and cfg.contexts == ()
    assert cfg.contrasts == ORIGINAL_CONTRASTS and cfg.stopwords == ORIGINAL_STOPWORDS
    other = words_config({"min_count": 9, "stopwords": "none"})
    assert other._replace(min_count=5, stopwords=ORIGINAL_STOPWORDS) == cfg


def test_contrasts_and_levels_are_spelled_one_way():
    cfg = words_config({"contrasts": [{"name": "dose", "baseline": 1, "patched": "2.0", "context": "safe"}]})
    assert cfg.contrasts == (Contrast("dose", "1", "2", "safe"),)
    assert [level_label(x) for x in (1, 1.0, "1.00", "high")] == ["1", "1", "1", "high"]


@pytest.mark.parametrize("section, says", [
    ({"colums": {}}, r"config words\.colums: unknown key"),
    ({"columns": {"prompt": "x"}}, r"config words\.columns\.prompt: not a field"),
    ({"levels": "many"}, r"config words\.levels: 'many' is not none or ordered"),
    ({"texts": ["all"]}, r"config words\.texts: \['all'\] is not a list of cut / full"),
    ({"test": "t"}, r"config words\.test: 't' is not fisher or chi2"),
    ({"shards": 0}, r"config words\.shards: must be at least 1"),
    ({"alpha": 1.5}, r"alpha must lie in \(0, 1\)"),
    ({"contrasts": [{"name": "x"}]}, r"config words\.contrasts\[0\]: needs name, baseline and patched"),
    ({"stopwords": 3}, r"config words\.stopwords: 3 is not default, none or a list"),
])
def test_bad_settings_are_one_line(section, says):
    with pytest.raises(UserError, match=says) as err:
        words_config(section)
    assert "\n" not in str(err.value)
