"""Registered models are what was registered: a version's files in the registry that were changed since are
refused by name; a local copy that was truncated is fetched again; and serving keeps answering with the old
champion while the new one loads, and after a new one fails to load (docs/RELIABILITY.md)."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lifecycle.errors import LifecycleError
from lifecycle.registry import CHALLENGER, CHAMPION, FILES_SHA256, local_copy, set_alias, version_tags
from lifecycle.serve import models as served_models
from lifecycle.serve.models import ServedModels
from lifecycle.tracking import use_tracking
from tests.serve_fixtures import NAME, ServeState, make_serve_state, serve_config


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> ServeState:
    return make_serve_state(tmp_path_factory.mktemp("integrity"))


@pytest.fixture
def state(registered: ServeState) -> ServeState:
    """The module's registry as make_serve_state left it, for each test: @champion on version 1, @challenger on
    version 2, and no local copies yet (the tests below move the aliases and fetch copies)."""
    use_tracking(registered.state_dir)
    set_alias(registered.champion, CHAMPION)
    set_alias(registered.challenger, CHALLENGER)
    shutil.rmtree(registered.state_dir / "models", ignore_errors=True)
    return registered


def registry_weights(state: ServeState, version: str) -> Path:
    """The weights file of `version` in the registry's own artifact store (not a local copy)."""
    model_id = MlflowClient().get_model_version(NAME, version).source.removeprefix("models:/")
    return state.state_dir / "mlflow" / "artifacts" / "models" / model_id / "artifacts" / "model" / "model.safetensors"


@pytest.fixture
def tampered(state: ServeState) -> Iterator[Path]:
    """Version 2's weights in the registry with one byte flipped (same size), restored afterwards."""
    weights = registry_weights(state, state.challenger.version)
    blob = weights.read_bytes()
    weights.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    yield weights
    weights.write_bytes(blob)


def test_a_version_changed_in_the_registry_is_refused_by_name(state: ServeState, tampered: Path,
                                                               tmp_path: Path) -> None:
    assert len(version_tags(state.challenger)[FILES_SHA256]) == 64  # taken at registration
    with pytest.raises(LifecycleError, match=rf"{NAME}/2: its files in the registry .* differ from the ones "
                                             r"registered .*register the model again"):
        local_copy(state.challenger, tmp_path / "fresh-cache")
    assert not (tmp_path / "fresh-cache" / NAME / "2").exists()  # nothing half-trusted left behind
    assert local_copy(state.champion, tmp_path / "fresh-cache").is_dir()  # the other version is intact


def test_a_damaged_local_copy_is_fetched_again(state: ServeState, caplog: pytest.LogCaptureFixture) -> None:
    cache = state.state_dir / "models"
    weights = local_copy(state.champion, cache) / "model" / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 3])  # a copy cut short
    with caplog.at_level("WARNING", logger="lifecycle.registry"):
        again = local_copy(state.champion, cache)
    assert f"model/model.safetensors: {size // 3} bytes, expected {size}" in caplog.text
    assert (again / "model" / "model.safetensors").stat().st_size == size


def test_serving_keeps_the_old_champion_while_the_new_one_loads(state: ServeState,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    models = ServedModels(state.state_dir, NAME, serve_config("serve.server.compare_with_challenger=false"))
    models.load()
    loading, release = threading.Event(), threading.Event()
    real_load = served_models.load_served

    def slow_load(*args: object, **kwargs: object) -> served_models.Served:
        loading.set()
        assert release.wait(60)
        return real_load(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(served_models, "load_served", slow_load)  # holds the new version half-loaded
    set_alias(state.challenger, CHAMPION)
    try:
        reload = threading.Thread(target=models.check)
        reload.start()
        assert loading.wait(60)
        for _ in range(3):  # requests meanwhile: the old champion answers
            assert models.lookup(NAME).ref == state.champion
        release.set()
        reload.join(120)
        assert models.lookup(NAME).ref == state.challenger and models.last_error is None
    finally:
        set_alias(state.champion, CHAMPION)


def test_serving_keeps_the_old_champion_when_the_new_one_fails_to_load(state: ServeState, tampered: Path) -> None:
    models = ServedModels(state.state_dir, NAME, serve_config("serve.server.compare_with_challenger=false"))
    models.load()
    set_alias(state.challenger, CHAMPION)  # promoted, but its files in the registry were changed
    assert models.check() is False
    assert models.lookup(NAME).ref == state.champion  # still answering with version 1
    assert models.last_error and "differ from the ones registered" in models.last_error
