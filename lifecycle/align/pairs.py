"""The preference set as the RLHF trainers read it: rows of TRL's conversational preference format
(`prompt`: messages, `chosen`/`rejected`: one assistant message each, plus `source`, `item_id`), split
into training and held-out pairs by a content hash, so the split is the same in every run.

    train, held_out = split_pairs(read_snapshot(path), fraction=0.2)
    prompts = unique_prompts(train, limit=256)      # what the policy practises on
"""

from __future__ import annotations

from typing import Any

from lifecycle.hashing import hash_json

Row = dict[str, Any]


def pair_id(row: Row) -> str:
    return hash_json([row["prompt"], row["chosen"], row["rejected"]])


def split_pairs(rows: list[Row], fraction: float) -> tuple[list[Row], list[Row]]:
    """(train, held out): a pair is held out when its hash falls under `fraction`; both sides of a tie
    exported as two rows (same prompt, swapped answers) land on the same side."""
    def side(row: Row) -> bool:
        answers = sorted([row["chosen"][0]["content"], row["rejected"][0]["content"]])
        return int(hash_json([row["prompt"], answers])[:8], 16) / 2**32 < fraction

    held_out = [r for r in rows if side(r)]
    train = [r for r in rows if not side(r)]
    return train, held_out


def unique_prompts(rows: list[Row], limit: int) -> list[list[dict[str, str]]]:
    """Distinct prompts in a stable order (by hash), at most `limit`."""
    found = {hash_json(r["prompt"]): r["prompt"] for r in rows}
    return [found[k] for k in sorted(found)][:limit]


def trl_rows(rows: list[Row]) -> list[Row]:
    """Only the columns TRL's preference trainers read."""
    return [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]
