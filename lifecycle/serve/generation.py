"""One answer, as the server produces it: the RAG prompt fitted to the model's context (lifecycle/rag/answer.py),
then generation in a worker thread whose text is read piece by piece, so a stream and a plain response are
the same text (a plain response is the joined stream).

    window, max_new = token_budget(served, question, system, cfg.answer.max_new_tokens, max_tokens=None)
    ids, used, truncated = fit_prompt(served.tokenizer, question, hits, system, window - max_new)
    stream = TextStream(served, ids, max_new, Sampling())
    for piece in stream: ...            # text deltas; then stream.text, stream.tokens, stream.finish_reason
    stream.cancel()                     # a client went away: generation stops at the next token

The text matches `lifecycle ask`: special tokens skipped, surrounding whitespace stripped (a stream holds
back trailing whitespace until more text follows).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from lifecycle.rag.answer import answer_budget
from lifecycle.serve.models import Served
from lifecycle.tokenizer import stop_token_ids

_END = object()


@dataclass(frozen=True)
class Sampling:
    temperature: float | None = None  # None or 0: greedy
    top_p: float | None = None
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return not self.temperature


def token_budget(served: Served, question: str, system_prompt: str | None, default_max_new: int,
                 max_tokens: int | None) -> tuple[int, int]:
    """(context window, tokens the answer may take). A client's `max_tokens` is taken as asked (LifecycleError
    when the question leaves less room); otherwise serve.answer.max_new_tokens, at most half of what the
    question leaves. The prompt is then `fit_prompt(tokenizer, question, hits, system_prompt, window - max_new)`."""
    exact = max_tokens is not None
    return answer_budget(served.model, served.tokenizer, question, system_prompt,
                         max_tokens if exact else default_max_new, exact=exact)


class _Tokens(BaseStreamer):
    """Receives generated token ids from `generate` (the prompt, which comes first, is skipped)."""

    def __init__(self) -> None:
        self.queue: queue.Queue[object] = queue.Queue()
        self._prompt = True

    def put(self, value: torch.Tensor) -> None:
        if self._prompt:
            self._prompt = False
            return
        for token in value.reshape(-1).tolist():
            self.queue.put(token)

    def end(self) -> None:
        self.queue.put(_END)


class _Cancelled(StoppingCriteria):
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: object) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class TextStream:
    """Generate from `ids` in a thread; iterate for the text as it grows. After the loop: `text`, `tokens`
    (generated, the stop token included), `finish_reason` ("stop" | "length"), `seconds` and
    `first_token_seconds` (to the first generated token; None without one)."""

    def __init__(self, served: Served, ids: list[int], max_new: int, sampling: Sampling) -> None:
        self.served, self.ids, self.max_new, self.sampling = served, ids, max_new, sampling
        self.text, self.tokens, self.finish_reason, self.seconds = "", 0, "stop", 0.0
        self.first_token_seconds: float | None = None
        self._cancel = threading.Event()
        self._error: BaseException | None = None

    def cancel(self) -> None:
        self._cancel.set()

    def _generate(self, streamer: _Tokens) -> None:
        tok, model = self.served.tokenizer, self.served.model
        stop = stop_token_ids(tok)
        pad = tok.pad_token_id if tok.pad_token_id is not None else (stop[0] if stop else None)
        input_ids = torch.tensor([self.ids], device=model.device)
        extra: dict[str, object] = {"do_sample": False}
        if not self.sampling.greedy:
            extra = {"do_sample": True, "temperature": self.sampling.temperature, "top_p": self.sampling.top_p or 1.0}
        try:
            with self.served.lock, torch.inference_mode():
                if self.sampling.seed is not None and not self.sampling.greedy:
                    torch.manual_seed(self.sampling.seed)
                model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=self.max_new,
                               eos_token_id=stop or None, pad_token_id=pad, streamer=streamer,
                               stopping_criteria=StoppingCriteriaList([_Cancelled(self._cancel)]), **extra)
        except BaseException as err:  # noqa: BLE001 - handed to the reading thread, which raises it
            self._error = err
            streamer.end()

    def __iter__(self) -> Iterator[str]:
        streamer, started = _Tokens(), time.perf_counter()
        threading.Thread(target=self._generate, args=(streamer,), name="serve-generate", daemon=True).start()
        tok, stop, generated, sent = self.served.tokenizer, set(stop_token_ids(self.served.tokenizer)), [], ""
        try:
            while (token := streamer.queue.get()) is not _END:
                if not generated:
                    self.first_token_seconds = time.perf_counter() - started
                generated.append(token)
                text = tok.decode(generated, skip_special_tokens=True).strip()
                if text.endswith("\ufffd") or not text.startswith(sent):
                    continue  # half a character, or a retokenised ending: wait for more
                if len(text) > len(sent):
                    piece, sent = text[len(sent):], text
                    yield piece
            if self._error is not None:
                raise self._error
            final = tok.decode(generated, skip_special_tokens=True).strip()
            if final.startswith(sent) and len(final) > len(sent):
                yield final[len(sent):]
                sent = final
        finally:
            self.cancel()  # a consumer that stops early (a closed connection) stops the generation too
            self.text, self.tokens, self.seconds = sent, len(generated), time.perf_counter() - started
            ended = bool(generated) and generated[-1] in stop
            self.finish_reason = "length" if len(generated) >= self.max_new and not ended else "stop"
