"""ingest: readers for each format, clean-up, de-duplication, the split, and bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lifecycle.config import IngestConfig, load_config
from lifecycle.data.clean import minhash_signatures, near_duplicates, normalize_text, split_document
from lifecycle.data.ingest import ingest_documents, load_documents
from lifecycle.data.sources import read_python_docs, read_source
from lifecycle.errors import InputError

PARA = ("The quick brown fox jumps over the lazy dog while the cat watches from the warm windowsill "
        "and the rain keeps falling on the old tin roof of the barn. ")


def distinct_text(seed: int, n_words: int = 60) -> str:
    """Prose-like text that shares few 5-word shingles with any other seed."""
    import random

    rng = random.Random(seed)
    vocab = PARA.lower().replace(".", "").split() + ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud",
                                                      "paper", "signal", "orange", "window", "garden", "engine"]
    return " ".join(rng.choice(vocab) for _ in range(n_words)).capitalize() + "."


def make_cfg(conf_dir: Path, sources: list[dict[str, Any]], **changes: Any) -> IngestConfig:
    cfg = load_config(conf_dir).ingest
    data = cfg.model_dump() | {"sources": sources} | changes
    return IngestConfig.model_validate(data)


def files_source(*paths: Path | str, **kw: Any) -> dict[str, Any]:
    return {"name": "t", "kind": "files", "paths": [str(p) for p in paths], **kw}


def read_all(cfg: IngestConfig) -> list[dict[str, Any]]:
    return [r for s in cfg.sources for r in read_source(s, cfg.max_undecodable_share)]


def test_every_format_is_read(tmp_path: Path, conf_dir: Path) -> None:
    (tmp_path / "a.txt").write_text("plain text " * 10)
    (tmp_path / "b.md").write_text("# Title B\n\nmarkdown body")
    (tmp_path / "c.html").write_text("<html><head><title>Page C</title><style>p{}</style></head>"
                                     "<body><script>alert(1)</script><p>visible words</p></body></html>")
    (tmp_path / "d.jsonl").write_text(json.dumps({"body": "line one"}) + "\n\n" + json.dumps({"body": "two"}) + "\n")
    (tmp_path / "e.json").write_text(json.dumps([{"body": "json record", "title": "E1"}]))
    (tmp_path / "f.csv").write_text("id,body\n1,csv row text\n")
    pq.write_table(pa.table({"body": ["parquet row"]}), tmp_path / "g.parquet")
    (tmp_path / "ignored.png").write_bytes(b"\x89PNG\x00\x00")
    records = read_all(make_cfg(conf_dir, [files_source(tmp_path, text_field="body")]))
    by_title = {r["title"]: r["text"] for r in records}
    assert by_title["Title B"].endswith("markdown body")
    page = by_title["Page C"]
    assert "visible words" in page and "alert" not in page and "p{}" not in page
    assert by_title["E1"] == "json record"
    texts = {r["text"] for r in records}
    assert {"line one", "two", "csv row text", "parquet row"} <= texts
    assert len(records) == 8


def test_globs_and_directories(tmp_path: Path, conf_dir: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.txt").write_text("x" * 50)
    (tmp_path / "y.md").write_text("y" * 50)
    assert len(read_all(make_cfg(conf_dir, [files_source(tmp_path / "**" / "*.txt")]))) == 1
    assert len(read_all(make_cfg(conf_dir, [files_source(tmp_path)]))) == 2


@pytest.mark.parametrize("setup, pattern", [
    (lambda d: d / "missing.txt", r"path '.*missing.txt' does not exist"),
    (lambda d: (d / "empty").mkdir() or d / "empty", r"directory '.*empty' contains no supported files"),
    (lambda d: ((d / "x.bin").write_bytes(b"\x00\x01"), d / "x.bin")[1], r"unsupported type '.bin'"),
])
def test_unusable_paths_are_named(tmp_path: Path, conf_dir: Path, setup: Any, pattern: str) -> None:
    path = setup(tmp_path)
    with pytest.raises(InputError, match=pattern):
        read_all(make_cfg(conf_dir, [files_source(path)]))


@pytest.mark.parametrize("pattern", ["{root}", "{root}/*.txt", "{root}/**/*.txt"])
def test_symlink_out_of_a_source_folder_is_refused(tmp_path: Path, conf_dir: Path, pattern: str) -> None:
    root, outside = tmp_path / "docs", tmp_path / "secret.txt"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text(PARA)
    (root / "sub" / "b.txt").write_text(distinct_text(1))
    (root / "inside.txt").symlink_to(root / "sub" / "b.txt")  # stays in the folder: read as usual
    outside.write_text("password: hunter2 " * 10)
    (root / "passwd.txt").symlink_to(outside)
    source = files_source(pattern.format(root=root))
    with pytest.raises(InputError, match=r"passwd.txt' \(under .*\) is a symbolic link to '.*secret.txt', outside"):
        read_all(make_cfg(conf_dir, [source]))
    (root / "passwd.txt").unlink()
    assert {r["text"][:20] for r in read_all(make_cfg(conf_dir, [source]))} == {PARA[:20], distinct_text(1)[:20]}
    assert read_all(make_cfg(conf_dir, [files_source(outside)]))  # a file named on purpose is read


def test_binary_file_is_rejected(tmp_path: Path, conf_dir: Path) -> None:
    path = tmp_path / "model.txt"
    path.write_bytes(b"PK\x03\x04\x00\x00binary\x00")
    with pytest.raises(InputError, match=r"model.txt: looks like a binary file"):
        read_all(make_cfg(conf_dir, [files_source(path)]))


def test_mostly_undecodable_file_is_rejected(tmp_path: Path, conf_dir: Path) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes(bytes(range(0x80, 0x100)) * 20 + b"ok")
    with pytest.raises(InputError, match=r"latin.txt: \d+ of \d+ bytes .* are not valid UTF-8"):
        read_all(make_cfg(conf_dir, [files_source(path)]))


def test_stray_invalid_bytes_are_repaired_and_counted(tmp_path: Path, conf_dir: Path) -> None:
    path = tmp_path / "good.txt"
    path.write_bytes(PARA.encode() + b"\xff\xfe" + PARA.encode())
    stats = ingest_documents(make_cfg(conf_dir, [files_source(path)], val_fraction=0.0), tmp_path / "out")
    assert stats["invalid_bytes"] == 2
    text = load_documents(tmp_path / "out")["train"][0]["text"]
    assert "\ufffd" not in text and "barn." in text


def test_malformed_jsonl_names_file_and_line(tmp_path: Path, conf_dir: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "fine too"}\n{"text": oops}\n')
    with pytest.raises(InputError, match=r"rows.jsonl:3: not valid JSON"):
        read_all(make_cfg(conf_dir, [files_source(path)]))
    path.write_text('{"body": "no text key"}\n')
    with pytest.raises(InputError, match=r"rows.jsonl:1: no 'text' field"):
        read_all(make_cfg(conf_dir, [files_source(path)]))


def test_normalize_and_split() -> None:
    assert normalize_text("e\u0301\r\nline  \n\n\n\nnext\x07", "NFC") == "\u00e9\nline\n\nnext"
    pieces = split_document("\n\n".join([PARA] * 10), max_chars=400)
    assert all(len(p) <= 400 for p in pieces) and len(pieces) >= 3


def test_near_duplicates_found_and_distinct_texts_kept() -> None:
    base = distinct_text(1, n_words=300)
    near = base + " one more sentence"
    other = "Completely different words about compilers, parsers and abstract syntax trees. " * 4
    signatures = minhash_signatures([base, near, other], num_perm=128, shingle_words=5)
    assert near_duplicates(signatures, threshold=0.8) == [False, True, False]


def test_dedup_counts_split_is_stable_and_output_is_arrow(tmp_path: Path, conf_dir: Path) -> None:
    docs = [distinct_text(i) for i in range(40)]
    near = docs[2].replace(" ", "  ", 1) + " extra"  # differs by one word: a near duplicate, not an exact one
    rows = [{"text": t} for t in docs] + [{"text": docs[0]}, {"text": docs[1]}, {"text": near}]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = make_cfg(conf_dir, [files_source(path)], val_fraction=0.2)
    stats = ingest_documents(cfg, tmp_path / "a")
    assert stats["exact_duplicates"] == 2
    assert stats["near_duplicates"] == 1 and stats["documents"] == 40
    first = load_documents(tmp_path / "a")
    ingest_documents(cfg, tmp_path / "b")
    second = load_documents(tmp_path / "b")
    assert first["validation"]["id"] == second["validation"]["id"] and len(first["validation"]) > 0
    assert set(first["train"].column_names) >= {"id", "text", "source", "path", "title", "split"}


def test_all_duplicates_corpus_collapses_to_one_document(tmp_path: Path, conf_dir: Path) -> None:
    path = tmp_path / "dups.jsonl"
    path.write_text("\n".join(json.dumps({"text": PARA}) for _ in range(30)))
    stats = ingest_documents(make_cfg(conf_dir, [files_source(path)]), tmp_path / "out")
    assert stats["documents"] == 1 and stats["duplicate_share"] > 0.9


def test_python_docs_keeps_dotted_paths(conf_dir: Path) -> None:
    source = make_cfg(conf_dir, [{"name": "py", "kind": "python-docs", "include": ["json"]}]).sources[0]
    records = list(read_python_docs(source))
    objects = {r["object"] for r in records}
    assert {"json", "json.dumps", "json.decoder.JSONDecoder.decode"} <= objects
    dumps = next(r for r in records if r["object"] == "json.dumps")
    assert dumps["text"].startswith("json.dumps(obj") and "JSON formatted" in dumps["text"]
    assert all(o == "json" or o.startswith("json.") for o in objects)


def test_hub_dataset_offline_is_a_clear_error(conf_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = make_cfg(conf_dir, [{"name": "wiki", "kind": "hf", "dataset": "wikitext", "subset": "wikitext-2-raw-v1"}])
    with pytest.raises(InputError, match=r"source 'wiki': Hugging Face dataset 'wikitext' cannot be downloaded"):
        read_all(cfg)


def test_minhash_estimates_jaccard_without_bias() -> None:
    import random

    import numpy as np

    from lifecycle.data.clean import minhash_signatures

    rng = random.Random(0)
    words = [f"w{i}" for i in range(300)]
    base = [rng.choice(words) for _ in range(200)]
    other = list(base)
    for i in rng.sample(range(200), 10):
        other[i] = rng.choice(words)
    shingles = [{" ".join(t[i:i + 5]) for i in range(196)} for t in (base, other)]
    jaccard = len(shingles[0] & shingles[1]) / len(shingles[0] | shingles[1])
    sigs = minhash_signatures([" ".join(base), " ".join(other)], num_perm=512, shingle_words=5)
    assert abs(float(np.mean(sigs[0] == sigs[1])) - jaccard) < 0.08
