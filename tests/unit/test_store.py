"""The artifact store never exposes a half-written output, a model stage's reference survives the round trip
through the manifest, and an output truncated or changed after its commit is found and recomputed."""

from pathlib import Path

import pytest

from lifecycle.registry import ModelRef
from lifecycle.store import ArtifactStore, StageOutput


def test_commit_publishes_and_failure_leaves_nothing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    key = "0123456789abcdef"
    with pytest.raises(RuntimeError):
        with store.building("s", key) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("killed")
    assert store.lookup("s", key) is None
    assert list((tmp_path / "s").iterdir()) == []
    with store.building("s", key) as tmp:
        (tmp / "done.txt").write_text("y")
        store.commit(tmp, StageOutput("s", key, str(store.path("s", key)), "run1", metrics={"m": 1.0},
                                      model=ModelRef("lifecycle-gpt", "3")))
    found = store.lookup("s", key)
    assert found is not None and found.cached and found.metrics == {"m": 1.0}
    assert found.model == ModelRef("lifecycle-gpt", "3") and found.model.uri == "models:/lifecycle-gpt/3"
    assert (found.file("done.txt")).read_text() == "y"


def _committed(store: ArtifactStore, key: str, content: bytes = b"0123456789" * 100) -> Path:
    with store.building("s", key) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "tokens.bin").write_bytes(content)
        (tmp / "stats.json").write_text('{"docs": 3}')
        store.commit(tmp, StageOutput("s", key, str(store.path("s", key)), "run1"))
    return store.path("s", key)


@pytest.mark.parametrize(("damage", "named"), [
    (lambda f: f.joinpath("sub", "tokens.bin").write_bytes(b"0123456789" * 50),
     "sub/tokens.bin: 500 bytes, expected 1000"),
    (lambda f: f.joinpath("sub", "tokens.bin").write_bytes(b"X123456789" + b"0123456789" * 99),  # same size
     "sub/tokens.bin: content changed"),
    (lambda f: f.joinpath("stats.json").unlink(), "stats.json: missing"),
    (lambda f: f.joinpath("_lifecycle.json").write_text('{"output": '), "_lifecycle.json: unreadable"),
], ids=["truncated", "tampered", "deleted", "manifest-cut"])
def test_a_truncated_or_tampered_output_is_named_moved_aside_and_recomputed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, damage, named: str) -> None:
    store = ArtifactStore(tmp_path)
    key = "0123456789abcdef"
    folder = _committed(store, key)
    assert store.lookup("s", key) is not None  # intact: trusted
    damage(folder)
    with caplog.at_level("WARNING", logger="lifecycle.store"):
        assert store.lookup("s", key) is None
    assert named in caplog.text and "computing it again" in caplog.text
    [aside] = [p for p in (tmp_path / "s").iterdir() if p.name.startswith(f".damaged-{key}-")]
    assert not folder.exists() and aside.is_dir()  # kept for inspection, out of the cache's way
    assert _committed(store, key) == folder and store.lookup("s", key) is not None


def test_an_output_from_before_manifests_is_still_trusted(tmp_path: Path) -> None:
    import json

    store = ArtifactStore(tmp_path)
    folder = _committed(store, "0123456789abcdef")
    record = json.loads((folder / "_lifecycle.json").read_text())
    del record["files"]
    (folder / "_lifecycle.json").write_text(json.dumps(record))
    assert store.lookup("s", "0123456789abcdef") is not None
