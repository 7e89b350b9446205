"""ROUGE-L against values computed by hand (and the reference implementation's tokenisation)."""

import pytest

from lifecycle.text import lcs_length, mean_rouge_l, rouge_l, tokens


def test_lcs_and_rouge_l_by_hand() -> None:
    assert lcs_length(list("abcbdab"), list("bdcaba")) == 4  # the textbook example
    # prediction "the cat sat on the mat" (6), reference "the cat is on the mat" (6): LCS "the cat on the mat" = 5
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # P = 2/2, R = 2/4: F = 2 * 1 * 0.5 / 1.5
    assert rouge_l("json dumps", "json dumps serializes objects") == pytest.approx(2 / 3)
    assert rouge_l("", "anything") == 0.0 and rouge_l("totally different", "nothing alike") == 0.0
    assert rouge_l("Serialize obj to a JSON formatted str.", "Serialize ``obj`` to a JSON formatted ``str``") == 1.0


def test_tokens_and_mean() -> None:
    assert tokens("Return a `str`, e.g. 'x2'!") == ["return", "a", "str", "e", "g", "x2"]
    assert mean_rouge_l(["a b", "c"], ["a b", "d"]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        mean_rouge_l(["a"], [])
