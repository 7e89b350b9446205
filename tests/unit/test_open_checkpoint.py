"""`pretrain.init` settings are checked before any work, with the key, the value and where it was set named;
a checkpoint's tokenizer gets a chat template SFT can train with (its own, TRL's training version of it, or
ChatML with the tokens it lacks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from transformers import AutoTokenizer

from lifecycle.config import ConfigError, load_config
from lifecycle.hub import fetch_checkpoint, init_checkpoint
from lifecycle.tokenizer import CHAT_TEMPLATE, GENERATION, IM_END, IM_START, model_tokenizer, training_template
from tasks.common import check_init
from tests.checkpoint_fixtures import save_tiny_checkpoint
from tests.conftest import CONF


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("open") / "checkpoint")


def config(*overrides: str):  # noqa: ANN201 - a Config
    return load_config(CONF, overrides=list(overrides))


def test_max_steps_0_needs_a_checkpoint() -> None:
    with pytest.raises(ConfigError, match=r"pretrain.*max_steps=0 registers pretrain.init as it is"):
        config("pretrain.max_steps=0")


def test_a_null_context_length_needs_the_models_tokenizer() -> None:
    with pytest.raises(ConfigError, match=r"tokenize.*context_length: null means the checkpoint's own"):
        config("tokenize.context_length=null")


def test_the_tokenizer_and_the_init_go_together(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tokenize.tokenizer.*pretrain.init is scratch") as err:
        check_init(config("tokenize.tokenizer=from_model"), tmp_path)
    assert "--set tokenize.tokenizer=from_model" in str(err.value)  # where it was set
    with pytest.raises(ConfigError, match=r"tokenize.tokenizer.*reads only its own tokenizer's ids"):
        check_init(config(f"pretrain.init={checkpoint}"), tmp_path)
    check_init(config(f"pretrain.init={checkpoint}", "tokenize.tokenizer=from_model"), tmp_path)


def test_a_checkpoint_that_cannot_be_used_is_refused_naming_the_key(checkpoint: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=rf"pretrain.init.*{missing}.*no such folder"):
        init_checkpoint(config(f"pretrain.init={missing}"))
    with pytest.raises(ConfigError, match=r"pretrain.init.*no hub model 'nobody/nothing'"):
        init_checkpoint(config("pretrain.init=nobody/nothing"))

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((checkpoint / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ConfigError, match=r"pretrain.init.*no safetensors weights"):
        init_checkpoint(config(f"pretrain.init={pickled}"))

    remote = tmp_path / "remote"
    remote.mkdir()
    for path in checkpoint.iterdir():
        (remote / path.name).write_bytes(path.read_bytes())
    settings = json.loads((remote / "config.json").read_text()) | {"auto_map": {"AutoModelForCausalLM": "x.Model"}}
    (remote / "config.json").write_text(json.dumps(settings))
    with pytest.raises(ConfigError, match=r"pretrain.trust_remote_code.*runs code of its own"):
        init_checkpoint(config(f"pretrain.init={remote}"))
    assert init_checkpoint(config(f"pretrain.init={remote}", "pretrain.trust_remote_code=true")).folder == remote


def test_a_folders_identity_follows_its_content(checkpoint: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in checkpoint.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    assert fetch_checkpoint(str(copy)).identity == fetch_checkpoint(str(checkpoint)).identity
    (copy / "generation_config.json").write_text("{}")
    assert fetch_checkpoint(str(copy)).identity != fetch_checkpoint(str(checkpoint)).identity


def test_a_checkpoint_tokenizer_gets_a_template_sft_can_train_with(checkpoint: Path) -> None:
    tok, size = model_tokenizer(checkpoint, 1000)
    assert size == 64  # at most the model's window
    assert tok.chat_template == CHAT_TEMPLATE and {IM_START, IM_END} <= set(tok.get_vocab())
    assert tok.pad_token == tok.eos_token

    marked = AutoTokenizer.from_pretrained(str(checkpoint))
    marked.chat_template = "{% for m in messages %}{% generation %}{{ m['content'] }}{% endgeneration %}{% endfor %}"
    assert training_template(marked) == marked.chat_template  # its own, marked for training: kept

    from trl.chat_template_utils import llama3_chat_template, llama3_training_chat_template

    llama = AutoTokenizer.from_pretrained(str(checkpoint))
    llama.chat_template = llama3_chat_template
    assert training_template(llama) == llama3_training_chat_template  # TRL's training version of its own
    assert GENERATION in llama3_training_chat_template
    assert len(load_file(str(checkpoint / "model.safetensors"))["transformer.wte.weight"]) == 320
