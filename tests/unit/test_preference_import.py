"""Preference importers: every supported format (TRL standard, conversational, implicit prompt, Anthropic
HH-RLHF; .jsonl, .json, .parquet) becomes (prompt, chosen, rejected) pairs; each kind of bad row is refused
with the file and its line or row number while the other rows are kept; a file with no usable row, an
unknown suffix or a missing file is an InputError; the real OASST export reads completely."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lifecycle.errors import InputError
from lifecycle.preferences.importers import PreferencePair, read_preference_file

OASST = Path(__file__).resolve().parents[3] / "shared/data/preferences/oasst-en-pairs.jsonl"
GOOD = {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def bot(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_trl_standard(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "std.jsonl", [GOOD, {**GOOD, "chosen": "four", "extra": 1}])
    pairs, refused = read_preference_file(path)
    assert refused == []
    assert pairs[0] == PreferencePair(prompt=(user("What is 2+2?"),), chosen="4", rejected="5", origin=f"{path}:1")
    assert pairs[1].chosen == "four" and pairs[1].origin == f"{path}:2"


def test_trl_conversational_with_multi_message_answers(tmp_path: Path) -> None:
    system = {"role": "system", "content": "Be brief."}
    rows = [{"prompt": [system, user("Hi")], "chosen": [bot("Hello!")], "rejected": [bot("Go away.")]},
            {"prompt": [user("Hi")], "chosen": [bot("Hello"), user("Name a colour"), bot("Blue")],
             "rejected": [bot("Hello"), user("Name a colour"), bot("Seven")]},
            {"prompt": [user("Hi")], "chosen": [bot("Hello"), user("Name a colour"), bot("Blue")],
             "rejected": [bot("Hey"), user("Name a colour"), bot("Seven")]}]
    pairs, refused = read_preference_file(write_jsonl(tmp_path / "conv.jsonl", rows))
    assert pairs[0].prompt == (system, user("Hi")) and (pairs[0].chosen, pairs[0].rejected) == ("Hello!", "Go away.")
    assert pairs[1].prompt == (user("Hi"), bot("Hello"), user("Name a colour"))
    assert (pairs[1].chosen, pairs[1].rejected) == ("Blue", "Seven")
    assert len(pairs) == 2 and len(refused) == 1
    assert "line 3" in refused[0] and "differ before their final assistant message" in refused[0]


def test_trl_implicit_prompt(tmp_path: Path) -> None:
    rows = [{"chosen": [user("Hi"), bot("Hello"), user("Colour?"), bot("Blue")],
             "rejected": [user("Hi"), bot("Hello"), user("Colour?"), bot("Seven")]},
            {"chosen": [bot("Blue")], "rejected": [bot("Seven")]}]
    pairs, refused = read_preference_file(write_jsonl(tmp_path / "implicit.jsonl", rows))
    assert pairs[0].prompt == (user("Hi"), bot("Hello"), user("Colour?"))
    assert (pairs[0].chosen, pairs[0].rejected) == ("Blue", "Seven")
    assert len(refused) == 1 and "line 2: empty prompt" in refused[0]


def test_anthropic_hh_multi_turn(tmp_path: Path) -> None:
    prefix = "\n\nHuman: Hi there\n\nAssistant: Hello, how can I help?\n\nHuman: Name a colour"
    rows = [{"chosen": prefix + "\n\nAssistant: Blue.", "rejected": prefix + "\n\nAssistant: I won't."},
            {"chosen": prefix + "\n\nAssistant: Blue.", "rejected": "\n\nHuman: Other\n\nAssistant: No."}]
    pairs, refused = read_preference_file(write_jsonl(tmp_path / "hh.jsonl", rows))
    assert pairs[0].prompt == (user("Hi there"), bot("Hello, how can I help?"), user("Name a colour"))
    assert (pairs[0].chosen, pairs[0].rejected) == ("Blue.", "I won't.")
    assert len(pairs) == 1 and "line 2" in refused[0] and "differ before their last" in refused[0]


def test_json_and_parquet_files(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    conv = {"prompt": [user("Hi")], "chosen": [bot("Hello")], "rejected": [bot("Bye")]}
    json_path = tmp_path / "pairs.json"
    json_path.write_text(json.dumps([GOOD, {**GOOD, "rejected": "4"}]), encoding="utf-8")
    pairs, refused = read_preference_file(json_path)
    assert [p.origin for p in pairs] == [f"{json_path}:1"]
    assert refused == [f"{json_path} row 2: 'chosen' is identical to 'rejected', seen \"4\""]
    parquet_path = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist([conv, conv]), parquet_path)
    pairs, refused = read_preference_file(parquet_path)
    assert refused == [] and [p.origin for p in pairs] == [f"{parquet_path}:1", f"{parquet_path}:2"]
    assert pairs[0].prompt == (user("Hi"),) and (pairs[0].chosen, pairs[0].rejected) == ("Hello", "Bye")


@pytest.mark.parametrize(("bad", "expected"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected an object, got list"),
    ({"prompt": "Q?", "chosen": "x"}, "missing field(s) 'rejected'"),
    ({"prompt": "Q?"}, "missing field(s) 'chosen', 'rejected'"),
    ({"prompt": "Q?", "chosen": 3, "rejected": "y"}, "must all be strings (TRL standard) or all lists"),
    ({"prompt": [user("Q?")], "chosen": [{"role": "robot", "content": "x"}], "rejected": [bot("y")]},
     "chosen[0] must be {'role': one of"),
    ({"prompt": "   ", "chosen": "x", "rejected": "y"}, "empty prompt"),
    ({"prompt": "Q?", "chosen": " \n", "rejected": "y"}, "empty 'chosen' answer"),
    ({"prompt": "Q?", "chosen": "same", "rejected": "same "}, "'chosen' is identical to 'rejected'"),
    ({"prompt": [user("Q?")], "chosen": [user("x")], "rejected": [bot("y")]}, "must be an assistant message"),
    ({"chosen": "plain text", "rejected": "other"}, "no 'prompt' field and no '\\n\\nAssistant:' turn"),
    ({"prompt": None, "chosen": "x", "rejected": "y"}, "missing field(s) 'prompt'"),
    ({"prompt": "Q?", "chosen": "x", "rejected": "\t\u3000"}, "empty 'rejected' answer"),
    ({"prompt": [user(" \n")], "chosen": [bot("x")], "rejected": [bot("y")]}, "prompt[0] has empty content"),
    ({"prompt": "Q?", "chosen": "x\u0000", "rejected": "y"}, "text with a NUL character or a lone surrogate"),
    ({"prompt": "Q\ud800?", "chosen": "x", "rejected": "y"}, "text with a NUL character or a lone surrogate"),
    ("[" * 50_000 + "]" * 50_000, "not usable JSON (maximum recursion depth"),
    ('{"prompt": "Q?", "chosen": ' + "7" * 5000 + ', "rejected": "y"}', "not usable JSON (Exceeds the limit"),
])
def test_bad_rows_refused_with_line_number(tmp_path: Path, bad: Any, expected: str) -> None:
    path = write_jsonl(tmp_path / "mixed.jsonl", [GOOD, bad, "", GOOD])  # line 3 is blank
    pairs, refused = read_preference_file(path)
    assert [p.origin for p in pairs] == [f"{path}:1", f"{path}:4"]
    assert len(refused) == 1 and refused[0].startswith(f"{path} line 2: ") and expected in refused[0]
    assert ", seen " in refused[0] and len(refused[0].split(", seen ", 1)[1]) <= 80


def test_refusals_are_storable_text_and_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n" +
                     json.dumps({**GOOD, "chosen": "\ud800"}).encode() + b"\n")
    pairs, refused = read_preference_file(path)
    assert [p.origin for p in pairs] == [f"{path}:1"]  # the BOM does not spoil the first line
    assert refused == [f"{path} line 2: text with a NUL character or a lone surrogate (not storable as UTF-8), "
                       'seen "\\ud800"']
    (tmp_path / "refused.txt").write_text("\n".join(refused), encoding="utf-8")  # as the preferences stage keeps them
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 50_000 + "]" * 50_000)
    with pytest.raises(InputError, match=r"deep\.json: not usable JSON \(maximum recursion depth"):
        read_preference_file(deep)


def test_seen_value_truncated(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "long.jsonl", [GOOD, {"prompt": "Q", "chosen": "z" * 500, "rejected": "z" * 500}])
    _, refused = read_preference_file(path)
    assert refused[0].endswith("...") and len(refused[0].split(", seen ", 1)[1]) == 80


def test_zero_pairs_is_an_input_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", ["{oops", {"prompt": "Q"}])
    with pytest.raises(InputError, match="no usable preference pairs") as err:
        read_preference_file(path)
    assert str(path) in str(err.value) and "line 1: not valid JSON" in str(err.value) and "line 2" in str(err.value)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(InputError, match="empty.jsonl: no usable preference pairs"):
        read_preference_file(empty)


def test_unknown_suffix_missing_file_and_bad_json_file(tmp_path: Path) -> None:
    csv = tmp_path / "pairs.csv"
    csv.write_text("prompt,chosen,rejected\n")
    with pytest.raises(InputError, match=r"pairs\.csv: preference files must be \.jsonl, \.json, \.parquet"):
        read_preference_file(csv)
    with pytest.raises(InputError, match=r"absent\.jsonl: preference file does not exist"):
        read_preference_file(tmp_path / "absent.jsonl")
    broken = tmp_path / "broken.json"
    broken.write_text('[\n{"prompt": "Q",\n')
    with pytest.raises(InputError, match=r"broken\.json line 3: not valid JSON"):
        read_preference_file(broken)
    not_list = tmp_path / "object.json"
    not_list.write_text(json.dumps(GOOD))
    with pytest.raises(InputError, match=r"object\.json: a \.json preference file must hold a list of rows"):
        read_preference_file(not_list)


@pytest.mark.skipif(not OASST.is_file(), reason=f"{OASST} not present (a shared data file, not in the repository)")
def test_real_oasst_export() -> None:
    pairs, refused = read_preference_file(OASST)
    assert len(pairs) == 732 and refused == []
    assert all(p.prompt[-1]["role"] == "user" and p.chosen.strip() and p.chosen != p.rejected for p in pairs)
    assert any(len(p.prompt) > 1 for p in pairs)
