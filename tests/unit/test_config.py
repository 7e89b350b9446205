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


@pytest.mark.parametrize(("content", "pattern"), [
    (b"vocab_size: 2001-13-01\n", r"tokenize.yaml: not usable YAML \(month must be in 1..12\)"),
    (b"vocab_size: &a [*a]\n", r"tokenize.yaml: a value contains itself"),
    (b"vocab_size: \xff\xfe\n", r"tokenize.yaml: not UTF-8 text \(invalid start byte at byte 12\)"),
])
def test_unusable_yaml_file_is_named(conf_copy: Path, content: bytes, pattern: str) -> None:
    (conf_copy / "tokenize.yaml").write_bytes(content)
    with pytest.raises(ConfigError, match=pattern):
        load_config(conf_copy)


def test_override_that_is_not_usable_yaml(conf_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"tokenize.vocab_size = \"2001-13-01\": Input should be a valid integer"):
        load_config(conf_dir, overrides=["tokenize.vocab_size=2001-13-01"])  # kept as text, then refused by type
    with pytest.raises(ConfigError, match=r"--set 'tokenize=&a \{x: \*a\}': a value contains itself"):
        load_config(conf_dir, overrides=["tokenize=&a {x: *a}"])


def test_unknown_profile_lists_known_ones(conf_dir: Path) -> None:
    with pytest.raises(ConfigError, match="quickstart"):
        load_config(conf_dir, "nope")


def test_files_source_needs_paths(conf_dir: Path) -> None:
    with pytest.raises(ConfigError, match="needs at least one entry in 'paths'"):
        load_config(conf_dir, overrides=["ingest.sources=[{name: a, kind: files}]"])


def test_source_flags_replace_configured_sources(conf_dir: Path) -> None:
    cfg = load_config(conf_dir, "quickstart", sources=["docs/*.md", "python-docs"])
    assert [(s.kind, s.paths) for s in cfg.ingest.sources] == [("files", ["docs/*.md"]), ("python-docs", [])]


def test_query_time_settings_live_in_serve_not_in_the_index_section(conf_dir: Path) -> None:
    cfg = load_config(conf_dir, overrides=["serve.answer.system_prompt=Be brief.", "serve.search.top_k=9"])
    assert cfg.serve.answer.system_prompt == "Be brief." and cfg.serve.search.top_k == 9
    assert "answer" not in cfg.rag_index.model_dump() and "search" not in cfg.rag_index.model_dump()
    assert cfg.origin("serve.search.top_k") == "--set serve.search.top_k=9"
    assert cfg.origin("serve.answer.max_new_tokens").endswith("serve.yaml")


def test_trainer_sections_pass_through_and_are_checked_by_trl(conf_dir: Path, conf_copy: Path) -> None:
    import trl

    from lifecycle.config.passthrough import trainer_config

    cfg = load_config(conf_dir, overrides=["sft.trainer.learning_rate=0.01", "sft.trainer.max_steps=7"])
    args = trainer_config(trl.SFTConfig, cfg, "sft", "cpu", {"output_dir": "ckpt", "report_to": "none"})
    assert isinstance(args, trl.SFTConfig) and args.learning_rate == 0.01 and args.max_steps == 7
    assert args.use_cpu and not args.bf16  # what a CPU needs, unless the section says otherwise

    with pytest.raises(ConfigError) as err:  # an unknown key, named with its origin
        trainer_config(trl.SFTConfig, load_config(conf_dir, overrides=["sft.trainer.learning_rat=1"]), "sft", "cpu",
                       {"output_dir": "ckpt"})
    assert "sft.trainer.learning_rat = 1: not a SFTConfig option (did you mean learning_rate?)" in str(err.value)
    assert "--set sft.trainer.learning_rat=1" in str(err.value)

    (conf_copy / "profiles" / "bad.yaml").write_text("sft:\n  trainer:\n    lr_scheduler_type: cosinus\n")
    with pytest.raises(ConfigError) as err:  # TRL's own complaint, with the key and the file
        trainer_config(trl.SFTConfig, load_config(conf_copy, "bad"), "sft", "cpu", {"output_dir": "ckpt"})
    assert "sft.trainer.lr_scheduler_type = \"cosinus\"" in str(err.value) and "bad.yaml" in str(err.value)
    assert "not a valid SchedulerType" in str(err.value)

    with pytest.raises(ConfigError, match=r"sft.trainer.learning_rate = \"fast\": expected a number"):
        trainer_config(trl.SFTConfig, load_config(conf_dir, overrides=["sft.trainer.learning_rate=fast"]), "sft",
                       "cpu", {"output_dir": "ckpt"})
    with pytest.raises(ConfigError, match=r"sft.trainer.output_dir = \"x\": set by the sft stage"):
        trainer_config(trl.SFTConfig, load_config(conf_dir, overrides=["sft.trainer.output_dir=x"]), "sft", "cpu",
                       {"output_dir": "ckpt"})


def test_numbers_in_scientific_notation_are_numbers(conf_dir: Path) -> None:
    cfg = load_config(conf_dir, overrides=["sft.trainer.learning_rate=3e-3", "pretrain.optim.eps=1e-8"])
    assert cfg.sft.trainer["learning_rate"] == 0.003 and cfg.pretrain.optim.eps == 1e-8


def test_a_profile_extends_another(conf_dir: Path, conf_copy: Path) -> None:
    cfg = load_config(conf_dir, "oasst", overrides=["preferences.import.files=[pairs.jsonl]"])
    assert cfg.pretrain.max_steps == 400 and cfg.origin("pretrain.max_steps").endswith("quickstart.yaml")
    assert cfg.preferences.mode == "import" and cfg.origin("preferences.mode").endswith("oasst.yaml")
    (conf_copy / "profiles" / "a.yaml").write_text("extends: b\n")
    (conf_copy / "profiles" / "b.yaml").write_text("extends: a\n")
    with pytest.raises(ConfigError, match="circle"):
        load_config(conf_copy, "a")
    with pytest.raises(ConfigError, match="needs preferences.import.files"):
        load_config(conf_dir, "oasst")


def test_the_rlhf_trainers_are_checked_by_trl_with_their_path(conf_dir: Path) -> None:
    from lifecycle.align.policy import policy_args

    cfg = load_config(conf_dir, overrides=["rlhf.device=cpu", "rlhf.policy.grpo.num_generationz=4"])
    with pytest.raises(ConfigError, match=r"rlhf\.policy\.grpo\.num_generationz.*did you mean num_generations"):
        policy_args(cfg, Path("/tmp/unused"), "grpo")
