"""Streamed counts do not depend on how the stream is cached."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pathreplay.words.counts import WordCounter
from pathreplay.words.logs import read_trials
from pathreplay.words.settings import words_config
from words_data import CUT, original_records, write_jsonl


def test_bounded_cache_gives_the_same_counts(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", original_records(np.random.default_rng(6)))
    cfg = words_config({"chunk_rows": 50})
    small = WordCounter(cfg, CUT, cache_size=3)
    big = WordCounter(cfg, CUT)
    for chunk in read_trials([str(path)], cfg):
        small.add(chunk)
        big.add(chunk)
    a, b = small.counts(), big.counts()
    pd.testing.assert_frame_equal(a.groups, b.groups)
    key = lambda c: c.docs.assign(word=[c.keys[w] for w in c.docs.word]).sort_values(["gid", "text", "word"],  # noqa: E731
                                                                                     ignore_index=True)
    pd.testing.assert_frame_equal(key(a), key(b))
    assert small.trials == big.trials == 540
