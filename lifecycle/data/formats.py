"""One corpus file into raw records `(text, title)`, per format: plain text (txt, md, rst), HTML (the visible
text: scripts, styles and the head dropped), JSON, JSONL, CSV and Parquet.

Bytes are UTF-8 unless the file starts with a UTF-16/UTF-32 byte-order mark or its source names another
`encoding`. Hostile input is either repaired and counted, or refused:
- repaired: stray invalid UTF-8 bytes, NUL characters past the first 8 KB and lone surrogates are dropped and
  counted (`invalid_bytes` in the ingest stats); an empty file is one empty record (ingest drops and counts it);
- refused with an InputError naming the file, the line or row, and the value seen: binary files (a NUL byte
  in the first 8 KB), files with more invalid bytes than `ingest.max_undecodable_share`, malformed
  JSON/JSONL/CSV (bad JSON, ragged rows, unterminated quotes), unreadable or wrongly typed Parquet, records
  without a string text field.

    text, repaired = decode_bytes(path, path.read_bytes(), 0.3)
    for text, title in parse_text(path, text, source): ...   # or read_parquet(path, source)
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from lifecycle.config import SourceConfig
from lifecycle.errors import InputError

TEXT_EXTS = {".txt", ".md", ".rst", ".text", ".markdown"}
HTML_EXTS = {".html", ".htm"}
BINARY_PROBE = 8192  # a NUL byte this early means a binary file (git's heuristic)
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),  # UTF-32-LE's BOM starts like UTF-16-LE's
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_UNUSABLE = re.compile("[\x00\ud800-\udfff]")  # NUL and lone surrogates: not storable as UTF-8 text
_SEEN_CHARS = 60


def clean_text(text: str) -> tuple[str, int]:
    """`text` without NUL characters and lone surrogates (which JSON escapes can carry), and how many went."""
    return _UNUSABLE.subn("", text)


def display_path(path: Path) -> str:
    """The path as valid UTF-8 text (a file name that is not UTF-8 keeps U+FFFD where its bad bytes were)."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def seen(value: Any) -> str:
    """A value as shown in an error message: JSON, cut to about 60 characters."""
    text = json.dumps(value, ensure_ascii=True, default=str)
    return text if len(text) <= _SEEN_CHARS else text[:_SEEN_CHARS - 3] + "..."


def decode_bytes(path: Path, data: bytes, max_undecodable_share: float, encoding: str = "utf-8") -> tuple[str, int]:
    """(text, characters dropped): UTF-8 with stray invalid bytes dropped and counted; a byte-order mark or
    a source's `encoding` decodes strictly; binary or mis-encoded files are refused."""
    codec = next((name for bom, name in _BOMS if data.startswith(bom)), None)
    if codec is None and codecs.lookup(encoding).name != "utf-8":
        codec = encoding
    if codec:
        try:
            return clean_text(data.decode(codec))
        except UnicodeDecodeError as err:
            raise InputError(f"{path}: byte {err.start} is not valid {codec} ({err.reason}), seen "
                             f"{data[err.start:err.start + 8]!r}") from None
    nul = data.find(b"\x00", 0, BINARY_PROBE)
    if nul >= 0:
        raise InputError(f"{path}: looks like a binary file (NUL byte at offset {nul}, seen "
                         f"{data[max(0, nul - 8):nul + 8]!r}); expected UTF-8 text (UTF-16 and UTF-32 need a "
                         "byte-order mark)")
    text = data.decode("utf-8-sig", errors="replace")
    invalid = text.count("\ufffd") - data.count("\ufffd".encode())
    text, dropped = clean_text(text.replace("\ufffd", "") if invalid else text)
    if invalid + dropped and (invalid + dropped) / len(data) > max_undecodable_share:
        raise InputError(f"{path}: {invalid + dropped} of {len(data)} bytes ({(invalid + dropped) / len(data):.0%}) "
                         f"are not valid UTF-8 text{_first_invalid(data)} (limit ingest.max_undecodable_share="
                         f"{max_undecodable_share:.0%}); is it binary, or in another encoding (set `encoding` on "
                         "its source)?")
    return text, invalid + dropped


def _first_invalid(data: bytes) -> str:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        return f", the first at byte {err.start}: {data[max(0, err.start - 8):err.start + 8]!r}"
    return ""


