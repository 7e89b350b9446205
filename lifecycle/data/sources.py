"""Corpus sources: local files (txt, md, rst, html, jsonl/json, csv, parquet), the built-in
`python-docs` source (docstrings of the installed standard library), and Hugging Face hub datasets.

Each reader yields raw records `{"text", "source", "path", "title", "object", "invalid_bytes"}`; clean-up
and de-duplication happen in `lifecycle.data.ingest`. Errors name the file (and line) and what was seen.
"""

from __future__ import annotations

import ast
import csv
import glob
import hashlib
import json
import os
import sys
import sysconfig
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from lifecycle.config import SourceConfig
from lifecycle.hashing import hash_json
from lifecycle.errors import InputError

TEXT_EXTS = {".txt", ".md", ".rst", ".text", ".markdown"}
HTML_EXTS = {".html", ".htm"}
RECORD_EXTS = {".jsonl", ".json", ".csv", ".parquet"}
SUPPORTED = TEXT_EXTS | HTML_EXTS | RECORD_EXTS
Record = dict[str, Any]


def resolve_files(source: SourceConfig) -> list[Path]:
    """Expand the source's paths (files, directories, globs) into a sorted list of supported files."""
    files: list[Path] = []
    for entry in source.paths:
        pattern = os.path.expanduser(entry)
        if glob.has_magic(pattern):
            matched = [Path(p) for p in sorted(glob.glob(pattern, recursive=True)) if Path(p).is_file()]
            found = _inside(source, entry, [p for p in matched if p.suffix.lower() in SUPPORTED], _glob_root(pattern))
            if not found:
                raise InputError(f"source '{source.name}': glob '{entry}' matched no supported files "
                                 f"({len(matched)} files matched; supported: {', '.join(sorted(SUPPORTED))})")
        elif Path(pattern).is_dir():
            found = _inside(source, entry, sorted(p for p in Path(pattern).rglob("*") if p.is_file() and
                                                  p.suffix.lower() in SUPPORTED and not _hidden(p, Path(pattern))),
                            Path(pattern))
            if not found:
                raise InputError(f"source '{source.name}': directory '{entry}' contains no supported files "
                                 f"(supported: {', '.join(sorted(SUPPORTED))})")
        elif Path(pattern).is_file():
            if Path(pattern).suffix.lower() not in SUPPORTED:
                raise InputError(f"source '{source.name}': '{entry}' has unsupported type "
                                 f"'{Path(pattern).suffix or '(none)'}' (supported: {', '.join(sorted(SUPPORTED))})")
            found = [Path(pattern)]
        else:
            raise InputError(f"source '{source.name}': path '{entry}' does not exist")
        files.extend(found)
    return sorted(set(files))


def check_sources(sources: list[SourceConfig]) -> None:
    """Fail fast, before any flow starts, on paths that don't exist or hold nothing readable."""
    for source in sources:
        if source.kind == "files":
            resolve_files(source)


def _inside(source: SourceConfig, entry: str, files: list[Path], root: Path) -> list[Path]:
    """`files` (found under `root`), refusing any that a symbolic link takes outside `root`: a folder of
    documents must not become a way to read /etc/passwd or another user's files."""
    top = root.resolve()
    for path in files:
        if not path.resolve().is_relative_to(top):
            raise InputError(f"source '{source.name}': '{path}' (under '{entry}') is a symbolic link to "
                             f"'{path.resolve()}', outside '{top}'; remove the link or name the file in the "
                             "source's paths")
    return files


def _glob_root(pattern: str) -> Path:
    """The folder a glob searches: its leading parts without wildcards."""
    parts = Path(pattern).parts
    plain = parts[:next(i for i, part in enumerate(parts) if glob.has_magic(part))]
    return Path(*plain) if plain else Path(".")


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def fingerprint(source: SourceConfig) -> str:
    """A content hash of what the source would read, for cache keys (cheap: no parsing)."""
    if source.kind == "files":
        digest = hashlib.sha256()
        for path in resolve_files(source):
            digest.update(str(path.resolve()).encode())
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()[:16]
    if source.kind == "python-docs":
        return hash_json({"python": sys.version, "stdlib": sysconfig.get_paths()["stdlib"]})
    return hash_json({"dataset": source.dataset, "subset": source.subset, "split": source.split})


