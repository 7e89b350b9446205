"""The simulated judge and the exported preference set: the judge prefers the answer closer to the reference,
is deterministic across processes, flips about `noise` of its votes and never a tie; export aggregates votes
by majority and drops or doubles ties, low-agreement and under-voted items as configured; the snapshot's
hash is stable, changes with its content, and is written atomically."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lifecycle.errors import InputError
from lifecycle.preferences.export import VotedItem, export_rows, pairs_to_rows, read_snapshot, write_snapshot
from lifecycle.preferences.importers import PreferencePair
from lifecycle.preferences.simulated import judge, simulated_annotators

REFERENCE = "json.dumps serializes an object to a JSON formatted string"
CLOSE = "json.dumps serializes obj to a JSON formatted string"
FAR = "It opens a file for reading."
PROMPT = ({"role": "user", "content": "What does json.dumps do?"},)


def item(item_id: str, votes: str, a: str = "A answer", b: str = "B answer") -> VotedItem:
    return VotedItem(item_id=item_id, prompt=PROMPT, response_a=a, response_b=b, votes=tuple(votes), source="human")


def test_judge_prefers_the_answer_closer_to_the_reference() -> None:
    assert judge(REFERENCE, CLOSE, FAR, "simulated-1", noise=0.0, salt="s") == "a"
    assert judge(REFERENCE, FAR, CLOSE, "simulated-1", noise=0.0, salt="s") == "b"
    assert judge(REFERENCE, CLOSE, CLOSE.upper(), "simulated-1", noise=0.5, salt="s") == "tie"  # same tokens
    assert judge(REFERENCE, "", "", "simulated-1", noise=0.5, salt="s") == "tie"


def test_judge_is_deterministic_across_processes() -> None:
    names = simulated_annotators(40)
    here = [judge(REFERENCE, CLOSE, FAR, n, noise=0.5, salt="round-1") for n in names]
    code = ("from lifecycle.preferences.simulated import judge, simulated_annotators as s; "
            f"print(','.join(judge({REFERENCE!r}, {CLOSE!r}, {FAR!r}, n, 0.5, 'round-1') for n in s(40)))")
    env = {**os.environ, "PYTHONHASHSEED": "123"}  # a different str hash seed must not matter
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                           cwd=Path(__file__).resolve().parents[2]).stdout.strip()
    assert there.split(",") == here


def test_noise_flips_some_votes_but_never_with_zero_noise() -> None:
    names = simulated_annotators(300)
    assert names[0] == "simulated-1" and names[-1] == "simulated-300" and simulated_annotators(0) == []
    assert {judge(REFERENCE, CLOSE, FAR, n, noise=0.0, salt="s") for n in names} == {"a"}
    noisy = [judge(REFERENCE, CLOSE, FAR, n, noise=0.5, salt="s") for n in names]
    assert 90 < noisy.count("b") < 210 and noisy.count("a") + noisy.count("b") == 300
    other_salt = [judge(REFERENCE, CLOSE, FAR, n, noise=0.5, salt="t") for n in names]
    assert other_salt != noisy
    rare = [judge(REFERENCE, CLOSE, FAR, n, noise=0.1, salt="s") for n in simulated_annotators(1000)]
    assert 60 < rare.count("b") < 140  # about a tenth flipped


@pytest.mark.parametrize("noise", [-0.01, 0.51, float("nan")])
def test_noise_out_of_range(noise: float) -> None:
    with pytest.raises(ValueError, match="noise must be between 0 and 0.5"):
        judge(REFERENCE, CLOSE, FAR, "simulated-1", noise=noise, salt="s")


def test_export_majority_and_counts() -> None:
    items = [item("3", "bba"), item("1", "aab"), item("2", "ab"), item("4", "a"), item("5", "tie,tie,a".split(","))]
    rows, counts = export_rows(items, ties="drop", min_agreement=0.6, min_votes=2)
    assert [r["item_id"] for r in rows] == ["1", "3"]
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "A answer"}]
    assert rows[1]["chosen"][0]["content"] == "B answer" and rows[1]["rejected"][0]["content"] == "A answer"
    assert rows[0]["prompt"] == list(PROMPT) and rows[0]["votes"] == 3 and rows[0]["agreement"] == pytest.approx(2 / 3)
    assert rows[0]["source"] == "human"
    assert counts == {"items": 5, "rows": 2, "dropped_ties": 1, "dropped_low_agreement": 1, "dropped_few_votes": 1}


def test_export_ties_both_emits_opposite_rows() -> None:
    rows, counts = export_rows([item("t", ["tie", "tie", "a"]), item("w", "aa")], ties="both", min_agreement=0.5,
                               min_votes=1)
    tie_rows = [r for r in rows if r["item_id"] == "t"]
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in tie_rows] == [
        ("A answer", "B answer"), ("B answer", "A answer")]
    assert counts["rows"] == 3 and counts["dropped_ties"] == 0
    _, counts = export_rows([item("t", "ab")], ties="both", min_agreement=0.6, min_votes=1)
    assert counts["dropped_low_agreement"] == 1  # an a/b draw is a tie with share 0.5


def test_export_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="ties must be one of"):
        export_rows([item("1", "a")], ties="keep", min_agreement=0.5, min_votes=1)
    with pytest.raises(ValueError, match="votes must be"):
        export_rows([item("1", "ax")], ties="drop", min_agreement=0.5, min_votes=1)
    with pytest.raises(ValueError, match="duplicate item_id"):
        export_rows([item("1", "a"), item("1", "b")], ties="drop", min_agreement=0.5, min_votes=1)


def test_pairs_to_rows() -> None:
    pair = PreferencePair(prompt=PROMPT, chosen="good", rejected="bad", origin="f.jsonl:1")
    rows = pairs_to_rows([pair, PreferencePair(PROMPT, "good", "bad", "f.jsonl:9")])
    assert len(rows) == 1 and rows[0]["votes"] == 1 and rows[0]["agreement"] == 1.0 and rows[0]["source"] == "import"
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "good"}] and len(rows[0]["item_id"]) == 16
    changed = pairs_to_rows([PreferencePair(PROMPT, "good", "worse", "f.jsonl:1")], source="feedback")
    assert changed[0]["item_id"] != rows[0]["item_id"] and changed[0]["source"] == "feedback"


def test_rows_carry_the_reference_their_prompt_was_judged_by(tmp_path: Path) -> None:
    """The reference travels with the pair (the rlhf stage's gold judge reads it); items without one, and
    snapshots written before references were kept, have no `reference` key."""
    with_ref = VotedItem(item_id="r", prompt=PROMPT, response_a=CLOSE, response_b=FAR, votes=("a",),
                         source="simulated", reference=REFERENCE)
    rows, _ = export_rows([with_ref, item("n", "a")], ties="drop", min_agreement=0.5, min_votes=1)
    assert rows[1]["reference"] == REFERENCE and "reference" not in rows[0]
    write_snapshot(rows, tmp_path / "prefs.jsonl")
    assert read_snapshot(tmp_path / "prefs.jsonl") == rows
    old = {"prompt": list(PROMPT), "chosen": [{"role": "assistant", "content": "x"}], "rejected": [],
           "source": "simulated"}
    (tmp_path / "old.jsonl").write_text(json.dumps(old) + "\n")
    assert read_snapshot(tmp_path / "old.jsonl") == [old]


def test_snapshot_hash_is_stable_and_follows_content(tmp_path: Path) -> None:
    rows, _ = export_rows([item("1", "a"), item("2", "b", a="ünïcode")], ties="drop", min_agreement=0.5,
                          min_votes=1)
    first = write_snapshot(rows, tmp_path / "one" / "prefs.jsonl")
    reordered_keys = [dict(reversed(list(r.items()))) for r in rows]
    assert write_snapshot(reordered_keys, tmp_path / "two.jsonl") == first
    assert len(first) == 64 and read_snapshot(tmp_path / "one" / "prefs.jsonl") == rows
    assert "ünïcode" in (tmp_path / "two.jsonl").read_text(encoding="utf-8")
    changed = [rows[0], {**rows[1], "agreement": 0.9}]
    assert write_snapshot(changed, tmp_path / "two.jsonl") != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two.jsonl"]  # no temp file left behind


def test_failed_write_leaves_no_temp_file_and_keeps_old_snapshot(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "prefs.jsonl"
    row = {"prompt": list(PROMPT), "chosen": [], "rejected": []}
    write_snapshot([row], path)
    before = path.read_bytes()
    with pytest.raises(ValueError):  # not canonical JSON: refused before anything is written
        write_snapshot([{**row, "agreement": float("nan")}], path)

    def crash(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_snapshot([row, row], path)
    monkeypatch.undo()
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["prefs.jsonl"]
    assert json.loads(before) == row
    path.write_text(path.read_text() + "{broken\n")
    with pytest.raises(InputError, match=r"prefs\.jsonl line 2: not valid JSON"):
        read_snapshot(path)
    with pytest.raises(InputError, match="does not exist"):
        read_snapshot(tmp_path / "absent.jsonl")
