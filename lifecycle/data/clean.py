"""Text clean-up, document splitting and de-duplication (exact by hash, near by MinHash + LSH)."""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from collections.abc import Sequence

import numpy as np

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_TRAILING = re.compile(r"[ \t]+\n")
_BLANKS = re.compile(r"\n{3,}")
_PARAGRAPH = re.compile(r"\n\s*\n")


def normalize_text(text: str, form: str) -> str:
    """Unicode normal form, \\n newlines, no control characters, no trailing spaces, at most one blank line."""
    text = unicodedata.normalize(form, text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _TRAILING.sub("\n", text)
    return _BLANKS.sub("\n\n", text).strip()


def printable_share(text: str) -> float:
    if not text:
        return 0.0
    good = sum(1 for ch in text if ch.isprintable() or ch in "\n\t")
    return good / len(text)


def split_document(text: str, max_chars: int) -> list[str]:
    """Split at paragraph boundaries into pieces of at most `max_chars` (long paragraphs at line/char ends)."""
    if len(text) <= max_chars:
        return [text]
    pieces: list[str] = []
    current = ""
    for para in _PARAGRAPH.split(text):
        for part in _hard_split(para.strip(), max_chars):
            if current and len(current) + 2 + len(part) > max_chars:
                pieces.append(current)
                current = part
            else:
                current = f"{current}\n\n{part}" if current else part
    if current:
        pieces.append(current)
    return pieces


def _hard_split(para: str, max_chars: int) -> list[str]:
    """Pieces of at most `max_chars`, cut at the last newline or space before the limit (else at the limit);
    linear in the length: a 30 MB line is cut by moving an index, not by re-slicing what is left."""
    out: list[str] = []
    start = 0
    while len(para) - start > max_chars:
        end = start + max_chars
        cut = para.rfind("\n", start + 1, end)
        if cut < 0:
            cut = para.rfind(" ", start + 1, end)
        if cut < 0:
            cut = end
        piece = para[start:cut].strip()
        if piece:
            out.append(piece)
        start = cut
        while start < len(para) and para[start].isspace():
            start += 1
    if para[start:].strip():
        out.append(para[start:].strip())
    return out


def text_id(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def minhash_signatures(texts: Sequence[str], num_perm: int, shingle_words: int, seed: int = 1) -> np.ndarray:
    """MinHash signatures of word shingles, [len(texts), num_perm] uint64, deterministic across runs."""
    rng = np.random.default_rng(seed)
    # multiply-shift hashing: (a*x + b) mod 2^64, top 32 bits (uint64 arithmetic wraps, which is the mod)
    a = rng.integers(0, 2**63, num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, num_perm, dtype=np.uint64)
    out = np.empty((len(texts), num_perm), dtype=np.uint64)
    for i, text in enumerate(texts):
        words = text.split()
        k = min(shingle_words, max(1, len(words)))
        shingles = {" ".join(words[j:j + k]) for j in range(max(1, len(words) - k + 1))}
        h = np.fromiter((zlib.crc32(s.encode()) for s in shingles), dtype=np.uint64, count=len(shingles))
        out[i] = ((h[:, None] * a[None, :] + b[None, :]) >> np.uint64(32)).min(axis=0)  # [shingles, perm] -> [perm]
    return out


def lsh_bands(num_perm: int, threshold: float) -> tuple[int, int]:
    """(bands, rows) with bands * rows == num_perm whose S-curve midpoint is closest to `threshold`."""
    options = [(b, num_perm // b) for b in range(1, num_perm + 1) if num_perm % b == 0]
    return min(options, key=lambda br: abs((1 / br[0]) ** (1 / br[1]) - threshold))


def near_duplicates(sigs: np.ndarray, threshold: float) -> list[bool]:
    """For each text's MinHash signature (`minhash_signatures`), whether it near-duplicates an earlier kept
    one (estimated Jaccard >= threshold)."""
    bands, rows = lsh_bands(sigs.shape[1], threshold)
    buckets: dict[tuple[int, bytes], list[int]] = {}
    dup = [False] * len(sigs)
    for i in range(len(sigs)):
        keys = [(band, sigs[i, band * rows:(band + 1) * rows].tobytes()) for band in range(bands)]
        candidates = {j for key in keys for j in buckets.get(key, ())}
        if any(float(np.mean(sigs[i] == sigs[j])) >= threshold for j in candidates):
            dup[i] = True
            continue
        for key in keys:
            buckets.setdefault(key, []).append(i)
    return dup
