"""What the served traffic is compared with: the questions the served model was trained and evaluated on,
and the words it has seen.

- Questions: `sft.data.question_template` over each documented object of the served index (the questions
  the sft stage trains on and the evaluate stage asks: objects of validation-split documents are held out,
  role "evaluation"; the others "training"), plus the questions of `sft.data.files`; a stable sample of
  `monitor.reference.max_questions` (by hash, so every run compares with the same set).
- Vocabulary: the words of those questions and of the index's chunks (the corpus the answers come from).

    questions = reference_questions(tbl, cfg.sft.data, 500)      # [RefQuestion("What does json.dumps do?", ...)]
    vocabulary = reference_vocabulary(tbl, questions, 20000)      # {"json", "dumps", "serialize", ...}
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifecycle.config import SftDataConfig

WORD = re.compile(r"[a-z0-9_]+")


@dataclass(frozen=True)
class RefQuestion:
    text: str
    role: str  # "evaluation" | "training"


def words(text: str) -> list[str]:
    """Lower-case word tokens; `json.dumps` is `json` and `dumps`."""
    return WORD.findall(text.lower())


def _stable(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def reference_questions(tbl: Any, data: SftDataConfig, max_questions: int) -> list[RefQuestion]:
    """The served index's python-docs questions (when sft.data.python_docs) and sft.data.files' questions."""
    from lifecycle.align.sft_data import file_pairs
    from lifecycle.rag.evaluate import indexed_documents

    found: dict[str, RefQuestion] = {}
    if data.python_docs:
        for doc in indexed_documents(tbl):
            if doc["object"]:
                text = data.question_template.format(object=doc["object"])
                role = "evaluation" if doc["split"] == "validation" else "training"
                if found.get(text, RefQuestion(text, "training")).role == "training":  # held out anywhere: held out
                    found[text] = RefQuestion(text, role)
    for name in data.files:
        for pair in file_pairs(Path(name).expanduser(), data.val_fraction):
            users = [m["content"] for m in pair.prompt if m["role"] == "user"]
            if users:
                found.setdefault(users[-1], RefQuestion(users[-1], "evaluation" if pair.held_out else "training"))
    return sorted(found.values(), key=lambda q: _stable(q.text))[:max_questions]


def reference_vocabulary(tbl: Any, questions: list[RefQuestion], max_chunks: int) -> set[str]:
    vocabulary = {w for q in questions for w in words(q.text)}
    if max_chunks:
        for row in tbl.search().select(["text"]).limit(max_chunks).to_list():
            vocabulary.update(words(row["text"]))
    return vocabulary
