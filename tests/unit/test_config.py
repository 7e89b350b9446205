"""Config loading: sections, profile overlays, --set overrides, and errors that name key, value and file."""

from pathlib import Path

import pytest

from lifecycle.config import config_hash, load_config
from lifecycle.errors import ConfigError


def test_base_and_quickstart_profile_load(conf_dir: Path) -> None:
    base = load_config(conf_dir)
    quick = load_config(conf_dir, "quickstart")
    assert quick.tokenize.vocab_size < base.tokenize.vocab_size
    assert quick.validate_.min_documents == base.validate_.min_documents  # overlay keeps untouched keys
    assert config_hash(base) != config_hash(quick)


def test_set_override_is_typed(conf_dir: Path) -> None:
    cfg = load_config(conf_dir, overrides=["tokenize.vocab_size=999", "ingest.near_dup.enabled=false"])
    assert cfg.tokenize.vocab_size == 999
    assert cfg.ingest.near_dup.enabled is False


def test_unknown_key_names_path_value_and_origin(conf_dir: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(conf_dir, overrides=["tokenize.vocab_sise=512"])
    message = str(err.value)
    assert "tokenize.vocab_sise = 512" in message
    assert "unknown key" in message
    assert "--set tokenize.vocab_sise=512" in message


@pytest.fixture
def conf_copy(tmp_path: Path, conf_dir: Path) -> Path:
    """A writable copy of the repository's conf/ (sections only; profiles/ empty)."""
    conf = tmp_path / "conf"
    (conf / "profiles").mkdir(parents=True)
    for f in conf_dir.glob("*.yaml"):
        (conf / f.name).write_text(f.read_text())
    return conf


def test_bad_value_names_expectation_and_file(conf_copy: Path) -> None:
    conf = conf_copy
    (conf / "profiles" / "broken.yaml").write_text("ingest:\n  near_dup:\n    threshold: 1.5\n")
    with pytest.raises(ConfigError) as err:
        load_config(conf, "broken")
    message = str(err.value)
    assert "ingest.near_dup.threshold = 1.5" in message
    assert "less than or equal to 1" in message
    assert "broken.yaml" in message


def test_yaml_syntax_error_names_line(conf_copy: Path) -> None:
    conf = conf_copy
    (conf / "tokenize.yaml").write_text("vocab_size: 512\ncontext_length: [1, 2\n")
    with pytest.raises(ConfigError, match=r"tokenize.yaml:\d+: not valid YAML"):
        load_config(conf)


def test_unknown_profile_lists_known_ones(conf_dir: Path) -> None:
    with pytest.raises(ConfigError, match="quickstart"):
        load_config(conf_dir, "nope")


def test_files_source_needs_paths(conf_dir: Path) -> None:
    with pytest.raises(ConfigError, match="needs at least one entry in 'paths'"):
        load_config(conf_dir, overrides=["ingest.sources=[{name: a, kind: files}]"])


def test_source_flags_replace_configured_sources(conf_dir: Path) -> None:
    cfg = load_config(conf_dir, "quickstart", sources=["docs/*.md", "python-docs"])
    assert [(s.kind, s.paths) for s in cfg.ingest.sources] == [("files", ["docs/*.md"]), ("python-docs", [])]
