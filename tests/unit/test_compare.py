"""The evaluation's intervals from its per-question and per-text data: each estimate is the plain statistic
(mean, paired delta, win share with ties half, bits over bytes), questions the reward model could not score
are left out of its n, and the rag_index stage's recall intervals are read from their flat keys."""

from __future__ import annotations

from typing import Any

import pytest

from lifecycle.config import load_config
from lifecycle.evaluate.bootstrap import flat_keys, interval
from lifecycle.evaluate.compare import interval_sections, split_retrieval_metrics
from tests.conftest import CONF


def evaluation() -> dict[str, Any]:
    return {"metrics": {"candidate": {}, "sft": {}},
            "per_question": {"rouge_l_rag": {"candidate": [0.5, 0.2, 0.0, 0.9], "sft": [0.4, 0.2, 0.1, 0.3]},
                             "rouge_l_no_rag": {"candidate": [0.1, 0.2, 0.0, 0.1]},
                             "reward_margin": {"sft": [1.5, None, -0.5, 0.0]}},
            "per_text": {"bytes": [100, 300], "bits": {"candidate": [200.0, 500.0], "sft": [250.0, 650.0]}}}


def test_every_comparison_is_the_plain_statistic_with_an_interval_around_it() -> None:
    spec = load_config(CONF).evaluate.intervals
    found = interval_sections(evaluation(), spec)
    assert set(found["comparisons"]) == {"candidate_vs_sft", "candidate_rag_vs_no_rag"}
    sft = found["comparisons"]["candidate_vs_sft"]
    assert sft["rouge_l_rag_delta"]["estimate"] == pytest.approx((0.1 + 0 - 0.1 + 0.6) / 4)
    assert sft["gold_win_rate"]["estimate"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)  # the tie counts half
    assert sft["val_bpb_delta"]["estimate"] == pytest.approx(700 / 400 - 900 / 400)
    assert sft["reward_win_rate"] == sft["reward_win_rate"] | {"estimate": 0.5, "n": 3}  # the unscored one left out
    gain = found["comparisons"]["candidate_rag_vs_no_rag"]["rouge_l_delta"]
    assert gain == found["intervals"]["candidate"]["rag_gain"] and gain["estimate"] == pytest.approx(0.3)
    assert set(found["intervals"]["sft"]) == {"val_bpb", "rouge_l_rag"}  # no answers without retrieval
    for entry in (iv for section in found.values() for part in section.values() for iv in part.values()):
        assert set(entry) == {"estimate", "low", "high", "n", "level"} and entry["level"] == spec.level
        assert entry["low"] <= entry["estimate"] <= entry["high"]


def test_recall_intervals_are_read_from_the_rag_index_metrics_flat_keys() -> None:
    spec = load_config(CONF).evaluate.intervals
    recall = interval([1.0, 1.0, 0.0, 1.0], **spec.model_dump())
    stage = flat_keys("hybrid_recall_at_5", recall) | {"hybrid_recall_at_1": 0.5, "hybrid_mrr": 0.6,
                                                       "dense_recall_at_5": 0.7, "hybrid_p50_ms": 3.0}
    metrics, intervals = split_retrieval_metrics(stage, "hybrid", spec.level)
    assert metrics == {"recall_at_5": 0.75, "recall_at_1": 0.5, "mrr": 0.6}
    assert intervals == {"recall_at_5": recall.to_dict()}  # recall@1 carries none: no interval made up
