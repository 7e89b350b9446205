"""The exported preference set: voted items (and imported pairs) as TRL conversational preference rows,
written as a content-hashed JSONL snapshot.

A row is `{"prompt": [messages], "chosen": [{"role": "assistant", "content": ...}], "rejected": [...]}`
plus the extra columns `item_id`, `source`, `votes` (how many) and `agreement` (the majority's share),
and `reference` (the held-out reference answer of the item's prompt, where it has one), which TRL's DPO and
reward trainers ignore. The reference is what the simulated judges compared the answers with: the rlhf stage
scores its policy against it on held-out prompts (the gold judge). Snapshots written before it existed have
no `reference` and read as before. Each item's votes are aggregated by majority
(`lifecycle.preferences.stats.majority`, an a/b draw counts as a tie), then, in this order:
- fewer than `min_votes` votes: dropped ("dropped_few_votes");
- majority share below `min_agreement`: dropped ("dropped_low_agreement");
- a tie majority: `ties="drop"` drops it ("dropped_ties"); `ties="both"` emits two rows, a over b and
  b over a. They cancel in a Bradley-Terry loss: -log s(r_a - r_b) - log s(r_b - r_a) has gradient
  2 s(r_a - r_b) - 1 in the margin, zero when r_a = r_b and otherwise pulling the margin back to 0, so
  the pair teaches "equally good" without favouring either response.

The snapshot's identity is the SHA-256 of its bytes: rows in item_id order, canonical JSON (sorted keys),
so the same rows always give the same hash.

    rows, counts = export_rows(items, ties="drop", min_agreement=0.6, min_votes=2)
    rows += pairs_to_rows(read_preference_file(Path("pairs.jsonl"))[0])
    digest = write_snapshot(rows, Path("preferences.jsonl"))     # 64 hex chars
    rows == read_snapshot(Path("preferences.jsonl"))
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifecycle.errors import InputError
from lifecycle.hashing import hash_json
from lifecycle.manifest import write_bytes_atomic
from lifecycle.preferences.importers import Message, PreferencePair
from lifecycle.preferences.stats import CHOICES, majority

log = logging.getLogger("lifecycle.preferences")
SNAPSHOT = "preferences.jsonl"  # the preference set in a preferences stage output
TIES = ("drop", "both")
SOURCES = ("human", "simulated", "import", "feedback")
ROW_FIELDS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class VotedItem:
    """A prompt, two responses to it, and one vote per annotator ("a", "b" or "tie")."""

    item_id: str
    prompt: tuple[Message, ...]
    response_a: str
    response_b: str
    votes: tuple[str, ...]
    source: str  # "human" | "simulated" | "import" | "feedback"
    reference: str | None = None  # the prompt's held-out reference answer, when there is one


def export_rows(items: Sequence[VotedItem], ties: str, min_agreement: float,
                min_votes: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(rows sorted by item_id, counts of items, rows and of each reason for dropping an item)."""
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    if not 0.0 <= min_agreement <= 1.0:
        raise ValueError(f"min_agreement must be between 0 and 1, got {min_agreement}")
    if min_votes < 1:
        raise ValueError(f"min_votes must be >= 1, got {min_votes}")
    ids = [item.item_id for item in items]
    if len(set(ids)) != len(ids):
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"duplicate item_id(s): {duplicated[:5]}")
    counts = {"items": len(items), "rows": 0, "dropped_ties": 0, "dropped_low_agreement": 0, "dropped_few_votes": 0}
    rows: list[dict[str, Any]] = []
    for item in sorted(items, key=lambda it: it.item_id):
        unknown = [v for v in item.votes if v not in CHOICES]
        if unknown:
            raise ValueError(f"item {item.item_id}: votes must be {CHOICES}, got {unknown[:3]}")
        if len(item.votes) < min_votes:
            counts["dropped_few_votes"] += 1
            continue
        winner, share = majority(item.votes)
        if share < min_agreement:
            counts["dropped_low_agreement"] += 1
            continue
        if winner == "tie" and ties == "drop":
            counts["dropped_ties"] += 1
            continue
        orders = [(item.response_a, item.response_b), (item.response_b, item.response_a)]
        if winner == "b":
            orders = orders[1:]
        elif winner == "a":
            orders = orders[:1]
        for chosen, rejected in orders:
            row = _row(item.prompt, chosen, rejected, item.source)
            if item.reference:
                row["reference"] = item.reference
            rows.append({**row, "item_id": item.item_id, "votes": len(item.votes), "agreement": share})
    counts["rows"] = len(rows)
    log.info("preferences: %d rows from %d items (dropped: %d ties, %d low agreement, %d few votes)",
             counts["rows"], counts["items"], counts["dropped_ties"], counts["dropped_low_agreement"],
             counts["dropped_few_votes"])
    return rows, counts


def pairs_to_rows(pairs: Sequence[PreferencePair], source: str = "import") -> list[dict[str, Any]]:
    """Imported pairs as export rows (1 vote, agreement 1.0), item_id the hash of prompt/chosen/rejected;
    sorted by item_id, a pair repeated with identical content kept once."""
    rows: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        row = _row(pair.prompt, pair.chosen, pair.rejected, source)
        item_id = hash_json({f: row[f] for f in ROW_FIELDS})
        rows.setdefault(item_id, {**row, "item_id": item_id, "votes": 1, "agreement": 1.0})
    if len(rows) < len(pairs):
        log.info("preferences: %d duplicate imported pairs kept once", len(pairs) - len(rows))
    return [rows[i] for i in sorted(rows)]


def _row(prompt: Sequence[Message], chosen: str, rejected: str, source: str) -> dict[str, Any]:
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    return {"prompt": [dict(m) for m in prompt], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "source": source}


def snapshot_bytes(rows: list[dict[str, Any]]) -> bytes:
    """The canonical JSONL encoding of rows: one sorted-keys JSON object per line, UTF-8."""
    lines = (json.dumps(r, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False) for r in rows)
    return "".join(line + "\n" for line in lines).encode("utf-8")


def write_snapshot(rows: list[dict[str, Any]], path: Path) -> str:
    """Write rows as JSONL atomically (a temp file beside `path`, then renamed); returns its sha256 hex."""
    data = snapshot_bytes(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)
    digest = hashlib.sha256(data).hexdigest()
    log.info("preferences: %d rows written to %s (sha256 %s)", len(rows), path, digest[:12])
    return digest


def read_snapshot(path: Path) -> list[dict[str, Any]]:
    """The rows of a snapshot written by write_snapshot; InputError naming the file and line if malformed."""
    if not path.is_file():
        raise InputError(f"{path}: preference snapshot does not exist")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path} line {lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(row, dict) or any(f not in row for f in ROW_FIELDS):
            raise InputError(f"{path} line {lineno}: expected an object with {list(ROW_FIELDS)}, "
                             f"seen {line[:80]}")
        rows.append(row)
    return rows
