"""A batch's state as people and the waiting flow see it: progress against the quota, the quality
statistics, and the one-way step from `open` to `complete` once the quota and the agreement threshold
are met (taken once, even when many votes arrive at the same moment).

    summary = batch_summary(store, batch_id)          # JSON-ready: progress + statistics
    done = complete_if_ready(store, batch_id)         # the summary when this call closed the batch, else None
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import update

from lifecycle.preferences.db import write
from lifecycle.preferences.schema import Batch
from lifecycle.preferences.stats import batch_stats
from lifecycle.preferences.store import PreferenceStore


def batch_summary(store: PreferenceStore, batch_id: str) -> dict[str, Any]:
    progress = store.progress(batch_id)
    batch = store.batch(batch_id)
    stats = batch_stats(store.judgements(batch_id))
    alpha = stats.krippendorff_alpha
    return {"batch_id": batch_id, "status": progress.status, "source": batch.source if batch else "",
            "model": batch.model if batch else None, "items": progress.items, "votes": progress.votes,
            "quota": progress.quota, "complete_items": progress.complete_items, "quota_met": progress.done,
            "min_agreement": batch.min_agreement if batch else 0.0, "agreement": alpha,
            "agreement_met": alpha is None or alpha >= (batch.min_agreement if batch else 0.0),
            "flow_run_id": batch.flow_run_id if batch else None, "stats": stats.to_dict()}


def ready(summary: dict[str, Any]) -> bool:
    """Quota met and agreement at its threshold (with one vote per item agreement is undefined: not required)."""
    return bool(summary["quota_met"] and summary["agreement_met"])


def complete_if_ready(store: PreferenceStore, batch_id: str) -> dict[str, Any] | None:
    summary = batch_summary(store, batch_id)
    if summary["status"] != "open" or not ready(summary):
        return None
    with write(store.engine) as s:
        closed = s.execute(update(Batch).where(Batch.id == batch_id, Batch.status == "open")
                           .values(status="complete")).rowcount
    return {**summary, "status": "complete"} if closed else None
