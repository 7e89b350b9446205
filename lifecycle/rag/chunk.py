"""Chunking: cut documents into overlapping pieces for embedding, by tokens of the embedding model's
tokenizer or by characters (at paragraph, line or word boundaries), keeping each document's metadata.

    spans = split_characters(text, size=800, overlap=100)       # [(start, end), ...] character offsets
    chunks = chunk_documents(docs, cfg.rag_index.chunk, settings="3f2a...", tokenizer=embedder.tokenizer)

A chunk is a dict: chunk_id, doc_key, doc_id, chunk_index, text (as shown), search_text (what is embedded
and full-text indexed: the text, prefixed with the title when `title_prefix` is on), source, path, title,
object, split. `doc_key` hashes the document's content id, its metadata and the index settings, so a
changed document, changed metadata or changed settings all give new keys (and so re-embedding).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from transformers import PreTrainedTokenizerBase

from lifecycle.config import RagChunkConfig
from lifecycle.hashing import hash_json

META = ("source", "path", "title", "object", "split")
Chunk = dict[str, Any]


def doc_key(doc: dict[str, Any], settings: str) -> str:
    """Identity of a document *as indexed*: its content hash, metadata and the index settings."""
    return hash_json({"id": doc["id"], **{m: doc.get(m) or "" for m in META}, "settings": settings})


def split_characters(text: str, size: int, overlap: int) -> list[tuple[int, int]]:
    """Windows of at most `size` characters overlapping by about `overlap`, ending at a paragraph, line or
    word boundary when there is one in the window's second half."""
    spans: list[tuple[int, int]] = []
    start, n = 0, len(text)
    while start < n:
        end = min(start + size, n)
        if end < n:
            for sep in ("\n\n", "\n", " "):
                cut = text.rfind(sep, start + size // 2, end)
                if cut > 0:
                    end = cut + len(sep)
                    break
        spans.append((start, end))
        if end >= n:
            break
        nxt = max(end - overlap, start + 1)
        space = text.find(" ", nxt, end)  # start the next window at a word, not mid-word
        start = space + 1 if 0 <= space < end - 1 else nxt
    return spans


def split_tokens(text: str, offsets: list[tuple[int, int]], size: int, overlap: int) -> list[tuple[int, int]]:
    """Character spans of windows of `size` tokens overlapping by about `overlap` tokens, from the tokenizer's
    offset mapping (so a chunk is an exact substring of the document). Window edges move inwards, by at most
    half the overlap each, to whitespace, so chunks do not start or end mid-word; coverage stays complete."""
    n = len(offsets)
    if not n:
        return []
    slack = max(overlap // 2 - 1, 0)

    def starts_word(i: int) -> bool:
        return i == 0 or text[offsets[i][0] - 1].isspace()

    def ends_word(i: int) -> bool:
        return i == n - 1 or text[offsets[i][1]:offsets[i][1] + 1].isspace()

    spans = []
    for first in range(0, n, size - overlap):
        last = min(first + size, n) - 1
        a = next((i for i in range(first, min(first + slack, last) + 1) if starts_word(i)), first)
        b = next((i for i in range(last, max(last - slack, a) - 1, -1) if ends_word(i)), last)
        spans.append((offsets[a][0], offsets[b][1]))
        if last == n - 1:
            break
    return spans


def chunk_documents(docs: Iterable[dict[str, Any]], cfg: RagChunkConfig, settings: str,
                    tokenizer: PreTrainedTokenizerBase | None = None) -> list[Chunk]:
    """All chunks of `docs`, in document order. `tokenizer` is required when `cfg.unit == "tokens"`."""
    docs = list(docs)
    if not docs:
        return []
    if cfg.unit == "tokens":
        if tokenizer is None:
            raise ValueError("chunk.unit 'tokens' needs the embedding model's tokenizer")
        enc = tokenizer([d["text"] for d in docs], add_special_tokens=False, return_offsets_mapping=True,
                        truncation=False, verbose=False)
        all_spans = [split_tokens(d["text"], offsets, cfg.size, cfg.overlap)
                     for d, offsets in zip(docs, enc["offset_mapping"])]
    else:
        all_spans = [split_characters(d["text"], cfg.size, cfg.overlap) for d in docs]
    chunks: list[Chunk] = []
    for doc, spans in zip(docs, all_spans):
        key = doc_key(doc, settings)
        meta = {m: doc.get(m) or "" for m in META}
        for i, (start, end) in enumerate(spans):
            text = doc["text"][start:end].strip()
            if not text:
                continue
            title = meta["title"]
            prefix = cfg.title_prefix and title and not text.startswith(title)
            chunks.append({"chunk_id": f"{key}-{i}", "doc_key": key, "doc_id": doc["id"], "chunk_index": i,
                           "text": text, "search_text": f"{title}\n{text}" if prefix else text, **meta})
    return chunks
