"""validate: a real Great Expectations suite passes good data and names each failed expectation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lifecycle.config import load_config
from lifecycle.data.ingest import ingest_documents
from lifecycle.data.validate import describe_failures, validate_documents
from tests.unit.test_ingest import distinct_text, files_source, make_cfg


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("docs")
    conf = Path(__file__).resolve().parents[2] / "conf"
    rows = [{"text": distinct_text(i)} for i in range(30)]
    (root / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    stats = ingest_documents(make_cfg(conf, [files_source(root / "c.jsonl")]), root / "out")
    return root / "out", stats


def test_good_data_passes_and_writes_data_docs(docs: tuple[Path, dict], conf_dir: Path, tmp_path: Path) -> None:
    cfg = load_config(conf_dir, overrides=["validate.min_documents=5", "validate.min_characters=1000"]).validate_
    report = validate_documents(cfg, docs[0], docs[1], tmp_path)
    assert report["success"], describe_failures(report)
    assert report["evaluated"] >= 10
    assert (tmp_path / "data_docs" / "index.html").is_file()
    assert list((tmp_path / "data_docs" / "validations").rglob("*.html"))
    assert json.loads((tmp_path / "result.json").read_text())["report"]["success"] is True


def test_failures_list_observed_value_and_threshold(docs: tuple[Path, dict], conf_dir: Path, tmp_path: Path) -> None:
    cfg = load_config(conf_dir, overrides=["validate.min_documents=1000", "validate.max_doc_chars=100",
                                           "validate.min_characters=1000",
                                           "validate.max_duplicate_share=0.0"]).validate_
    stats = docs[1] | {"duplicate_share": 0.25}
    report = validate_documents(cfg, docs[0], stats, tmp_path)
    assert not report["success"]
    failed = {row["expectation"] for row in report["failed"]}
    assert failed == {"expect_table_row_count_to_be_between", "expect_column_value_lengths_to_be_between",
                      "expect_column_values_to_be_between"}
    message = describe_failures(report)
    assert "observed 30" in message and '"min_value": 1000' in message
    assert "duplicate_share" in message and '"max_value": 0.0' in message
    assert (tmp_path / "data_docs" / "index.html").is_file()  # the failing run still has its Data Docs


def test_missing_required_column_fails(docs: tuple[Path, dict], conf_dir: Path, tmp_path: Path) -> None:
    cfg = load_config(conf_dir, overrides=["validate.min_documents=5", "validate.min_characters=1000",
                                           "validate.required_columns=[id, text, language]"]).validate_
    report = validate_documents(cfg, docs[0], docs[1], tmp_path)
    assert [r["kwargs"]["column"] for r in report["failed"]] == ["language"]


def test_all_duplicates_corpus_fails_validation(tmp_path: Path, conf_dir: Path) -> None:
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": distinct_text(7)}) for _ in range(40)))
    stats = ingest_documents(make_cfg(conf_dir, [files_source(tmp_path / "d.jsonl")]), tmp_path / "docs")
    report = validate_documents(load_config(conf_dir).validate_, tmp_path / "docs", stats, tmp_path / "v")
    failed = {(r["expectation"], r["kwargs"].get("column")) for r in report["failed"]}
    assert ("expect_column_values_to_be_between", "duplicate_share") in failed
    assert ("expect_table_row_count_to_be_between", None) in failed
