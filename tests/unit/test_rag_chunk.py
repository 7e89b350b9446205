"""RAG chunking: windows cover the whole text with the configured overlap, token windows stay within the
size, metadata travels with every chunk, and the document key changes with content, metadata or settings."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from lifecycle.config import RagChunkConfig
from lifecycle.data.clean import text_id
from lifecycle.rag.chunk import chunk_documents, doc_key, split_characters, split_tokens
from lifecycle.hub import resolve_model

TEXT = ("Serialize obj to a JSON formatted str. If skipkeys is true then dict keys that are not basic types "
        "will be skipped instead of raising a TypeError.\n\nIf ensure_ascii is false, the return value can "
        "contain non-ASCII characters.\n\n" * 6)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model("sentence-transformers/all-MiniLM-L6-v2"))


def doc(text: str = TEXT, **meta: str) -> dict:
    return {"id": text_id(text), "text": text, "source": "stdlib", "path": "json/__init__.py", "title": "json.dumps",
            "object": "json.dumps", "split": "train"} | meta


def covered(spans: list[tuple[int, int]], text: str) -> bool:
    mask = [False] * len(text)
    for a, b in spans:
        mask[a:b] = [True] * (b - a)
    return all(m or c.isspace() for m, c in zip(mask, text))


def test_character_windows_cover_the_text_overlap_and_end_at_boundaries() -> None:
    spans = split_characters(TEXT, size=200, overlap=40)
    assert len(spans) > 3 and covered(spans, TEXT)
    assert all(b - a <= 200 for a, b in spans)
    assert all(spans[i + 1][0] < spans[i][1] for i in range(len(spans) - 1))  # consecutive windows overlap
    assert all(TEXT[b - 1].isspace() for a, b in spans[:-1])  # cut at a paragraph, line or word boundary
    assert split_characters("short", 200, 40) == [(0, 5)]


def test_token_windows_respect_size_cover_the_text_and_start_at_words(tokenizer) -> None:
    offsets = tokenizer(TEXT, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    spans = split_tokens(TEXT, offsets, size=48, overlap=12)
    assert len(spans) > 3 and covered(spans, TEXT)
    for a, b in spans:
        assert len(tokenizer(TEXT[a:b], add_special_tokens=False)["input_ids"]) <= 48
        assert a == 0 or TEXT[a - 1].isspace()
    assert split_tokens("", [], 48, 12) == []


def test_chunks_keep_metadata_and_prefix_the_title(tokenizer) -> None:
    cfg = RagChunkConfig(unit="tokens", size=48, overlap=12, title_prefix=True)
    chunks = chunk_documents([doc()], cfg, settings="s1", tokenizer=tokenizer)
    assert len(chunks) > 3
    assert [c["chunk_index"] for c in chunks] == list(range(len(chunks)))
    assert len({c["chunk_id"] for c in chunks}) == len(chunks)
    for c in chunks:
        assert (c["source"], c["path"], c["title"], c["object"]) == ("stdlib", "json/__init__.py", "json.dumps",
                                                                     "json.dumps")
        assert c["text"] in TEXT and c["search_text"].endswith(c["text"])
    assert chunks[1]["search_text"] == "json.dumps\n" + chunks[1]["text"]
    plain = chunk_documents([doc()], cfg.model_copy(update={"title_prefix": False}), "s1", tokenizer)
    assert all(c["search_text"] == c["text"] for c in plain)
    chars = chunk_documents([doc()], RagChunkConfig(unit="characters", size=300, overlap=50, title_prefix=False), "s1")
    assert len(chars) > 3 and all(len(c["text"]) <= 300 for c in chars)
    with pytest.raises(ValueError, match="tokenizer"):
        chunk_documents([doc()], cfg, "s1")


def test_doc_key_changes_with_content_metadata_and_settings() -> None:
    base = doc_key(doc(), "s1")
    assert doc_key(doc(), "s1") == base
    assert doc_key(doc(TEXT + "!"), "s1") != base
    assert doc_key(doc(title="json.loads"), "s1") != base
    assert doc_key(doc(), "s2") != base


def test_overlap_must_be_smaller_than_size() -> None:
    with pytest.raises(ValueError, match="overlap"):
        RagChunkConfig(unit="tokens", size=32, overlap=32, title_prefix=True)
