"""The simulated judge: deterministic pairwise votes for unattended runs, when no person annotates.

A simulated annotator prefers the response closer to a held-out reference answer. The rule, exactly:

1. Score both responses against the reference with ROUGE-L F (`lifecycle.text.rouge_l`, the
   F-measure of the longest common subsequence of lower-cased letter/digit tokens).
2. If the two scores differ by at most 1e-9 the vote is "tie"; otherwise the higher-scoring response
   wins ("a" or "b").
3. Noise: a winner is flipped (a <-> b; a tie stays a tie) when u < `noise`, where u in [0, 1) is
   the first 16 hex digits (64 bits) of the SHA-256 of the UTF-8 bytes of
   `json.dumps([salt, annotator, response_a, response_b], ensure_ascii=False)`, read as an integer and
   divided by 2**64. So each annotator flips a fraction `noise` (0 to 0.5) of its decided votes, and the
   same (salt, annotator, responses) always give the same vote, in any process and on any machine.
   Different annotators over the same pair flip independently; a new `salt` draws new noise.

Simulated votes therefore measure agreement with the reference, not human preference: they are a stand-in
that lets the pipeline run end to end, and are marked as such (source "simulated").

    for name in simulated_annotators(3):                   # "simulated-1", "simulated-2", "simulated-3"
        vote = judge(reference, answer_a, answer_b, annotator=name, noise=0.1, salt="round-1")
    cast, new = vote_on_batch(store, batch_id, judges=3, noise=0.1)     # every judge on every item, once
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from lifecycle.text import rouge_l

if TYPE_CHECKING:
    from lifecycle.preferences.store import PreferenceStore

TIE_TOLERANCE = 1e-9
MAX_NOISE = 0.5


def judge(reference: str, response_a: str, response_b: str, annotator: str, noise: float, salt: str) -> str:
    """"a", "b" or "tie": the response with the higher ROUGE-L F against `reference`, flipped with
    probability `noise` by a hash of (salt, annotator, response_a, response_b) (see the module docstring)."""
    if not 0.0 <= noise <= MAX_NOISE:
        raise ValueError(f"noise must be between 0 and {MAX_NOISE}, got {noise}")
    score_a, score_b = rouge_l(response_a, reference), rouge_l(response_b, reference)
    if abs(score_a - score_b) <= TIE_TOLERANCE:
        return "tie"
    winner = "a" if score_a > score_b else "b"
    if flip_draw(salt, annotator, response_a, response_b) < noise:
        return "b" if winner == "a" else "a"
    return winner


def flip_draw(salt: str, annotator: str, response_a: str, response_b: str) -> float:
    """The deterministic uniform draw in [0, 1) that decides whether a vote is flipped."""
    blob = json.dumps([salt, annotator, response_a, response_b], ensure_ascii=False).encode("utf-8")
    return int(hashlib.sha256(blob).hexdigest()[:16], 16) / 2**64


def simulated_annotators(n: int) -> list[str]:
    """Names of `n` simulated annotators: "simulated-1" .. "simulated-n"."""
    if n < 0:
        raise ValueError(f"the number of simulated annotators must be >= 0, got {n}")
    return [f"simulated-{i}" for i in range(1, n + 1)]


def vote_on_batch(store: PreferenceStore, batch_id: str, judges: int, noise: float) -> tuple[int, int]:
    """Every simulated judge votes on every item of the batch that has a reference answer (others get no vote),
    salted by the batch id; (votes cast, votes new to the store: a re-run finds them there)."""
    from lifecycle.preferences.assign import cast_votes

    votes = [(name, item.id, judge(reference, item.response_a, item.response_b, name, noise, batch_id))
             for item in store.items(batch_id) if (reference := json.loads(item.meta).get("reference"))
             for name in simulated_annotators(judges)]
    return len(votes), cast_votes(store, batch_id, votes)
