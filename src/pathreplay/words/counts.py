"""Streamed counts: responses per (feature, context, condition), and per word the responses that
say it, in the whole response and in the answer alone."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from .lexicon import WordIndex
from .logs import Trials, read_trials
from .settings import TEXTS, WordsConfig

log = logging.getLogger("pathreplay.words")

def shard_of(layer: int, feature_id: int, shards: int) -> int:
    """Deterministic shard of a feature (the same in every process and run)."""
    return zlib.crc32(f"{layer}:{feature_id}".encode()) % shards


class Counts(NamedTuple):
    """Streamed counts: responses per group, and per word the responses that say it."""

    groups: pd.DataFrame  # gid, layer, feature_id, context, condition, level, n
    docs: pd.DataFrame  # gid, text, word (id), docs
    keys: list[str]  # word id -> grouping key
    forms: list[list[str]]  # word id -> surface forms, shortest first
    # what the logs hold for every shard alike, so that each shard judges emptiness the same way:
    # trials read, and their (context, condition, is a feature's trial), words.contexts or not
    read: int = 0
    seen: frozenset[tuple[str, str, bool]] = frozenset()


class WordCounter:
    """Accumulates Counts chunk by chunk; memory grows with the distinct (group, word) pairs only."""

    def __init__(self, cfg: WordsConfig, answer_end: Callable[[str], int], shard: int | None = None,
                 cache_size: int = 200_000) -> None:
        self.cfg, self.answer_end, self.shard, self.cache_size = cfg, answer_end, shard, cache_size
        self.index = WordIndex(cfg.stopwords, cfg.min_length, cfg.stem)
        self._gid: dict[tuple, int] = {}
        self._groups: list[tuple] = []
        self._n = np.zeros(0, np.int64)
        self._mine: dict[tuple[int, int], bool] = {}
        self._pairs = {t: (np.zeros(0, np.int64), np.zeros(0, np.int64)) for t in cfg.texts}
        self._pending_g: list[int] = []
        self._pending_r: list[int] = []
        self._reset_cache()
        self.trials = 0
        self.read = 0
        self._seen: set[tuple[str, str, bool]] = set()

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
        cut = self.answer_end(resp)
        head, tail = self.index.ids(resp[:cut]), self.index.ids(resp[cut:])
        for name in self.cfg.texts:
            ids = head if name == "cut" else set(head).union(tail)
            self._start[name].append(len(self._flat_np[name]) + len(self._flat[name]))
            self._flat[name].extend(ids)
        rid = self._rid[resp] = len(self._rid)
        return rid

    def add(self, t: Trials) -> None:
        contexts = set(self.cfg.contexts)
        shards, shard = self.cfg.shards, self.shard
        self.read += len(t.layer)
        self._seen.update(zip(t.context, t.condition, map((0).__le__, t.layer)))  # C loops: every trial passes
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
        return Counts(groups, pd.concat(docs, ignore_index=True), list(self.index.keys), self.index.form_lists(),
                      self.read, frozenset(self._seen))


def _merge_counts(old_k: np.ndarray, old_c: np.ndarray, new_k: np.ndarray,
                  new_c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Add sorted unique (key, count) pairs into sorted unique totals, in about one copy."""
    pos = np.searchsorted(old_k, new_k)
    hit = pos < len(old_k)
    hit[hit] = old_k[pos[hit]] == new_k[hit]
    old_c[pos[hit]] += new_c[hit]
    miss = ~hit
    return np.insert(old_k, pos[miss], new_k[miss]), np.insert(old_c, pos[miss], new_c[miss])


def count_logs(paths: Sequence[str], cfg: WordsConfig, answer_end: Callable[[str], int],
               shard: int | None = None) -> Counts:
    """Stream the logs once and count (only the features of `shard` when given); a response's
    `cut` text ends at answer_end(response) (the task's: task.Task.answer_end)."""
    counter = WordCounter(cfg, answer_end, shard)
    for chunk in read_trials(paths, cfg):
        counter.add(chunk)
    log.info("counted %d trials of shard %s", counter.trials, shard)
    return counter.counts()
