"""Words of a response: case-folded letter runs, stopwords and short words dropped, inflections
grouped by a rule-based stem, and `$` amounts as words of their own."""

from __future__ import annotations

import re

from .settings import ORIGINAL_STOPWORDS

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


class WordIndex:
    """Numbers the words of texts: `ids(text)` gives a text's distinct word ids, case-folded
    letters-only words (stopwords and short ones dropped, stems grouped) and `$` amounts as words
    of their own ("$10.00" -> "$10"). Not a model tokenizer: one id per grouping key."""

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
