"""A registered model carries the RAG index it serves with: the rag_index stage tags the model version
it is given (by reference) with the index's table, version and stage key; `ask`, evaluation and serving
opens that index for that model.

    pair_index(ref, info, key)                   # info: the stage's index.json
    paired_index(state_dir, ref)                 # that index.json again, or None when never paired
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lifecycle.names import RAG_INDEX_KEY, RAG_INDEX_TABLE, RAG_INDEX_VERSION
from lifecycle.registry import ModelRef, tag_version, version_tags

VERSION, KEY, TABLE = RAG_INDEX_VERSION, RAG_INDEX_KEY, RAG_INDEX_TABLE


def pair_index(ref: ModelRef, info: dict[str, Any], key: str) -> None:
    tag_version(ref, {VERSION: str(info["version"]), KEY: key, TABLE: f"{info['uri']}#{info['table']}"})


def paired_index(state_dir: Path, ref: ModelRef) -> dict[str, Any] | None:
    """The index.json of the rag_index output `ref` was paired with (still in the store), or None."""
    tags = version_tags(ref)
    if KEY not in tags:
        return None
    path = Path(state_dir) / "artifacts" / "rag_index" / tags[KEY] / "index.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()) | {"key": tags[KEY], "version": int(tags[VERSION])}
