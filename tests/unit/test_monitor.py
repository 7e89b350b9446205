"""The monitor's figures on synthetic windows over a tiny index with the real MiniLM: a drifted window crosses
the thresholds and lists its questions, an in-distribution one crosses none; feedback per version is judged on
its Wilson bound; the window is read from real MLflow traces; bad values are refused naming key and value."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow.entities import SpanType

from lifecycle import names
from lifecycle.config import ConfigError, load_config
from lifecycle.monitor.drift import crossings, drift_figures, drifted_questions, feedback_figures
from lifecycle.monitor.measure import searched
from lifecycle.monitor.reference import reference_questions, reference_vocabulary
from lifecycle.monitor.window import read_window
from lifecycle.rag.index import build_index
from lifecycle.rag.search import Retriever, open_index
from lifecycle.serve.tracing import RequestTrace
from lifecycle.tracking import setup_mlflow
from tests.unit.test_rag_index import make_docs, rag_config

CONF = Path(__file__).resolve().parents[2] / "conf"
IN_DISTRIBUTION = [f"What does {name} do?" for name in ("json.loads", "csv.reader", "time.sleep", "re.compile",
                                                        "gzip.open", "random.shuffle")] * 4
DRIFTED = ["How long should I bake sourdough bread?", "What is the best fertilizer for tomatoes?",
           "Who won the football world cup in 2018?", "How do I fix a flat bicycle tyre?",
           "Recommend a good italian pasta recipe", "What's the weather in Paris tomorrow?"] * 4


@pytest.fixture(scope="module")
def retriever(tmp_path_factory: pytest.TempPathFactory) -> Retriever:
    info = build_index(make_docs(), rag_config(), str(tmp_path_factory.mktemp("rag") / "lancedb"), "docs").to_dict()
    return open_index(info, load_config(CONF).serve.search)


def test_a_drifted_window_crosses_the_thresholds_and_an_in_distribution_one_none(retriever: Retriever) -> None:
    mon, data = (cfg := load_config(CONF)).monitor, cfg.sft.data
    questions = reference_questions(retriever.tbl, data, mon.reference.max_questions)
    assert len(questions) == 12 and {q.role for q in questions} == {"evaluation", "training"}
    reference = searched(retriever, [q.text for q in questions])
    vocabulary = reference_vocabulary(retriever.tbl, questions, mon.reference.vocabulary_chunks)
    assert {"json", "dumps", "serialize"} <= vocabulary

    usual = searched(retriever, IN_DISTRIBUTION)
    figures = drift_figures(usual, reference, vocabulary, mon.low_score, mon.novel_similarity)
    assert not [c for c in crossings(figures, mon.thresholds) if c["crossed"]], figures
    assert figures["oov_share"] == 0 and figures["novel_share"] == 0 and figures["embedding_distance"] < 0.1
    assert drifted_questions(usual, reference, mon.low_score, mon.novel_similarity, 50) == []

    drifted = searched(retriever, DRIFTED[:18] + IN_DISTRIBUTION[:6])
    figures = drift_figures(drifted, reference, vocabulary, mon.low_score, mon.novel_similarity)
    crossed = {c["figure"] for c in crossings(figures, mon.thresholds) if c["crossed"]}
    assert {"embedding_distance", "oov_share", "low_score_share", "retrieval_ks_p_value"} <= crossed, figures
    assert figures["mean_best_score"] < figures["reference_mean_best_score"] - 0.2
    listed = drifted_questions(drifted, reference, mon.low_score, mon.novel_similarity, 4)
    assert len(listed) == 4 and {q["prompt"] for q in listed} <= set(DRIFTED)  # distinct, capped, no stdlib ones
    assert [q["requests"] for q in listed] == [3, 3, 3, 3] and listed[0]["nearest_similarity"] < mon.novel_similarity


def test_feedback_is_degraded_only_past_the_threshold_with_enough_ratings() -> None:
    cfg = load_config(CONF, overrides=["monitor.feedback.min_ratings=20",
                                       "monitor.feedback.max_negative_share=0.3"]).monitor.feedback
    rows = {r["version"]: r for r in feedback_figures({"m/1": (10, 30), "m/2": (30, 10), "m/3": (2, 8)}, cfg)}
    assert rows["m/1"]["degraded"] and rows["m/1"]["low"] > 0.3 and rows["m/1"]["negative_share"] == 0.75
    assert not rows["m/2"]["degraded"] and rows["m/2"]["judged"]
    assert not rows["m/3"]["degraded"] and not rows["m/3"]["judged"]  # 80% down, but 10 ratings only


def test_bad_monitor_values_are_refused_naming_key_and_value() -> None:
    with pytest.raises(ConfigError, match=r"monitor\.thresholds\.oov_share = 1\.5: .*less than or equal to 1"):
        load_config(CONF, overrides=["monitor.thresholds.oov_share=1.5"])
    with pytest.raises(ConfigError, match=r"monitor\.thresholds\.embeding_distance = 0\.2: unknown key"):
        load_config(CONF, overrides=["monitor.thresholds.embeding_distance=0.2"])
    with pytest.raises(ConfigError, match=r"monitor\.window_hours = 0: .*greater than 0"):
        load_config(CONF, overrides=["monitor.window_hours=0"])


def test_the_window_is_read_from_the_served_traces(tmp_path: Path) -> None:
    experiment_id = setup_mlflow(tmp_path / "state", "monitor-test")
    since = int(time.time() * 1000) - 1
    for question, model in (("What does json.dumps do?", "m/1"), ("bake bread", "m/2")):
        trace = RequestTrace.start(experiment_id, {"messages": [{"role": "user", "content": question}]},
                                   {names.MODEL: model})
        span = trace.span("retrieve", SpanType.RETRIEVER, {"query": question, "k": 3})
        trace.end(span, [])
        trace.finish({"answer": "..."})
    found = read_window(experiment_id, since, int(time.time() * 1000) + 1)
    assert [(r.prompt, r.model) for r in found] == [("What does json.dumps do?", "m/1"), ("bake bread", "m/2")]
    assert read_window(experiment_id, since - 3_600_000, since) == []


def test_a_window_with_too_few_requests_measures_nothing(tmp_path: Path) -> None:
    from lifecycle.monitor.measure import measure_window
    from lifecycle.monitor.window import Request

    cfg = load_config(CONF, overrides=["monitor.min_requests=20"])
    requests = [Request(f"tr-{i}", i, "m/1", "bake bread") for i in range(19)]
    window = {"since": "a", "until": "b"}
    outcome = measure_window(cfg, tmp_path / "no-index-needed", requests, window, tmp_path / "out")
    assert "19 requests from a to b: fewer than monitor.min_requests (20)" in outcome.summary
    assert not outcome.alarms and not outcome.degraded and outcome.prompts_file is None
    assert not (tmp_path / "out").exists()
