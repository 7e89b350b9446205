"""Bad input through the real CLI: refused with a message that names what is wrong, printed once, with
no traceback and nothing half-written (docs/RELIABILITY.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CLEAN_ENV = ("PREFECT_HOME", "PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "LIFECYCLE_HOME")


def run_cli(state: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    return subprocess.run([sys.executable, "-m", "lifecycle.cli", "run", "--state-dir", str(state), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)


def test_corpus_that_deduplicates_to_one_document_is_refused_by_validation_once(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(5):  # the same text five times: one document is left, and no validation split
        (corpus / f"copy{i}.txt").write_text("The same paragraph about a thing that repeats in every file here.\n")
    state = tmp_path / "state"
    done = run_cli(state, "--until", "validate", "--source", str(corpus))
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    assert "Traceback" not in output and "StopIteration" not in output
    assert output.count("data validation failed: ") == 1  # the CLI's error line; Prefect's copies say where
    assert "error: data validation failed" in output and "expect_table_row_count_to_be_between: observed 1" in output
    assert "Finished in state Failed (ValidationFailed: the message is printed below)" in output
    assert list((state / "artifacts" / "ingest").iterdir())  # ingest finished and is kept for the next run
    assert not any((state / "artifacts" / "validate").iterdir())  # the failed stage left no output


def test_symlink_out_of_the_corpus_stops_the_run_before_it_starts(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "notes.txt").write_text("A note long enough to be a document of its own in this corpus. " * 3)
    (corpus / "passwd.txt").symlink_to("/etc/passwd")
    done = run_cli(tmp_path / "state", "--source", str(corpus))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"'{corpus / 'passwd.txt'}' (under '{corpus}') is a symbolic link to '/etc/passwd'" in done.stderr
    assert not (tmp_path / "state" / "artifacts").exists()  # refused before any stage ran


def test_hostile_corpus_is_refused_in_ingest_once_with_nothing_left_behind(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    (corpus / "empty-folder").mkdir(parents=True)
    (corpus / "empty.txt").write_bytes(b"")
    (corpus / "page.html").write_text(f"<p>{'Visible words about parsers and corpora. ' * 5}</p><script>x()</script>")
    (corpus / "notes.md").write_bytes(("# Notes\n\n" + "A note with a NUL byte far in. " * 400).encode() + b"\x00 end")
    (corpus / "rows.csv").write_text('id,text\n1,"a good row of text that is long enough"\n2,"never closed\n3,x\n')
    state = tmp_path / "state"
    done = run_cli(state, "--until", "tokenize", "--source", str(corpus))
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    assert "Traceback" not in output and "csv.Error" not in output
    message = f"{corpus / 'rows.csv'}:3: not valid CSV: unexpected end of data (a quoted field that is never closed?)"
    assert output.count(message) == 1 and f"error: {message}" in done.stderr
    ingest = state / "artifacts" / "ingest"
    assert not ingest.exists() or not list(ingest.iterdir())  # neither a committed output nor a .tmp-* folder
    assert not (state / "artifacts" / "tokenize").exists()
