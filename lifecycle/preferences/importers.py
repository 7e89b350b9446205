"""Public preference datasets, read directly: each row becomes a (prompt, chosen, rejected) pair.

Formats, recognised row by row (extra columns are ignored):
- TRL standard: `{"prompt": str, "chosen": str, "rejected": str}`; the prompt becomes one user message.
- TRL conversational: `prompt`, `chosen` and `rejected` are lists of `{"role", "content"}` messages. The
  answers are the final assistant messages; earlier messages of `chosen`/`rejected` extend the prompt,
  and must then be identical in both.
- TRL implicit prompt: only `chosen` and `rejected`, message lists sharing every message but the last:
  the shared part is the prompt.
- Anthropic HH-RLHF: `chosen`/`rejected` transcripts "\\n\\nHuman: ...\\n\\nAssistant: ...". The prompt is
  what precedes the last "\\n\\nAssistant:" (the same in both, else the row is refused), parsed into
  user/assistant turns; the answers are the text after it.

Files: `.jsonl` (numbered by physical line, blank lines skipped), `.json` (a list of rows, numbered from
1) and `.parquet` (rows numbered from 1); UTF-8, with or without a byte-order mark. A bad row (not JSON,
a missing field, an empty or whitespace-only prompt or answer, identical answers, text with NUL characters
or lone surrogates) is refused with a message naming the file, the line or row, the reason and the value
seen; the other rows are kept and the refusals counted (skip and count). A file with no usable row, a file
that is not UTF-8 or not JSON as a whole is an InputError.

    pairs, refused = read_preference_file(Path("oasst-en-pairs.jsonl"))
    pairs[0].prompt, pairs[0].chosen, pairs[0].rejected, pairs[0].origin   # ..., "oasst-en-pairs.jsonl:1"
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifecycle.errors import InputError

log = logging.getLogger("lifecycle.preferences")
Message = dict[str, str]
ROLES = ("system", "user", "assistant")
SUFFIXES = (".jsonl", ".json", ".parquet")
_HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_SEEN_CHARS = 80
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # NUL and lone surrogates (JSON escapes can carry them)
_Parsed = tuple[tuple[Message, ...], str, str]  # (prompt, chosen, rejected)


@dataclass(frozen=True)
class PreferencePair:
    """A prompt (the conversation before the answer, ending with a user turn) and two answers to it."""

    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    origin: str  # "FILE:LINE"


class _Refused(Exception):
    """A row that cannot be used: why, and the value that shows it."""

    def __init__(self, why: str, seen: Any) -> None:
        super().__init__(why)
        self.why, self.seen = why, seen


def read_preference_file(path: Path) -> tuple[list[PreferencePair], list[str]]:
    """(pairs, refused): one pair per usable row, one message per refused row."""
    unit = "line" if path.suffix.lower() == ".jsonl" else "row"
    pairs: list[PreferencePair] = []
    refused: list[str] = []
    for number, row in _rows(path):
        try:
            if isinstance(row, _Refused):
                raise row
            prompt, chosen, rejected = _to_pair(row)
        except _Refused as err:
            refused.append(f"{path} {unit} {number}: {err.why}, seen {_show(err.seen)}")
            continue
        pairs.append(PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected, origin=f"{path}:{number}"))
    if not pairs:
        shown = "; ".join(refused[:3]) or "the file has no rows"
        raise InputError(f"{path}: no usable preference pairs ({len(refused)} rows refused: {shown})")
    if refused:
        log.warning("%s: %d rows refused, the first: %s", path, len(refused), refused[0])
    log.info("%s: %d preference pairs read", path, len(pairs))
    return pairs, refused


def _rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(1-based line or row number, row) for each record; a line that is not JSON comes as a _Refused."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"{path}: preference files must be {', '.join(SUFFIXES)} (got '{path.suffix}')")
    if not path.is_file():
        raise InputError(f"{path}: preference file does not exist")
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as err:  # pyarrow raises several types for corrupt files
            raise InputError(f"{path}: cannot read parquet ({err})") from None
        yield from enumerate(rows, 1)
        return
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"{path} line {err.lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
        except (ValueError, RecursionError) as err:  # an integer too long to convert, nesting too deep
            raise InputError(f"{path}: not usable JSON ({str(err) or type(err).__name__})") from None
        if not isinstance(rows, list):
            raise InputError(f"{path}: a .json preference file must hold a list of rows, got {type(rows).__name__}")
        yield from enumerate(rows, 1)
        return
    for lineno, line in enumerate(text.split("\n"), 1):  # physical lines: U+2028 inside strings stays put
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as err:
            yield lineno, _Refused(f"not valid JSON ({err.msg} at column {err.colno})", line)
        except (ValueError, RecursionError) as err:
            yield lineno, _Refused(f"not usable JSON ({str(err) or type(err).__name__})", line)


def _to_pair(row: Any) -> _Parsed:
    """(prompt, chosen, rejected) of one row in any of the formats above; raises _Refused."""
    if not isinstance(row, dict):
        raise _Refused(f"expected an object, got {type(row).__name__}", row)
    needed = ("chosen", "rejected") if "prompt" not in row else ("prompt", "chosen", "rejected")
    missing = [f for f in needed if row.get(f) is None]
    if missing:
        raise _Refused(f"missing field(s) {', '.join(map(repr, missing))}", {"fields": sorted(map(str, row))})
    chosen, rejected = row["chosen"], row["rejected"]
    if "prompt" in row:
        prompt = row["prompt"]
        if isinstance(prompt, str) and isinstance(chosen, str) and isinstance(rejected, str):
            return _answers(({"role": "user", "content": prompt},), chosen, rejected)
        if isinstance(prompt, list) and isinstance(chosen, list) and isinstance(rejected, list):
            return _conversation(_messages(prompt, "prompt"), chosen, rejected)
        raise _Refused("'prompt', 'chosen' and 'rejected' must all be strings (TRL standard) or all lists of "
                       "messages (TRL conversational)", {f: type(row[f]).__name__ for f in needed})
    if isinstance(chosen, list) and isinstance(rejected, list):
        return _conversation((), chosen, rejected)
    if isinstance(chosen, str) and isinstance(rejected, str):
        return _hh_rlhf(chosen, rejected)
    raise _Refused("'chosen' and 'rejected' must both be lists of messages or both Anthropic HH transcripts",
                   {f: type(row[f]).__name__ for f in needed})


def _conversation(prompt: tuple[Message, ...], chosen: list[Any], rejected: list[Any]) -> _Parsed:
    """Message-list answers: all but the final assistant message must agree and extend the prompt."""
    chosen_msgs, rejected_msgs = _messages(chosen, "chosen"), _messages(rejected, "rejected")
    for field, msgs in (("chosen", chosen_msgs), ("rejected", rejected_msgs)):
        if msgs[-1]["role"] != "assistant":
            raise _Refused(f"the last message of '{field}' must be an assistant message", msgs[-1])
    if chosen_msgs[:-1] != rejected_msgs[:-1]:
        raise _Refused("'chosen' and 'rejected' differ before their final assistant message",
                       {"chosen": len(chosen_msgs), "rejected": len(rejected_msgs)})
    return _answers(prompt + chosen_msgs[:-1], chosen_msgs[-1]["content"], rejected_msgs[-1]["content"])


def _hh_rlhf(chosen: str, rejected: str) -> _Parsed:
    """Anthropic HH-RLHF transcripts: the shared prefix before the last "\\n\\nAssistant:" is the prompt."""
    cut_c, cut_r = chosen.rfind(_HH_ASSISTANT), rejected.rfind(_HH_ASSISTANT)
    if cut_c < 0 or cut_r < 0:
        raise _Refused("no 'prompt' field and no '\\n\\nAssistant:' turn (not an Anthropic HH transcript)",
                       chosen if cut_c < 0 else rejected)
    if chosen[:cut_c] != rejected[:cut_r]:
        raise _Refused("the HH transcripts 'chosen' and 'rejected' differ before their last '\\n\\nAssistant:'",
                       chosen[:cut_c])
    answers = chosen[cut_c + len(_HH_ASSISTANT):], rejected[cut_r + len(_HH_ASSISTANT):]
    if any("\n\nHuman:" in a for a in answers):
        raise _Refused("the HH transcript ends with a Human turn, not an Assistant answer", answers)
    prefix = chosen[:cut_c]
    if prefix.lstrip().startswith("Human:"):
        prefix = "\n\n" + prefix.lstrip()
    parts = _HH_TURN.split(prefix)  # ["", speaker, text, speaker, text, ...]
    if parts[0].strip():
        raise _Refused("the HH transcript must start with '\\n\\nHuman:'", prefix)
    prompt = tuple({"role": "user" if speaker == "Human" else "assistant", "content": text.strip()}
                   for speaker, text in zip(parts[1::2], parts[2::2]))
    for i, m in enumerate(prompt):
        if not m["content"]:
            raise _Refused(f"turn {i + 1} of the HH transcript is empty", prefix)
    return _answers(prompt, answers[0].strip(), answers[1].strip())


def _answers(prompt: tuple[Message, ...], chosen: str, rejected: str) -> _Parsed:
    """The checks every format shares: a non-empty prompt ending with a user turn, two different answers."""
    if not prompt or not any(m["content"].strip() for m in prompt):
        raise _Refused("empty prompt", list(prompt))
    if prompt[-1]["role"] != "user":
        raise _Refused("the prompt must end with a user message", prompt[-1])
    for field, answer in (("chosen", chosen), ("rejected", rejected)):
        if not answer.strip():
            raise _Refused(f"empty '{field}' answer", answer)
    if chosen.strip() == rejected.strip():
        raise _Refused("'chosen' is identical to 'rejected'", chosen)
    for text in (chosen, rejected, *(m["content"] for m in prompt)):
        if _UNSTORABLE.search(text):
            raise _Refused("text with a NUL character or a lone surrogate (not storable as UTF-8)", text)
    return prompt, chosen, rejected


def _messages(value: list[Any], field: str) -> tuple[Message, ...]:
    """A list of {"role", "content"} messages (other keys dropped); raises _Refused."""
    if not value:
        raise _Refused(f"'{field}' is an empty list of messages", value)
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise _Refused(f"{field}[{i}] must be {{'role': one of {list(ROLES)}, 'content': a string}}", m)
        if not m["content"].strip():
            raise _Refused(f"{field}[{i}] has empty content", m)
        out.append({"role": m["role"], "content": m["content"]})
    return tuple(out)


def _show(value: Any) -> str:
    """The value seen, as JSON cut to about 80 characters (lone surrogates escaped: the line is stored as UTF-8)."""
    text = json.dumps(value, ensure_ascii=False, default=str).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= _SEEN_CHARS else text[:_SEEN_CHARS - 3] + "..."
