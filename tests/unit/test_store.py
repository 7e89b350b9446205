"""The artifact store never exposes a half-written output."""

from pathlib import Path

import pytest

from lifecycle.store import ArtifactStore, StageOutput, stage_key


def test_commit_publishes_and_failure_leaves_nothing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    key = stage_key("s", {"a": 1}, {}, "code")
    with pytest.raises(RuntimeError):
        with store.building("s", key) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("killed")
    assert store.lookup("s", key) is None
    assert list((tmp_path / "s").iterdir()) == []
    with store.building("s", key) as tmp:
        (tmp / "done.txt").write_text("y")
        store.commit(tmp, StageOutput("s", key, str(store.path("s", key)), "run1", metrics={"m": 1.0}))
    found = store.lookup("s", key)
    assert found is not None and found.cached and found.metrics == {"m": 1.0}
    assert (found.file("done.txt")).read_text() == "y"


def test_key_changes_with_config_inputs_and_code() -> None:
    base = stage_key("s", {"a": 1}, {"up": "k1"}, "c1")
    assert base == stage_key("s", {"a": 1}, {"up": "k1"}, "c1")
    assert len({base, stage_key("s", {"a": 2}, {"up": "k1"}, "c1"), stage_key("s", {"a": 1}, {"up": "k2"}, "c1"),
                stage_key("s", {"a": 1}, {"up": "k1"}, "c2")}) == 4
