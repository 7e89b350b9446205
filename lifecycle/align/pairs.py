"""The preference set as the RLHF trainers read it: rows of TRL's conversational preference format
(`prompt`: messages, `chosen`/`rejected`: one assistant message each, plus `source`, `item_id` and, where the
prompt has one, `reference`), split into training and held-out pairs by a hash of the prompt, so the split
is the same in every run and a held-out prompt is one that neither the reward model, nor DPO, nor the policy
trains on (the gold judge's monitoring prompts come from that side: lifecycle/align/gold.py).

    train, held_out = split_pairs(read_snapshot(path), fraction=0.2)
    prompts = unique_prompts(train, limit=256)      # what the policy practises on
"""

from __future__ import annotations

from typing import Any

from lifecycle.hashing import hash_json

Row = dict[str, Any]


def held_out_prompt(prompt: list[dict[str, str]], fraction: float) -> bool:
    """Whether a prompt is held out: its hash falls under `fraction`."""
    return int(hash_json(prompt)[:8], 16) / 2**32 < fraction


def split_pairs(rows: list[Row], fraction: float) -> tuple[list[Row], list[Row]]:
    """(train, held out): every pair of a prompt lands on the side its prompt's hash decides, so the held-out
    pairs ask questions no trainer saw (and both rows of a tie exported as two, a over b and b over a, stay
    together)."""
    held = [held_out_prompt(r["prompt"], fraction) for r in rows]
    return [r for r, h in zip(rows, held) if not h], [r for r, h in zip(rows, held) if h]


def unique_prompts(rows: list[Row], limit: int) -> list[list[dict[str, str]]]:
    """Distinct prompts in a stable order (by hash), at most `limit`."""
    found = {hash_json(r["prompt"]): r["prompt"] for r in rows}
    return [found[k] for k in sorted(found)][:limit]


def trl_rows(rows: list[Row]) -> list[Row]:
    """Only the columns TRL's preference trainers read."""
    return [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]
