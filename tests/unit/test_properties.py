"""Property-based tests (hypothesis, profile `ci` in tests/conftest.py: fixed examples, no database): on any input
the corpus readers return clean text or raise InputError naming the file; JSONL and CSV carry any string through
unchanged; `--set` overrides load or raise a ConfigError naming the key; the preference import keeps only valid
pairs and refuses every other row with its line number. Never another exception."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import example, given
from hypothesis import strategies as st

from lifecycle.config import SourceConfig, load_config
from lifecycle.data.sources import read_source
from lifecycle.errors import ConfigError, InputError
from lifecycle.preferences.importers import read_preference_file

SUFFIXES = [".txt", ".md", ".html", ".jsonl", ".json", ".csv", ".parquet"]
STORABLE = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")  # what UTF-8 files can hold
ANY = st.characters() | st.characters(categories=("Cs",)) | st.just("\x00")  # plus what JSON escapes can carry


def any_text(max_size: int) -> st.SearchStrategy[str]:
    """Strings that may hold lone surrogates and NULs (st.text leaves surrogates out)."""
    return st.lists(ANY, max_size=max_size).map("".join)


TEXT = any_text(20)
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text(8), inner, max_size=3),
                    max_leaves=8)


def read(path: Path) -> list[dict[str, Any]]:
    return list(read_source(SourceConfig(name="t", kind="files", paths=[str(path)]), max_undecodable_share=0.3))


def encoded(text: str, encoding: str, nul_at: int | None) -> bytes:
    data = text.encode(encoding, errors="replace" if encoding != "utf-8" else "surrogatepass")
    return data if nul_at is None else data[:nul_at] + b"\x00" + data[nul_at:]


def jsonl(rows: list[Any]) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


def csv_bytes(rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue().encode("utf-8", "surrogatepass")


ENCODED = st.builds(encoded, any_text(300), st.sampled_from(["utf-8", "utf-16", "utf-32", "latin-1", "cp1252"]),
                    st.none() | st.integers(0, 400))
RECORD = st.fixed_dictionaries({"text": TEXT | JSON}, optional={"title": TEXT | JSON})
STRUCTURED = {".jsonl": st.builds(jsonl, st.lists(RECORD | JSON, max_size=5)),
              ".json": st.builds(lambda rows: json.dumps(rows).encode(), st.lists(RECORD, max_size=4) | JSON),
              ".csv": st.builds(csv_bytes, st.lists(st.lists(TEXT, max_size=3), max_size=5).map(
                  lambda rows: [["text", "title"], *rows]))}
# each suffix with arbitrary bytes, text in several encodings, or records in its own format
FILES = st.sampled_from(SUFFIXES).flatmap(lambda suffix: st.tuples(
    st.just(suffix), st.one_of(st.binary(max_size=2000), ENCODED, STRUCTURED.get(suffix, ENCODED))))


def assert_clean(records: list[dict[str, Any]]) -> None:
    for record in records:
        for key in ("text", "title", "path"):
            assert "\x00" not in record[key]
            record[key].encode("utf-8")  # no lone surrogates: storable in Arrow
        assert record["invalid_bytes"] >= 0


@given(file=FILES)
@example(file=(".jsonl", b'{"text": "a\\ud800 b\\u0000", "title": "\\udfff"}'))  # JSON escapes: lone surrogate, NUL
@example(file=(".json", b'[{"text": "\\udc00"}]'))
@example(file=(".txt", b"text " * 2000 + b"\x00 a NUL past the first 8 KB"))
def test_readers_return_clean_text_or_refuse_naming_the_file(tmp_path: Path, file: tuple[str, bytes]) -> None:
    suffix, data = file
    path = tmp_path / f"input{suffix}"
    path.write_bytes(data)
    try:
        records = read(path)
    except InputError as err:
        assert str(err).startswith(str(path))
    else:
        assert_clean(records)


@given(values=st.lists(st.none() | st.text(alphabet=STORABLE, max_size=50), min_size=1, max_size=6))
def test_parquet_strings_are_read_row_by_row(tmp_path: Path, values: list[str | None]) -> None:
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"text": pa.array(values, pa.string())}), path)
    records = read(path)
    assert [r["text"] for r in records] == [v or "" for v in values]


@given(texts=st.lists(any_text(60), min_size=1, max_size=6))
def test_jsonl_carries_any_string_unchanged_but_nul_and_lone_surrogates(tmp_path: Path, texts: list[str]) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(jsonl([{"text": t} for t in texts]))
    records = read(path)
    meant = [json.loads(json.dumps(t)) for t in texts]  # JSON joins an escaped surrogate pair into one character
    assert [r["text"] for r in records] == ["".join(c for c in t if c != "\x00" and not "\ud800" <= c <= "\udfff")
                                            for t in meant]
    assert [r["invalid_bytes"] for r in records] == [sum(c == "\x00" or "\ud800" <= c <= "\udfff" for c in t)
                                                     for t in meant]


@given(rows=st.lists(st.tuples(st.text(STORABLE, max_size=60), st.text(STORABLE, max_size=10)), min_size=1, max_size=6))
def test_csv_carries_any_string_unchanged(tmp_path: Path, rows: list[tuple[str, str]]) -> None:
    path = tmp_path / "rows.csv"
    path.write_bytes(csv_bytes([["text", "title"], *map(list, rows)]))
    records = read(path)
    assert [r["text"] for r in records] == [text for text, _ in rows]
    assert all(r["title"] == title for r, (_, title) in zip(records, rows, strict=True) if title)


KEYS = st.sampled_from(["tokenize.vocab_size", "tokenize", "ingest.val_fraction", "ingest.sources", "run.state_dir",
                        "pretrain.model.n_layer", "validate.min_documents", "rlhf.dpo.trainer.beta", "serve.port"])
VALUES = st.one_of(st.text(max_size=30), st.integers().map(str), st.floats().map(str),
                   st.sampled_from(["[", "{a: 1}", "&a [*a]", "2001-13-01", "!!binary aGk=", "null", "~", "[1, 2]",
                                    "{name: x, kind: files}", "[{name: x, kind: files, paths: [a]}]", ".nan", "1e400"]))


@given(key=KEYS | st.text(max_size=20), value=VALUES)
@example(key="tokenize", value="&a {x: *a}")  # a value that contains itself
@example(key="tokenize.vocab_size", value="2001-13-01")  # a YAML date that is no date
@example(key=".", value="")  # a key path with empty parts
def test_config_overrides_load_or_name_the_key(conf_dir: Path, key: str, value: str) -> None:
    item = f"{key}={value}"
    try:
        load_config(conf_dir, overrides=[item])
    except ConfigError as err:
        named = item.partition("=")[0].strip().split(".")[0]  # shown as is, or escaped when not printable
        assert (named in str(err) or repr(named)[1:-1] in str(err)) if named.strip() else "--set" in str(err)


MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "robot"]),
                                 "content": any_text(10) | st.none()})
FIELD = st.one_of(st.none(), any_text(12), st.sampled_from(["same", "  ", "\n\nHuman: Q\n\nAssistant: A"]),
                  st.lists(MESSAGE, max_size=3), JSON)
ROW = st.one_of(JSON, st.dictionaries(st.sampled_from(["prompt", "chosen", "rejected", "extra"]), FIELD),
                st.fixed_dictionaries({"prompt": TEXT, "chosen": TEXT, "rejected": TEXT}))  # often a valid pair


@given(rows=st.lists(ROW, min_size=1, max_size=6))
@example(rows=[{"prompt": "Q", "chosen": "a\ud800", "rejected": "b"},
               {"prompt": "Q", "chosen": "a", "rejected": "\x00"}])
def test_preference_import_keeps_valid_pairs_and_refuses_the_rest_by_line(tmp_path: Path, rows: list[Any]) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(jsonl(rows))
    try:
        pairs, refused = read_preference_file(path)
    except InputError as err:
        assert str(err).startswith(f"{path}: no usable preference pairs ({len(rows)} rows refused")
        return
    assert len(pairs) + len(refused) == len(rows)
    lines = {int(p.origin.rsplit(":", 1)[1]) for p in pairs}
    lines |= {int(r.split(" line ")[1].split(":")[0]) for r in refused}
    assert lines == set(range(1, len(rows) + 1))
    for pair in pairs:
        assert pair.chosen.strip() and pair.rejected.strip() and pair.chosen.strip() != pair.rejected.strip()
        assert pair.prompt and pair.prompt[-1]["role"] == "user"
        for text in (pair.chosen, pair.rejected, *(m["content"] for m in pair.prompt)):
            assert "\x00" not in text and text.encode("utf-8")
    for line in refused:
        line.encode("utf-8")  # the stage writes them to refused.txt
