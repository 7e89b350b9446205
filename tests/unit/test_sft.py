"""SFT on a tiny in-process model: only the assistant's tokens are trained on (checked on the collated
labels), held-out assistant loss falls, a crashed run resumes from its last sealed checkpoint (a half-written
one is skipped), the instruction data is derived and split as documented, bad files are refused with file and
line, and the model's chat template carries the system prompt it was trained with."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import pytest
import torch

from lifecycle.align.sft import build_trainer, prepare, train_sft
from lifecycle.align.sft_data import build_pairs, file_pairs, first_paragraph, fit_pairs, python_docs_pairs
from lifecycle.config import SourceConfig, TokenizeConfig, load_config
from lifecycle.data.sources import read_python_docs
from lifecycle.errors import InputError
from lifecycle.manifest import SEAL
from lifecycle.model import build_model, load_causal_lm
from lifecycle.tokenizer import chat_template, train_tokenizer

CONF = Path(__file__).resolve().parents[2] / "conf"
TINY = ["sft.device=cpu", "sft.trainer.max_steps=30", "sft.trainer.per_device_train_batch_size=8",
        "sft.trainer.learning_rate=3e-3", "sft.trainer.warmup_steps=2", "sft.trainer.logging_steps=5",
        "sft.trainer.save_steps=1000", "sft.eval.max_pairs=4", "sft.eval.max_new_tokens=8",
        "pretrain.model.n_layer=2", "pretrain.model.n_head=4", "pretrain.model.n_kv_head=2",
        "pretrain.model.d_model=64", "pretrain.model.d_ff=172"]


@pytest.fixture(scope="module")
def documents() -> list[dict]:
    """Real python-docs documents (the ingest reader) of a few modules, split by hash as ingest does."""
    source = SourceConfig(name="stdlib", kind="python-docs", include=["json", "textwrap", "string", "csv", "shlex"])
    docs = []
    for i, record in enumerate(read_python_docs(source)):
        docs.append({"id": str(i), "text": record["text"], "title": record["title"], "object": record["object"],
                     "source": "stdlib", "path": record["path"], "split": "validation" if i % 6 == 0 else "train"})
    return docs


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory, documents: list[dict]) -> Path:
    """A tiny untrained base model with a BPE tokenizer trained on the documents, context 160."""
    out = tmp_path_factory.mktemp("base")
    tok = train_tokenizer(TokenizeConfig(vocab_size=400, min_frequency=2, train_max_chars=10**6, context_length=160,
                                         batch_size=100),
                          datasets.Dataset.from_dict({"text": [d["text"] for d in documents]}))
    torch.manual_seed(0)
    model = build_model(load_config(CONF, overrides=TINY).pretrain.model, len(tok), 160, tok.eos_token_id,
                        tok.pad_token_id)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def test_python_docs_pairs_ask_about_objects_with_their_documents_and_hold_out_validation(
        documents: list[dict]) -> None:
    data = load_config(CONF).sft.data
    pairs = python_docs_pairs(documents, data)
    dumps = next(p for p in pairs if p.question == "What does json.dumps do?")
    assert dumps.answer.startswith("Serialize ``obj`` to a JSON formatted ``str``")
    text = next(d["text"] for d in documents if d["object"] == "json.dumps")
    assert dumps.answer == first_paragraph(text) and dumps.answer in text  # quoted as written, line breaks kept
    assert any("\n" in p.answer for p in pairs)
    user = dumps.messages[0]["content"]
    assert user.startswith(f"Context:\n[1] json.dumps\n{text}")
    assert user.endswith("Question: What does json.dumps do?")
    held = {p.question for p in pairs if p.held_out}
    validation = {f"What does {d['object']} do?" for d in documents if d["split"] == "validation"}
    assert held and held <= validation  # held-out pairs come from validation documents only
    train, held_out = build_pairs(data, documents)
    assert not {p.id for p in train} & {p.id for p in held_out}
    assert all(16 <= len(p.answer) <= data.max_answer_chars for p in pairs)


def test_files_in_trl_formats_are_read_and_bad_rows_named(tmp_path: Path) -> None:
    good = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "What is 2+2?", "completion": "4."},
            {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi?"},
                          {"role": "assistant", "content": "Hello."}]},
            {"prompt": [{"role": "user", "content": "Capital of France?"}],
             "completion": [{"role": "assistant", "content": "Paris."}]}]
    good.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pairs = file_pairs(good, val_fraction=0.0)
    assert [p.answer for p in pairs] == ["4.", "Hello.", "Paris."] and not any(p.held_out for p in pairs)
    assert pairs[1].messages[0] == {"role": "system", "content": "Be terse."}
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["Q1?", "Q2?"], "completion": ["A1.", "A2."]}), tmp_path / "p.parquet")
    assert [p.answer for p in file_pairs(tmp_path / "p.parquet", 0.0)] == ["A1.", "A2."]
    for line, message in ((json.dumps({"prompt": "x"}), r"bad.jsonl:2: expected 'messages', or 'prompt' and"),
                          ('{"messages": [{"role": "user", "content": "q"}]}', r"bad.jsonl:2: .*end with an assistant"),
                          ('{"prompt": "q", "completion": ""}', r"bad.jsonl:2: completion\[0\] has empty content"),
                          ('{"messages": [{"role": "robot", "content": "q"}]', r"bad.jsonl:2: not valid JSON")):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps(rows[0]) + "\n" + line + "\n")
        with pytest.raises(InputError, match=message):
            file_pairs(bad, 0.0)


def test_long_contexts_are_cut_to_fit_and_hopeless_pairs_dropped(base_dir: Path, documents: list[dict]) -> None:
    _, tok = load_causal_lm(base_dir)
    pairs = python_docs_pairs(documents, load_config(CONF).sft.data)
    fitted, dropped = fit_pairs(pairs, tok, max_length=120)
    assert len(fitted) + dropped == len(pairs) and fitted
    for pair in fitted:
        text = tok.apply_chat_template(list(pair.messages), tokenize=False)
        assert len(tok(text, add_special_tokens=False)["input_ids"]) <= 120
        assert pair.answer in text  # the answer is never what gets cut


def test_only_assistant_tokens_are_trained_on(base_dir: Path, documents: list[dict], tmp_path: Path) -> None:
    cfg = load_config(CONF, overrides=TINY)
    model, tok, train, held_out = prepare(cfg, base_dir, documents)
    trainer = build_trainer(cfg, model, tok, train[:4], held_out, tmp_path / "ckpt")
    batch = next(iter(trainer.get_train_dataloader()))
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
        trained = ids[labels != -100]
        assert (labels[labels != -100] == trained).all()
        text = tok.decode(trained)
        assert trained[-1] == end and text.removesuffix("<|im_end|>") in {p.answer for p in train[:4]}
        assert "Question:" not in text and "Context:" not in text and "system" not in text


def test_sft_lowers_held_out_loss_and_resumes_after_a_crash(base_dir: Path, documents: list[dict], tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_config(CONF, overrides=TINY + ["sft.trainer.save_steps=10", "sft.trainer.logging_steps=1"])

    def crash_at_step_12(metrics: dict[str, float], step: int) -> None:
        if step == 12:
            raise RuntimeError("killed")

    ckpt = tmp_path / "ckpt"
    with pytest.raises(RuntimeError, match="killed"):
        train_sft(cfg, base_dir, documents, tmp_path / "out1", ckpt, crash_at_step_12)
    assert (ckpt / "checkpoint-10" / SEAL).is_file()  # sealed once the Trainer finished writing it
    half = ckpt / "checkpoint-12"  # what a kill -9 while the Trainer writes checkpoint-12 leaves
    shutil.copytree(ckpt / "checkpoint-10", half)
    (half / SEAL).unlink()
    weights = half / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    seen: list[int] = []
    with caplog.at_level("WARNING", logger="lifecycle.sft"):
        result = train_sft(cfg, base_dir, documents, tmp_path / "out", ckpt, lambda m, step: seen.append(step))
    assert f"checkpoint {half} cannot be resumed from: incomplete (no seal" in caplog.text
    metrics = result.metrics
    assert metrics["resumed"] == 1 and metrics["steps"] == 30 and min(s for s in seen if s > 0) == 11
    assert metrics["eval_loss"] < metrics["base_eval_loss"] - 0.5  # held-out assistant loss, same pairs
    assert metrics["held_out_pairs"] > 0 and metrics["rouge_pairs"] == 4 and 0 <= metrics["rouge_l"] <= 1
    model, tok = load_causal_lm(tmp_path / "out" / "model")
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.startswith(f"<|im_start|>system\n{cfg.sft.data.system_prompt}<|im_end|>")  # travels with the model
    assert len(result.samples) == 4 and {"question", "reference", "base", "sft"} <= set(result.samples[0])
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["data_hash"] == result.data_hash


@pytest.mark.parametrize("prompt", ['Say "hi" {% if x %}{{ y }}\\n', "Ünïcode – and 'quotes'\nnew line"])
def test_default_system_prompt_survives_the_template_literally(base_dir: Path, prompt: str) -> None:
    _, tok = load_causal_lm(base_dir)
    tok.chat_template = chat_template(prompt)
    text = tok.apply_chat_template([{"role": "user", "content": "q"}], tokenize=False)
    assert text == f"<|im_start|>system\n{prompt}<|im_end|>\n<|im_start|>user\nq<|im_end|>\n"
    own = tok.apply_chat_template([{"role": "system", "content": "mine"}, {"role": "user", "content": "q"}],
                                  tokenize=False)
    assert own.startswith("<|im_start|>system\nmine<|im_end|>") and prompt not in own
