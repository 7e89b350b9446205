"""Optional second stage of retrieval: a cross-encoder (sentence-transformers `CrossEncoder`) reads the question
with each of the first stage's top candidates and re-scores them. It sees question and chunk together, so it
can tell which of several near-identical chunks answers; it costs one transformer pass per candidate, which is
why it is off by default (`serve.search.rerank.model: null`) and its latency is reported next to its gain
(`lifecycle eval-retrieval`, the rag_index stage: the `reranked` row).

    reranker = load_reranker(cfg.serve.search.rerank)     # a local folder, or a hub id already in the HF cache
    hits = reranker.rerank("What does json.dumps do?", first_stage_hits, k=5)

No remote code is ever run (`trust_remote_code=False`); with HF_HUB_OFFLINE=1 a hub id must already be cached.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from lifecycle.config.serve import RerankConfig
from lifecycle.errors import ConfigError

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

    from lifecycle.rag.search import Hit

log = logging.getLogger("lifecycle.rag.rerank")
_THREADS = threading.Lock()


class Reranker:
    """Re-scores hits with a cross-encoder: score = its relevance of (question, title + text)."""

    def __init__(self, model: CrossEncoder, cfg: RerankConfig) -> None:
        self.model = model
        self.cfg = cfg

    def rerank(self, query: str, hits: list[Hit], k: int) -> list[Hit]:
        """The top k of the first `rerank.candidates` hits by cross-encoder score (the rest are dropped)."""
        pool = hits[:self.cfg.candidates]
        if not pool:
            return []
        pairs = [(query, passage(h)) for h in pool]
        with cpu_threads(self.cfg.threads if self.cfg.device == "cpu" else 0):
            scores = self.model.predict(pairs, batch_size=self.cfg.batch_size, show_progress_bar=False)
        scores = np.asarray(scores, dtype=np.float64).reshape(len(pool), -1)[:, -1]  # (candidates,): the last
        # label is "relevant" in two-label models, the only one in the usual single-logit rerankers
        order = sorted(range(len(pool)), key=lambda i: -float(scores[i]))  # stable: ties keep the first stage's order
        return [replace(pool[i], score=float(scores[i])) for i in order[:k]]


@contextmanager
def cpu_threads(threads: int) -> Iterator[None]:
    """Run the block on `threads` torch CPU threads (0: leave the setting alone). The setting is process-wide,
    so blocks that change it run one at a time."""
    if not threads:
        yield
        return
    import torch

    with _THREADS:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)


def passage(hit: Hit) -> str:
    """What the cross-encoder reads of a chunk: its title, then its text (as the chunk was indexed)."""
    return hit.text if not hit.title or hit.text.startswith(hit.title) else f"{hit.title}\n{hit.text}"


def load_reranker(cfg: RerankConfig) -> Reranker:
    """The cross-encoder named by `serve.search.rerank.model`, or a ConfigError naming the key and the value."""
    from sentence_transformers import CrossEncoder

    try:
        model = CrossEncoder(cfg.model, device=cfg.device, max_length=cfg.max_length, trust_remote_code=False)
    except (OSError, ValueError, RuntimeError) as err:
        raise ConfigError(f"serve.search.rerank.model = {cfg.model!r}: cannot load a sentence-transformers "
                          f"CrossEncoder from it ({err.__class__.__name__}: {str(err).splitlines()[0][:300]}); give "
                          "a local model folder, a hub id already in the cache, or null to turn reranking off") from None
    model.eval()
    log.info("rerank: cross-encoder %s on %s, top %d re-scored", cfg.model, cfg.device, cfg.candidates)
    return Reranker(model, cfg)
