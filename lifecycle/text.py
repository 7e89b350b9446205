"""Text-overlap metrics for generated answers against references, shared by every stage that scores an answer
(the SFT stage's held-out comparison, the simulated and gold judges, evaluation).

ROUGE-L (Lin, 2004) is the F-measure of the longest common subsequence of the two token sequences:
P = LCS / len(prediction), R = LCS / len(reference), F = 2PR / (P + R). Tokens are lower-cased runs of
letters and digits, as in the reference `rouge-score` implementation without stemming.

    rouge_l("Serialize obj to a JSON formatted str.", "Serialize ``obj`` to a JSON formatted ``str``")  # 1.0
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_TOKEN = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, O(len(a) * len(b)))."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure in [0, 1]; 0 when either side has no tokens."""
    pred, ref = tokens(prediction), tokens(reference)
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def mean_rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    return sum(map(rouge_l, predictions, references)) / len(references) if references else 0.0
