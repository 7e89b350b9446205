"""The retrieval-augmented prompt, one layout for training (the sft stage) and for answering
(`lifecycle ask`, evaluation and serving): an optional system message, then one user turn holding the numbered
context chunks and the question. The model's chat template renders it (and adds its default system
message when there is none here).

    rag_messages("What does json.dumps do?", [("json.dumps", "json.dumps(obj, ...)\\n\\nSerialize ...")], None)
"""

from __future__ import annotations

from collections.abc import Sequence


def rag_messages(question: str, chunks: Sequence[tuple[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    """Chat messages for `question` given (title, text) chunks, in the order they are to be read."""
    context = "\n\n".join(f"[{i}] {title}\n{text}" for i, (title, text) in enumerate(chunks, 1))
    user = f"Context:\n{context}\n\nQuestion: {question}" if chunks else f"Question: {question}"
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return system + [{"role": "user", "content": user}]