def parse_text(path: Path, text: str, source: SourceConfig) -> Iterator[tuple[str, str]]:
    """(text, title) of each record of a decoded text file; an empty file is one empty record."""
    ext = path.suffix.lower()
    if not text.strip():
        yield "", path.stem
    elif ext in TEXT_EXTS:
        yield text, _first_heading(text) or path.stem
    elif ext in HTML_EXTS:
        title, body = html_to_text(text)
        yield body, title or path.stem
    elif ext == ".jsonl":
        for lineno, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 may sit inside a string
            if line.strip():
                yield _field(_parse_json(line, f"{path}:{lineno}"), source, f"{path}:{lineno}", f"{path.stem}#{lineno}")
    elif ext == ".json":
        rows = _parse_json(text, str(path))
        if isinstance(rows, dict):
            rows = rows.get("data", rows.get("records"))
        if not isinstance(rows, list):
            raise InputError(f"{path}: expected a JSON list of records (or {{'data': [...]}}), "
                             f"got {type(rows).__name__}")
        for i, row in enumerate(rows):
            yield _field(row, source, f"{path}[{i}]", f"{path.stem}#{i}")
    elif ext == ".csv":
        yield from _csv_records(path, text, source)


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{where}: not valid JSON ({err.msg} at column {err.colno}), seen "
                         f"{seen(text[max(0, err.pos - 20):err.pos + 20])}") from None
    except (ValueError, RecursionError) as err:  # an integer too long to convert, nesting too deep
        raise InputError(f"{where}: not usable JSON ({str(err) or type(err).__name__}), seen {seen(text)}") from None


def _field(row: Any, source: SourceConfig, where: str, default_title: str) -> tuple[str, str]:
    if isinstance(row, str):
        return row, default_title
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected an object with a '{source.text_field}' field, got "
                         f"{type(row).__name__}: {seen(row)}")
    if source.text_field not in row:
        raise InputError(f"{where}: no '{source.text_field}' field (fields: {sorted(row)[:10]}); "
                         f"set text_field on source '{source.name}'")
    value = row[source.text_field]
    if not isinstance(value, str):
        raise InputError(f"{where}: field '{source.text_field}' is {type(value).__name__}, expected a string; "
                         f"seen {seen(value)}")
    return value, str(row.get("title") or default_title)


def _csv_records(path: Path, text: str, source: SourceConfig) -> Iterator[tuple[str, str]]:
    """Rows of a CSV file with a header; `path:LINE` is where a row starts (quoted fields may span lines)."""
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))  # the file is in memory already: any field fits
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    line = 1
    try:
        header = next(reader)
        if source.text_field not in header:
            raise InputError(f"{path}:1: no column '{source.text_field}' (columns: {header[:10]}); "
                             f"set text_field on source '{source.name}'")
        column, title_column = header.index(source.text_field), header.index("title") if "title" in header else None
        line = reader.line_num + 1
        for row in reader:
            if row and len(row) != len(header):
                raise InputError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}; seen {seen(row)}")
            if row:
                title = row[title_column] if title_column is not None and row[title_column] else f"{path.stem}#{line}"
                yield row[column], title
            line = reader.line_num + 1
    except csv.Error as err:
        hint = " (a quoted field that is never closed?)" if "end of data" in str(err) else ""
        raise InputError(f"{path}:{line}: not valid CSV: {err}{hint}; seen {seen(_line_at(text, line))}") from None


def _line_at(text: str, number: int) -> str:
    parts = text.split("\n", number)
    return parts[number - 1] if len(parts) >= number else ""


def read_parquet(path: Path, source: SourceConfig) -> Iterator[tuple[str, str]]:
    """(text, title) per row of a Parquet file whose text column holds strings; a null text is an empty record."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as err:  # pyarrow raises several types for corrupt or truncated files
        raise InputError(f"{path}: cannot read parquet ({err})") from None
    if source.text_field not in schema.names:
        raise InputError(f"{path}: no column '{source.text_field}' (columns: {schema.names[:10]}); "
                         f"set text_field on source '{source.name}'")
    kind = schema.field(source.text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        raise InputError(f"{path}: column '{source.text_field}' holds {kind}, expected strings")
    columns = [source.text_field] + (["title"] if "title" in schema.names and source.text_field != "title" else [])
    try:
        table = pq.read_table(path, columns=columns)
        texts = table.column(source.text_field).to_pylist()
        titles = table.column("title").to_pylist() if len(columns) > 1 else [None] * len(texts)
    except Exception as err:  # a damaged row group, invalid UTF-8 in a string column, a duplicated column
        raise InputError(f"{path}: cannot read parquet ({err})") from None
    for i, (value, title) in enumerate(zip(texts, titles, strict=True)):
        yield value or "", str(title) if title else f"{path.stem}#{i}"


def _first_heading(text: str) -> str:
    for line in text.splitlines()[:20]:
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""


class _HTMLText(HTMLParser):
    SKIP = {"script", "style", "noscript", "template", "svg"}
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "section", "article",
             "blockquote", "table", "ul", "ol", "dt", "dd"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self._skip = 0
        self._in_head = self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in ("head", "body"):  # a body ends the head even when </head> is missing
            self._in_head = tag == "head"
        elif tag in self.SKIP:
            self._skip += 1
        elif tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag == "head":
            self._in_head = False
        elif tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data.strip()
        elif not (self._skip or self._in_head):
            self.parts.append(data)


def html_to_text(html: str) -> tuple[str, str]:
    """(title, visible text) with scripts, styles and the head dropped."""
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    return parser.title, "".join(parser.parts)