def read_source(source: SourceConfig, max_undecodable_share: float) -> Iterator[Record]:
    if source.kind == "files":
        for path in resolve_files(source):
            yield from read_file(path, source, max_undecodable_share)
    elif source.kind == "python-docs":
        yield from read_python_docs(source)
    else:
        yield from read_hf(source)


def decode_bytes(path: Path, data: bytes, max_undecodable_share: float) -> tuple[str, int]:
    """UTF-8 text with stray invalid bytes dropped and counted; binary or mis-encoded files rejected."""
    if b"\x00" in data[:8192]:
        raise InputError(f"{path}: looks like a binary file (NUL bytes); expected UTF-8 text")
    text = data.decode("utf-8-sig", errors="replace")
    invalid = text.count("\ufffd") - data.count("\ufffd".encode())
    if data and invalid / len(data) > max_undecodable_share:
        raise InputError(f"{path}: {invalid} of {len(data)} bytes ({invalid / len(data):.0%}) are not valid UTF-8 "
                         f"(limit ingest.max_undecodable_share={max_undecodable_share:.0%}); "
                         "is it binary or in another encoding?")
    if invalid:
        text = text.replace("\ufffd", "")
    return text, invalid


def read_file(path: Path, source: SourceConfig, max_undecodable_share: float) -> Iterator[Record]:
    if path.suffix.lower() == ".parquet":
        yield from _read_parquet(path, source)
        return
    text, invalid = decode_bytes(path, path.read_bytes(), max_undecodable_share)
    for i, record in enumerate(_parse_text_file(path, text, source)):
        # repaired bytes are counted once per file, on its first record
        yield {"source": source.name, "path": str(path), "object": "", "invalid_bytes": invalid if i == 0 else 0,
               **record}


def _parse_text_file(path: Path, text: str, source: SourceConfig) -> Iterator[Record]:
    ext = path.suffix.lower()
    if ext in TEXT_EXTS:
        yield {"text": text, "title": _first_heading(text) or path.stem}
    elif ext in HTML_EXTS:
        title, body = html_to_text(text)
        yield {"text": body, "title": title or path.stem}
    elif ext == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                row = _parse_json(line, f"{path}:{lineno}")
                yield _record(row, source, f"{path}:{lineno}", f"{path.stem}#{lineno}")
    elif ext == ".json":
        rows = _parse_json(text, str(path))
        if isinstance(rows, dict):
            rows = rows.get("data", rows.get("records"))
        if not isinstance(rows, list):
            raise InputError(f"{path}: expected a JSON list of records (or {{'data': [...]}}), "
                             f"got {type(rows).__name__}")
        for i, row in enumerate(rows):
            yield _record(row, source, f"{path}[{i}]", f"{path.stem}#{i}")
    elif ext == ".csv":
        reader = csv.DictReader(text.splitlines())
        if source.text_field not in (reader.fieldnames or []):
            raise InputError(f"{path}:1: no column '{source.text_field}' (columns: {reader.fieldnames}); "
                             f"set text_field on source '{source.name}'")
        for lineno, row in enumerate(reader, 2):
            yield _record(row, source, f"{path}:{lineno}", f"{path.stem}#{lineno}")


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None


def _record(row: Any, source: SourceConfig, where: str, default_title: str) -> Record:
    if isinstance(row, str):
        return {"text": row, "title": default_title}
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected an object with a '{source.text_field}' field, got {type(row).__name__}")
    if source.text_field not in row:
        raise InputError(f"{where}: no '{source.text_field}' field (fields: {sorted(row)[:10]}); "
                         f"set text_field on source '{source.name}'")
    value = row[source.text_field]
    if not isinstance(value, str):
        raise InputError(f"{where}: field '{source.text_field}' is {type(value).__name__}, expected a string")
    return {"text": value, "title": str(row.get("title") or default_title)}


