"""Hostile corpora through the readers, ingest and tokenize: each input is either refused with an InputError
naming the file (and line or row) and the value seen, or repaired and counted in the ingest stats; never
another exception, never a partial artifact (docs/RELIABILITY.md)."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lifecycle.config import load_config
from lifecycle.data.ingest import ingest_documents, read_documents
from lifecycle.errors import ConfigError, InputError, LifecycleError
from lifecycle.tokenizer import train_and_pack
from tests.unit.test_ingest import PARA, distinct_text, files_source, make_cfg, read_all


def parquet(table: pa.Table, truncate: int = 0) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        pq.write_table(table, path)
        if truncate:
            path.write_bytes(path.read_bytes()[:truncate])
    return write


REFUSED: list[tuple[str, bytes | Callable[[Path], None], str]] = [
    ("model.md", bytes(range(256)) * 4, r"model\.md: looks like a binary file \(NUL byte at offset 0, seen b'\\x00"),
    ("weights.txt", b"PK\x03\x04" + os.urandom(64).replace(b"\x00", b"") + b"\x00" * 8,
     r"weights\.txt: looks like a binary file \(NUL byte at offset \d+"),
    ("noise.txt", bytes(range(0x80, 0x100)) * 8 + b"ok",
     r"noise\.txt: 1024 of 1026 bytes \(100%\) are not valid UTF-8 text, the first at byte 0: b'\\x80"),
    ("utf16-no-bom.txt", (PARA * 2).encode("utf-16-le"), r"utf16-no-bom\.txt: looks like a binary file .* byte-order"),
    ("bad-utf16.txt", b"\xff\xfe" + "ok".encode("utf-16-le") + b"\x00\xd8",
     r"bad-utf16\.txt: byte 6 is not valid utf-16 \(unexpected end of data\), seen b'\\x00\\xd8'"),
    ("rows.jsonl", b'{"text": "fine"}\n\n{"text": "half\n', r"rows\.jsonl:3: not valid JSON \(Unterminated string"),
    ("deep.jsonl", b"[" * 100_000 + b"]" * 100_000,
     r"deep\.jsonl:1: not usable JSON \(maximum recursion depth.*seen \"\[\[\["),
    ("huge-int.jsonl", b'{"text": ' + b"9" * 5000 + b"}", r"huge-int\.jsonl:1: not usable JSON \(Exceeds the limit"),
    ("number.jsonl", b'{"text": 3.5}', r"number\.jsonl:1: field 'text' is float, expected a string; seen 3.5"),
    ("list.json", b'[{"text": "ok"}, 7]', r"list\.json\[1\]: expected an object with a 'text' field, got int: 7"),
    ("cut.json", b'[{"text": "a"},', r"cut\.json: not valid JSON \(Expecting value at column 16\)"),
    ("ragged.csv", b"id,text\n1,hello\n2\n", r"ragged\.csv:3: 1 fields, the header has 2; seen \[\"2\"\]"),
    ("wide.csv", b"id,text\n1,hello,extra\n", r"wide\.csv:2: 3 fields, the header has 2; seen \[\"1\", \"hello\""),
    ("open-quote.csv", b'id,text\n1,fine\n2,"never closed\n3,x\n',
     r"open-quote\.csv:3: not valid CSV: unexpected end of data \(a quoted field that is never closed\?\); "
     r"seen \"2,\\\"never closed\""),
    ("no-column.csv", b"id,body\n1,x\n", r"no-column\.csv:1: no column 'text' \(columns: \['id', 'body'\]\)"),
    ("cut.parquet", parquet(pa.table({"text": [PARA] * 50}), truncate=300),
     r"cut\.parquet: cannot read parquet \(.*magic bytes"),
    ("ints.parquet", parquet(pa.table({"text": [1, 2]})),
     r"ints\.parquet: column 'text' holds int64, expected strings"),
    ("bytes.parquet", parquet(pa.table({"text": pa.array([b"\xff"], pa.binary())})),
     r"bytes\.parquet: column 'text' holds binary, expected strings"),
    ("other.parquet", parquet(pa.table({"body": ["x"]})), r"other\.parquet: no column 'text' \(columns: \['body'\]\)"),
]


@pytest.mark.parametrize(("name", "content", "pattern"), REFUSED, ids=[r[0] for r in REFUSED])
def test_hostile_file_is_refused_with_its_name_line_and_value(tmp_path: Path, conf_dir: Path, name: str,
                                                              content: Any, pattern: str) -> None:
    path = tmp_path / name
    path.write_bytes(content) if isinstance(content, bytes) else content(path)
    cfg = make_cfg(conf_dir, [files_source(path)])
    with pytest.raises(InputError, match=pattern) as err:
        read_all(cfg)
    assert str(path) in str(err.value)
    out = tmp_path / "out"
    with pytest.raises(InputError):
        ingest_documents(cfg, out)
    assert not out.exists() or not any(out.iterdir())  # refused before anything was written


def test_repairable_files_are_cleaned_and_counted(tmp_path: Path, conf_dir: Path) -> None:
    corpus = tmp_path / "corpus"
    (corpus / "empty-folder").mkdir(parents=True)
    for name in ("empty.txt", "empty.md", "blank.jsonl", "empty.json", "empty.csv", "empty.parquet", "empty.html"):
        (corpus / name).write_bytes(b"" if name != "blank.jsonl" else b"\n \n")
    docs = [distinct_text(i) for i in range(8)]
    (corpus / "late-nul.txt").write_bytes((docs[0] + "\n\n") .encode() * 200 + b"\x00" + docs[1].encode())
    (corpus / "stray.txt").write_bytes(docs[2].encode() + b" \xff\xfe " + docs[2].encode())
    (corpus / "utf16.txt").write_bytes(("Caf\u00e9 na\u00efve \u201cquoted\u201d. " + docs[3]).encode("utf-16"))
    (corpus / "utf32.md").write_bytes(docs[4].encode("utf-32"))
    escapes = {"text": docs[5] + "\u0000 and a lone \ud800 surrogate \u2028 in one line", "title": "t\u0000"}
    (corpus / "escapes.jsonl").write_text(json.dumps(escapes) + "\n")
    pq.write_table(pa.table({"text": [docs[6], None, "x\x00" + docs[7]]}), corpus / "nulls.parquet")
    (corpus / "page.html").write_text(
        "<html><head><title>Page</title><style>body{color:STYLEX}</style><script>var a='HEADSCRIPTX'</script>"
        f"<body><p>{PARA}</p><SCRIPT type='module'>alert('BODYSCRIPTX')</SCRIPT><noscript>NOSCRIPTX</noscript>"
        "<p>after the script</p><script>never closed, UNCLOSEDX")
    out = tmp_path / "out"
    stats = ingest_documents(make_cfg(conf_dir, [files_source(corpus)], val_fraction=0.0, min_doc_chars=20), out)
    assert stats["raw_records"] == 7 + 9  # one empty record per empty file, one per row or page
    assert stats["dropped_short"] == 8  # the empty files and the null Parquet row
    assert stats["invalid_bytes"] == 1 + 2 + 2 + 1  # late NUL, two stray bytes, NUL + surrogate, Parquet NUL
    texts = {Path(d["path"]).name: d["text"] for d in read_documents(out)}
    assert all("\x00" not in t and t.encode("utf-8") for t in texts.values())
    assert texts["utf16.txt"].startswith("Caf\u00e9 na\u00efve \u201cquoted\u201d.") and texts["utf32.md"] == docs[4]
    assert texts["stray.txt"] == f"{docs[2]}  {docs[2]}" and texts["escapes.jsonl"].startswith(docs[5] + " and a lone ")
    page = texts["page.html"]
    assert PARA.strip() in page and "after the script" in page
    assert not any(word in page for word in ("STYLEX", "HEADSCRIPTX", "BODYSCRIPTX", "NOSCRIPTX", "UNCLOSEDX"))


def test_corpus_of_only_empty_files_is_refused_by_source(tmp_path: Path, conf_dir: Path) -> None:
    (tmp_path / "empty-folder").mkdir()
    for name in ("a.txt", "b.jsonl", "c.csv", "d.parquet"):
        (tmp_path / name).write_bytes(b"")
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"source 't' produced no documents of at least 40 characters "
                                         r"\(ingest.min_doc_chars\): 4 records read from 4 files \(.*a.txt, .*b.jsonl, "
                                         r".*c.csv, \.\.\.\), all empty or shorter"):
        ingest_documents(make_cfg(conf_dir, [files_source(tmp_path)]), out)
    assert not out.exists()


def test_source_encoding_decodes_cp1252_and_latin1(tmp_path: Path, conf_dir: Path) -> None:
    quotes = "He said \u201chello\u201d \u2014 it\u2019s fine, caf\u00e9. " * 4
    (tmp_path / "smart.txt").write_bytes(quotes.encode("cp1252"))
    guessed = read_all(make_cfg(conf_dir, [files_source(tmp_path / "smart.txt")]))  # as UTF-8: dropped, counted
    assert guessed[0]["invalid_bytes"] == 5 * 4 and "\u201c" not in guessed[0]["text"]
    told = read_all(make_cfg(conf_dir, [files_source(tmp_path / "smart.txt", encoding="cp1252")]))
    assert told[0]["text"] == quotes and told[0]["invalid_bytes"] == 0
    (tmp_path / "undefined.txt").write_bytes(b"ok \x81 not cp1252")
    with pytest.raises(InputError, match=r"undefined\.txt: byte 3 is not valid cp1252 .*seen b'\\x81 not cp"):
        read_all(make_cfg(conf_dir, [files_source(tmp_path / "undefined.txt", encoding="cp1252")]))
    bad = f"ingest.sources=[{{name: t, kind: files, paths: ['{tmp_path}'], encoding: klingon}}]"
    with pytest.raises(ConfigError, match=r"ingest.sources.0 = .*unknown encoding 'klingon'.*\[--set ingest.sources="):
        load_config(conf_dir, overrides=[bad])


def test_thirty_megabyte_single_line_is_split(tmp_path: Path, conf_dir: Path) -> None:
    rng = random.Random(0)
    words = [f"w{rng.randrange(10**6)}" for _ in range(150_000)]  # ~1.2 MB of distinct-ish words
    block = " ".join(words)
    path = tmp_path / "one-line.txt"
    with path.open("w") as fh:
        for i in range(30 * 2**20 // len(block) + 1):
            fh.write(f"{i} {block} ")
    assert path.stat().st_size >= 30 * 2**20 and path.read_bytes().count(b"\n") == 0
    cfg = make_cfg(conf_dir, [files_source(path)], near_dup={"enabled": False, "threshold": 0.8, "num_perm": 16,
                                                             "shingle_words": 5})
    stats = ingest_documents(cfg, tmp_path / "out")
    assert stats["raw_records"] == 1 and stats["documents_in"] >= 30 * 2**20 // cfg.max_doc_chars
    lengths = [len(d["text"]) for d in read_documents(tmp_path / "out")]
    assert max(lengths) <= cfg.max_doc_chars and sum(lengths) > 0


def test_dotdot_in_source_paths(tmp_path: Path, conf_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus, secret = tmp_path / "work" / "corpus", tmp_path / "secret"
    (corpus / "sub").mkdir(parents=True)
    secret.mkdir()
    (corpus / "a.txt").write_text(PARA)
    (secret / "key.txt").write_text("password: hunter2 " * 10)
    monkeypatch.chdir(corpus / "sub")
    assert read_all(make_cfg(conf_dir, [files_source("../a.txt")]))[0]["text"] == PARA  # a path the user named
    escaping = f"{corpus}/*/../../../secret/*.txt"
    with pytest.raises(InputError, match=r"key\.txt' \(matched by '.*'\) is '.*secret/key\.txt', outside "
                                         r"'.*corpus': '\.\.' after a wildcard climbs out"):
        read_all(make_cfg(conf_dir, [files_source(escaping)]))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its permissions")
def test_unreadable_file_is_named(tmp_path: Path, conf_dir: Path) -> None:
    path = tmp_path / "locked.txt"
    path.write_text(PARA)
    path.chmod(0)
    with pytest.raises(InputError, match=r"locked\.txt: cannot be read \(Permission denied\)"):
        read_all(make_cfg(conf_dir, [files_source(path)]))


def test_file_name_that_is_not_utf8_is_stored_readably(tmp_path: Path, conf_dir: Path) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.txt"), "w") as fh:
        fh.write(PARA)
    stats = ingest_documents(make_cfg(conf_dir, [files_source(folder)], val_fraction=0.0), tmp_path / "out")
    assert stats["documents"] == 1
    assert read_documents(tmp_path / "out")[0]["path"].endswith("caf\ufffd.txt")


def test_corpus_too_small_for_the_tokenizer_is_refused_with_counts(tmp_path: Path, conf_dir: Path) -> None:
    docs = tmp_path / "docs"
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": distinct_text(i)}) for i in range(12)))
    ingest_documents(make_cfg(conf_dir, [files_source(corpus)], val_fraction=0.2), docs)
    out = tmp_path / "tok"
    out.mkdir()
    cfg = load_config(conf_dir, overrides=["tokenize.context_length=16"]).tokenize  # vocab_size 8192
    with pytest.raises(LifecycleError, match=r"tokenize: the train split \(\d+ documents, \d+ characters\) is too "
                                             r"small for tokenize.vocab_size=8192: only \d+ tokens could be learned "
                                             r".*set tokenize.vocab_size to at most \d+"):
        train_and_pack(cfg, docs, out)
    assert not any(out.iterdir())  # no degenerate tokenizer left behind
    small = cfg.model_copy(update={"vocab_size": 300})
    assert train_and_pack(small, docs, out)["vocab_size"] == 300
