"""Retrieval evaluation: recall@k / MRR arithmetic, python-docs questions, the SQuAD loader, and an
evaluation of dense, full-text and hybrid search on a small hand-built question set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lifecycle.config import load_config
from lifecycle.errors import InputError
from lifecycle.rag.evaluate import (
    Question,
    evaluate_retrieval,
    evaluate_squad,
    load_squad,
    python_docs_questions,
    rank_of_first_relevant,
    report_markdown,
    summarize,
)
from lifecycle.rag.index import build_index
from lifecycle.rag.search import open_index
from lifecycle.tracking import tracking_uri
from tests.unit.test_rag_index import CONF, make_docs, rag_config, search_config

SQUAD = {"version": "v2.0", "data": [
    {"title": "Normans", "paragraphs": [
        {"context": "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, "
                    "a region in France.",
         "qas": [{"id": "1", "question": "In what country is Normandy located?", "answers": [], "is_impossible": False},
                 {"id": "2", "question": "When did the Normans give their name to Normandy?", "answers": []}]},
        {"context": "Norman architecture typically stands out as a new stage in the architectural history of the "
                    "regions they subdued, with massive castles and round arches.",
         "qas": [{"id": "3", "question": "What kind of arches does Norman architecture have?", "answers": []}]}]},
    {"title": "Photosynthesis", "paragraphs": [
        {"context": "Photosynthesis is the process plants use to convert light energy from the sun into chemical "
                    "energy stored in sugars.",
         "qas": [{"id": "4", "question": "What do plants convert light energy into?", "answers": []},
                 {"id": "5", "question": "", "answers": []}]}]}]}


def test_recall_and_mrr_from_ranks() -> None:
    assert rank_of_first_relevant(["a", "b", "c"], frozenset({"c", "b"})) == 2
    assert rank_of_first_relevant(["a"], frozenset({"z"})) is None
    out = summarize([1, 3, None, 6], ks=[1, 5])
    assert out == {"recall_at_1": 0.25, "recall_at_5": 0.5, "mrr": pytest.approx((1 + 1 / 3 + 1 / 6) / 4),
                   "questions": 4.0}


def test_python_docs_questions_are_deterministic_held_out_first_and_grouped() -> None:
    docs = make_docs()
    docs.append(dict(docs[1], id="second-part", split="train"))  # json.loads split over two documents
    questions = python_docs_questions(docs, max_questions=5, template="What does {object} do?")
    assert questions == python_docs_questions(list(reversed(docs)), 5, "What does {object} do?")
    held_out = {d["object"] for d in docs if d["split"] == "validation"}
    asked = [q.text.removeprefix("What does ").removesuffix(" do?") for q in questions]
    assert set(asked[:len(held_out)]) == held_out and len(asked) == 5
    every = python_docs_questions(docs, 100, "Explain {object}")
    assert len(every) == 12 and next(q for q in every if q.text == "Explain json.loads").relevant == {
        docs[1]["id"], "second-part"}
    assert python_docs_questions([{"id": "x", "object": "", "split": "train"}], 10, "{object}") == []


def test_squad_loader_makes_one_document_per_passage(tmp_path: Path) -> None:
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(SQUAD))
    docs, questions = load_squad(path)
    assert len(docs) == 3 and len(questions) == 4  # the empty question is skipped
    assert {d["title"] for d in docs} == {"Normans", "Photosynthesis"}
    assert questions[0].relevant == questions[1].relevant != questions[2].relevant
    bad = tmp_path / "bad.json"
    bad.write_text('{"nope": 1}')
    with pytest.raises(InputError, match="bad.json"):
        load_squad(bad)


def test_hybrid_and_dense_find_the_right_documents_on_a_hand_built_set(tmp_path: Path) -> None:
    cfg = rag_config()
    info = build_index(make_docs(), cfg, str(tmp_path / "db"), "docs")
    ids = {d["object"]: d["id"] for d in make_docs()}
    asked = {"How do I turn a JSON document into Python objects?": "json.loads",
             "Read comma-separated values from a file": "csv.reader",
             "compute a cryptographic digest": "hashlib.sha256",
             "wait for a few seconds": "time.sleep",
             "randomly reorder a list in place": "random.shuffle",
             "priority queue insertion": "heapq.heappush"}
    questions = [Question(q, frozenset([ids[o]])) for q, o in asked.items()]
    report = evaluate_retrieval(open_index(info.to_dict(), search_config()), questions, ks=[1, 3])
    assert set(report) == {"dense", "fts", "hybrid"}
    assert report["dense"]["recall_at_3"] == 1.0 and report["dense"]["mrr"] >= 0.8
    assert report["hybrid"]["recall_at_3"] >= 0.8
    assert all(0 <= r["recall_at_1"] <= r["recall_at_3"] <= 1 for r in report.values())
    wrong = [Question(q.text, frozenset(["no-such-doc"])) for q in questions]
    report = evaluate_retrieval(open_index(info.to_dict(), search_config()), wrong, ks=[3])
    assert report["hybrid"]["recall_at_3"] == 0.0
    table = report_markdown(report, "hand-built")
    assert "| dense |" in table and "recall@3" in table


def test_squad_evaluation_builds_its_own_table_and_logs_to_mlflow(tmp_path: Path) -> None:
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(SQUAD))
    cfg = load_config(CONF, overrides=["rag_index.ann.min_rows=1000", "rag_index.evaluate.ks=[1,2]"])
    result = evaluate_squad(path, cfg, tmp_path / "state")
    assert (result["passages"], result["questions"]) == (3, 4)
    assert result["report"]["dense"]["recall_at_2"] >= 0.75
    run = MlflowClient(tracking_uri(tmp_path / "state")).get_run(result["mlflow_run_id"])
    assert run.data.metrics["rag_eval/hybrid_recall_at_2"] == result["report"]["hybrid"]["recall_at_2"]
    assert run.data.params["questions"] == "4"
    again = evaluate_squad(path, cfg, tmp_path / "state", max_questions=2)  # same table, nothing re-embedded
    assert again["questions"] == 2 and again["table"] == result["table"] and again["embedded_chunks"] == 0