def _read_parquet(path: Path, source: SourceConfig) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise InputError(f"{path}: cannot read parquet ({err})") from None
    if source.text_field not in table.column_names:
        raise InputError(f"{path}: no column '{source.text_field}' (columns: {table.column_names}); "
                         f"set text_field on source '{source.name}'")
    titles = table.column("title").to_pylist() if "title" in table.column_names else None
    for i, value in enumerate(table.column(source.text_field).to_pylist()):
        if value is None:
            continue
        title = str(titles[i]) if titles and titles[i] else f"{path.stem}#{i}"
        yield {"text": str(value), "title": title, "source": source.name, "path": str(path), "object": "",
               "invalid_bytes": 0}


def _first_heading(text: str) -> str:
    for line in text.splitlines()[:20]:
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""


class _HTMLText(HTMLParser):
    SKIP = {"script", "style", "noscript", "template", "svg", "head"}
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "section", "article",
             "blockquote", "table", "ul", "ol", "dt", "dd"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in self.SKIP:
            self._skip += 1
        elif tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data.strip()
        elif not self._skip:
            self.parts.append(data)


def html_to_text(html: str) -> tuple[str, str]:
    """(title, visible text) with scripts, styles and the head dropped."""
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    return parser.title, "".join(parser.parts)


def _wanted(module: str, source: SourceConfig) -> bool:
    def match(prefixes: list[str]) -> bool:
        return any(module == p or module.startswith(p + ".") for p in prefixes)

    return (not source.include or match(source.include)) and not match(source.exclude)


def stdlib_modules(source: SourceConfig) -> list[tuple[str, Path]]:
    """(dotted module name, file) for every pure-Python stdlib module the source selects."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in {"site-packages", "dist-packages"} or any("-" in p for p in rel.parts[:-1]):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if not parts or parts[-1] == "__main__":
            continue
        module = ".".join(parts)
        if _wanted(module, source):
            found.append((module, path))
    return found


def read_python_docs(source: SourceConfig) -> Iterator[Record]:
    """Docstrings of stdlib modules, classes and functions (parsed with `ast`; nothing is imported)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for module, path in stdlib_modules(source):
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError):
            continue  # a few stdlib test fixtures are deliberately not valid Python
        rel = str(path.relative_to(root))
        for dotted, kind, header, doc in _docstrings(tree, module):
            yield {"text": f"{header}\n\n{doc}", "title": dotted, "object": dotted, "source": source.name,
                   "path": rel, "invalid_bytes": 0, "kind": kind}


def _docstrings(tree: ast.Module, module: str) -> Iterator[tuple[str, str, str, str]]:
    doc = ast.get_docstring(tree)
    if doc:
        yield module, "module", f"Module {module}", doc
    yield from _walk(tree.body, module)


def _walk(body: list[ast.stmt], prefix: str) -> Iterator[tuple[str, str, str, str]]:
    for node in body:
        if not isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if node.name.startswith("_"):
            continue
        dotted = f"{prefix}.{node.name}"
        doc = ast.get_docstring(node)
        if isinstance(node, ast.ClassDef):
            if doc:
                yield dotted, "class", f"class {dotted}", doc
            yield from _walk(node.body, dotted)
        elif doc:
            yield dotted, "function", f"{dotted}({ast.unparse(node.args)})", doc


def read_hf(source: SourceConfig) -> Iterator[Record]:
    import datasets

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    if offline:
        raise InputError(f"source '{source.name}': Hugging Face dataset '{source.dataset}' cannot be downloaded "
                         "offline (HF_HUB_OFFLINE=1); unset it, or export the data to files and use kind: files")
    try:
        ds = datasets.load_dataset(source.dataset, source.subset, split=source.split)
    except Exception as err:  # network, auth and missing-dataset errors all surface here
        raise InputError(f"source '{source.name}': cannot load Hugging Face dataset '{source.dataset}' "
                         f"(split '{source.split}'): {err}") from None
    if source.text_field not in ds.column_names:
        raise InputError(f"source '{source.name}': dataset '{source.dataset}' has no column "
                         f"'{source.text_field}' (columns: {ds.column_names})")
    for i, value in enumerate(ds[source.text_field]):
        if isinstance(value, str):
            yield {"text": value, "title": f"{source.dataset}#{i}", "object": "", "source": source.name,
                   "path": f"hf://{source.dataset}/{source.split}", "invalid_bytes": 0}
