"""Which versions of the RAG table are kept. Every build makes new LanceDB table versions; cached rag_index
outputs (index.json), registered model versions (tags lifecycle.rag_index_version/_table) and
<state_dir>/rag/current.json point at particular ones. The rule, applied after each build:
(a) every referenced version is pinned by a Lance tag ("stage-<key>", "model-<name>-v<version>", "current"),
which Lance never deletes; (b) our tags (those prefixes) that nothing references any more are deleted;
(c) versions neither tagged nor the latest are deleted once older than rag_index.retention.unreferenced_days
(0: at once, which assumes no other process writes the table meanwhile).

LanceDB 0.40 prunes only through optimize(), which refuses to run while a tagged version is older than its
cut-off; Lance's own `cleanup_old_versions` (pylance, the same Lance release LanceDB bundles) skips tagged
versions instead (`error_if_tagged_old_versions=False`), which is the rule above.

    keep = referenced_versions(state_dir, info["uri"], info["table"], [cfg.run.models.chat])
    counts = retain_versions(open_table(info["uri"], info["table"]), keep, cfg.rag_index.retention.unreferenced_days)
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lifecycle.errors import ConfigError, LifecycleError
from lifecycle.rag.pairing import TABLE as TABLE_TAG
from lifecycle.rag.pairing import VERSION as VERSION_TAG
from lifecycle.registry import versions_tagged

if TYPE_CHECKING:
    import lance
    import lancedb

    Table = lancedb.table.Table | lance.LanceDataset  # either: the same tags, versions and clean-up

log = logging.getLogger("lifecycle.rag.retention")
OWN_PREFIXES = ("stage-", "model-", "current")
_TAG = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


def tag_name(raw: str) -> str:
    """`raw` as a Lance tag name: ASCII letters, digits, '-', '_' and single inner dots, not ending in ".lock".
    Other names get their bad runs replaced by '-' plus a hash of the original, so two never share a tag."""
    if _TAG.match(raw) and not raw.endswith(".lock"):
        return raw
    cleaned = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "-", raw)).strip(".")
    return f"{cleaned}-{hashlib.sha256(raw.encode()).hexdigest()[:8]}".lstrip("-")


def open_dataset(uri: str, table: str) -> lance.LanceDataset:
    """The Lance dataset LanceDB keeps table `table` of the database at `uri` in (`<uri>/<table>.lance`):
    its versions and tags, without loading LanceDB (seconds; a cached rag_index run only looks after them)."""
    import lance

    path = f"{uri.rstrip('/')}/{table}.lance"
    try:
        return lance.dataset(path)
    except (ValueError, OSError):
        raise LifecycleError(f"RAG index table '{table}' not found in {uri} (no dataset {path}); re-run the "
                             "rag_index stage") from None


def list_versions(tbl: Table) -> dict[int, float]:
    """{version: commit time in epoch seconds} of every version still on disk."""
    listed = tbl.list_versions() if hasattr(tbl, "list_versions") else tbl.versions()  # LanceDB's name, Lance's
    return {int(v["version"]): v["timestamp"].timestamp() for v in listed}


def pin_versions(tbl: Table, pins: dict[str, int], versions: dict[int, float]) -> None:
    """Create or move the tags {valid tag name: version}, after checking that every version is in `versions`."""
    for name, version in pins.items():
        if version not in versions:
            raise LifecycleError(f"RAG table {tbl.uri}: version {version} (tag '{name}') no longer exists; rebuild "
                                 "the index with `lifecycle run --from rag_index`, or drop what points at it")
    tags = tbl.tags.list()
    for name, version in pins.items():
        if name not in tags:
            tbl.tags.create(name, version)
        elif tags[name]["version"] != version:
            tbl.tags.update(name, version)


def pin_version(tbl: Table, tag: str, version: int) -> None:
    """Point tag `tag` (made valid by `tag_name`) at `version`: create it, or move it if it exists."""
    pin_versions(tbl, {tag_name(tag): version}, list_versions(tbl))


def same_table(uri: str, table: str, other_uri: str, other_table: str) -> bool:
    if "://" in uri or "://" in other_uri:
        return table == other_table and uri.rstrip("/") == other_uri.rstrip("/")
    return table == other_table and Path(uri).resolve() == Path(other_uri).resolve()


def read_pointer(path: Path) -> dict[str, Any]:
    """An index.json or current.json: {"uri", "table", "version", ...}."""
    try:
        info = json.loads(path.read_text())
        return {"uri": str(info["uri"]), "table": str(info["table"]), "version": int(info["version"])}
    except (ValueError, KeyError, TypeError) as err:
        raise LifecycleError(f"{path}: not a RAG index pointer with uri, table and version ({err!r}); "
                             "delete it or re-run the rag_index stage") from None


def referenced_versions(state_dir: Path, uri: str, table: str, model_names: list[str]) -> dict[str, int]:
    """{tag name: version} of everything pointing at `table` in `uri`: cached rag_index outputs, registered
    versions of `model_names` (MLflow must be configured) and current.json."""
    found: dict[str, int] = {}
    pointers = sorted((Path(state_dir) / "artifacts" / "rag_index").glob("*/index.json"))
    current = Path(state_dir) / "rag" / "current.json"
    for path in pointers + ([current] if current.is_file() else []):
        if path.parent.name.startswith("."):  # a stage output still being written
            continue
        info = read_pointer(path)
        if same_table(info["uri"], info["table"], uri, table):
            name = "current" if path == current else f"stage-{path.parent.name}"
            found[tag_name(name)] = info["version"]
    for model in model_names:
        numbers = versions_tagged(model, VERSION_TAG)
        for version, where in versions_tagged(model, TABLE_TAG).items():
            other_uri, _, other_table = where.rpartition("#")
            if version in numbers and same_table(other_uri, other_table, uri, table):
                if not numbers[version].isdigit():
                    raise LifecycleError(f"model {model} version {version}: tag {VERSION_TAG} = {numbers[version]!r} "
                                         "is not a table version number")
                found[tag_name(f"model-{model}-v{version}")] = int(numbers[version])
    return found


def prune_versions(tbl: Table, unreferenced_days: float) -> None:
    """Delete the versions that are neither tagged nor the latest and older than `unreferenced_days`."""
    import lance

    lance.dataset(tbl.uri).cleanup_old_versions(older_than=timedelta(days=unreferenced_days),
                                                delete_unverified=unreferenced_days == 0,
                                                error_if_tagged_old_versions=False)


def retain_versions(tbl: Table, keep: dict[str, int], unreferenced_days: float) -> dict[str, int]:
    """Apply the rule in the module docstring to `tbl` with `keep` ({tag name: version}, from
    `referenced_versions`); return what it counted."""
    if unreferenced_days < 0:
        raise ConfigError(f"rag_index.retention.unreferenced_days = {unreferenced_days}: must be >= 0")
    tbl.checkout_latest()
    before = list_versions(tbl)
    wanted = {tag_name(tag): version for tag, version in keep.items()}
    pin_versions(tbl, wanted, before)
    dropped = [t for t in tbl.tags.list() if t.startswith(OWN_PREFIXES) and t not in wanted]
    for tag in dropped:
        tbl.tags.delete(tag)
    prune_versions(tbl, unreferenced_days)
    tbl.checkout_latest()
    after, tags = list_versions(tbl), tbl.tags.list()
    counts = {"versions_before": len(before), "versions_after": len(after), "tags": len(tags),
              "tags_dropped": len(dropped)}
    log.info("rag_index retention: %s: %d versions -> %d, %d tags (%d dropped)", tbl.uri, *counts.values())
    return counts
