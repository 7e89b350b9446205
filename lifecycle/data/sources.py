"""Corpus sources: local files (txt, md, rst, html, jsonl/json, csv, parquet), the built-in
`python-docs` source (docstrings of the installed standard library), and Hugging Face hub datasets.

Each reader yields raw records `{"text", "source", "path", "title", "object", "invalid_bytes"}`; clean-up
and de-duplication happen in `lifecycle.data.ingest`. Errors name the file (and line) and what was seen.
"""

from __future__ import annotations

import ast
import glob
import hashlib
import logging
import os
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lifecycle.config import SourceConfig
from lifecycle.data.formats import (HTML_EXTS, TEXT_EXTS, clean_text, decode_bytes, display_path, parse_text,
                                    read_parquet)
from lifecycle.errors import InputError
from lifecycle.hashing import hash_json

log = logging.getLogger("lifecycle.ingest")
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
        target = path.resolve()
        if target.is_relative_to(top):
            continue
        if any(p.is_symlink() for p in (path, *path.parents)):
            raise InputError(f"source '{source.name}': '{path}' (under '{entry}') is a symbolic link to "
                             f"'{target}', outside '{top}'; remove the link or name the file in the "
                             "source's paths")
        raise InputError(f"source '{source.name}': '{path}' (matched by '{entry}') is '{target}', outside '{top}': "
                         "'..' after a wildcard climbs out of the folder the glob searches; name that folder instead")
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
            digest.update(os.fsencode(path.resolve()))
            try:
                with open(path, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(block)
            except OSError as err:
                raise InputError(f"{path}: cannot be read ({err.strerror})") from None
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


def read_file(path: Path, source: SourceConfig, max_undecodable_share: float) -> Iterator[Record]:
    """The records of one file (`lifecycle.data.formats`), each carrying how many characters were dropped."""
    try:
        parquet = path.suffix.lower() == ".parquet" and path.stat().st_size > 0  # an empty one is an empty file
        data = b"" if parquet else path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror})") from None
    if parquet:
        records, repaired = read_parquet(path, source), 0
    else:
        text, repaired = decode_bytes(path, data, max_undecodable_share, source.encoding)
        if repaired:
            log.warning("%s: %d characters dropped (invalid UTF-8, NUL, lone surrogates); if it is not UTF-8, "
                        "set `encoding` on source '%s'", path, repaired, source.name)
        records = parse_text(path, text, source)
    shown = display_path(path)
    for i, (text, title) in enumerate(records):
        text, dropped = clean_text(text)
        # repaired bytes of the whole file are counted once, on its first record
        yield {"text": text, "title": clean_text(title)[0], "source": source.name, "path": shown, "object": "",
               "invalid_bytes": dropped + (repaired if i == 0 else 0)}


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
            value, dropped = clean_text(value)
            yield {"text": value, "title": f"{source.dataset}#{i}", "object": "", "source": source.name,
                   "path": f"hf://{source.dataset}/{source.split}", "invalid_bytes": dropped}
