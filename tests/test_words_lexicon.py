"""Words of a response: stems, case, amounts, stopwords."""

from __future__ import annotations

import pytest

from pathreplay.words.lexicon import WordIndex, stem


@pytest.mark.parametrize("forms", [
    ["bet", "bets", "betting"], ["win", "wins", "winning", "won"], ["lose", "loses", "losing", "lost"],
    ["stop", "stops", "stopped", "stopping"], ["balance", "balances", "balanced"],
    ["choose", "chose", "chosen", "choosing"], ["gamble", "gambles", "gambling"], ["round", "rounds"],
])
def test_stem_groups_inflections(forms: list[str]) -> None:
    assert len({stem(f) for f in forms}) == 1, {f: stem(f) for f in forms}


def test_stem_keeps_distinct_words_apart() -> None:
    assert len({stem(w) for w in ["bet", "better", "win", "wine", "loss", "lose", "stop", "step"]}) == 8


def test_tokenizer_folds_case_keeps_amounts_and_drops_stopwords() -> None:
    tok = WordIndex()
    ids = tok.ids("I BET $10.00, then Bets of $1,000 and $5.50 on 3 rounds; the machine is at it")
    keys = {tok.keys[i] for i in ids}
    assert keys == {"bet", "$10", "$1000", "$5.5", "round", "machin"}
    # a response counts once per word, however often it says it
    assert len(tok.ids("bet bet bet betting")) == 1


def test_tokenizer_options() -> None:
    tok = WordIndex(stopwords=frozenset({"machine"}), min_length=1, use_stem=False)
    keys = {tok.keys[i] for i in tok.ids("A machine: bets and bet")}
    assert keys == {"a", "bets", "and", "bet"}
