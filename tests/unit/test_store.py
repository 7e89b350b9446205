"""The artifact store never exposes a half-written output, and a model stage's reference survives the
round trip through the manifest."""

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
