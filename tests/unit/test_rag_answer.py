"""RAG answers with a tiny in-process causal LM: the retrieved chunks go into the chat prompt, the sources
come back, generation is deterministic, long contexts are cut to fit the model's own context, the model's
default system prompt applies, and the model resolves from --model (folder or registry reference),
@champion, then @candidate — never "the newest version" (with a clear error when there is none)."""

from __future__ import annotations

from pathlib import Path

import datasets
import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from transformers import LlamaConfig, LlamaForCausalLM

from lifecycle.config import AnswerConfig, TokenizeConfig
from lifecycle.errors import LifecycleError
from lifecycle.model import load_causal_lm
from lifecycle.rag.answer import answer_question, fit_prompt, reading_order, resolve_policy
from lifecycle.rag.index import build_index
from lifecycle.rag.search import Hit, Retriever, keywords, open_index
from lifecycle.tokenizer import chat_template, train_tokenizer
from lifecycle.tracking import setup_mlflow
from tests.unit.test_rag_index import TOPICS, make_docs, rag_config, search_config

SYSTEM = "Answer using the context."


def save_tiny_policy(out: Path, context_length: int = 512, default_system: str | None = None) -> Path:
    texts = [f"{name}: {text}" for name, text in TOPICS.items()] * 20
    tok = train_tokenizer(TokenizeConfig(vocab_size=400, min_frequency=1, train_max_chars=10**6,
                                         context_length=context_length, batch_size=100),
                          datasets.Dataset.from_dict({"text": texts}))
    tok.chat_template = chat_template(default_system)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=context_length, bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_policy(tmp_path_factory.mktemp("policy"))


@pytest.fixture(scope="module")
def retriever(tmp_path_factory: pytest.TempPathFactory) -> Retriever:
    info = build_index(make_docs(), rag_config(), str(tmp_path_factory.mktemp("rag") / "db"), "docs")
    return open_index(info.to_dict(), search_config())


def answer_cfg(top_k: int = 3, max_new_tokens: int = 12, system_prompt: str | None = SYSTEM) -> AnswerConfig:
    return AnswerConfig(top_k=top_k, max_new_tokens=max_new_tokens, system_prompt=system_prompt)


def test_answer_is_conditioned_on_retrieved_chunks_and_cites_them(policy_dir: Path, retriever: Retriever) -> None:
    model, tok = load_causal_lm(policy_dir)
    question = "How do I deserialize a JSON document?"
    answer = answer_question(question, retriever, model, tok, answer_cfg(), model_label="tiny")
    expected = retriever.search(question, k=3)
    assert [s.chunk_id for s in answer.sources] == [h.chunk_id for h in expected]
    assert answer.sources[0].title == "json.loads" and answer.retrieved == 3 and not answer.truncated
    assert answer.prompt.startswith("<|im_start|>system\n" + SYSTEM)
    assert answer.prompt.rstrip().endswith("<|im_start|>assistant")
    assert question in answer.prompt and all(h.text in answer.prompt for h in expected)
    assert answer == answer_question(question, retriever, model, tok, answer_cfg(), model_label="tiny")  # greedy
    out = answer.to_dict()
    assert out["sources"][0]["chunk_id"] == expected[0].chunk_id and out["model"] == "tiny"
    assert "json.loads" in answer.format()


def test_the_models_default_system_prompt_applies_unless_one_is_configured(tmp_path: Path,
                                                                          retriever: Retriever) -> None:
    model, tok = load_causal_lm(save_tiny_policy(tmp_path / "p", default_system="Be brief, cite [n]."))
    default = answer_question("What does json.loads do?", retriever, model, tok, answer_cfg(system_prompt=None))
    assert default.prompt.startswith("<|im_start|>system\nBe brief, cite [n].<|im_end|>")
    assert default.prompt.count("<|im_start|>system") == 1
    configured = answer_question("What does json.loads do?", retriever, model, tok, answer_cfg())
    assert configured.prompt.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>")
    assert "Be brief" not in configured.prompt


def test_the_models_own_context_sizes_the_answer(tmp_path: Path, retriever: Retriever) -> None:
    """Settings meant for a larger model (64 new tokens) still answer with a small-context model: the
    context length comes from the model, and the answer gets what is left (the README's `ask`)."""
    model, tok = load_causal_lm(save_tiny_policy(tmp_path / "small", context_length=160))
    answer = answer_question("What does json.loads do?", retriever, model, tok, answer_cfg(top_k=4, max_new_tokens=64))
    assert len(tok(answer.prompt, add_special_tokens=False)["input_ids"]) <= 160 - 8
    assert answer.sources and answer.sources[0].title == "json.loads"
    with pytest.raises(LifecycleError, match="context tokens"):
        answer_question("What does json.loads do? " * 30, retriever, model, tok, answer_cfg())


def test_a_small_context_keeps_the_best_chunks_that_fit(policy_dir: Path, retriever: Retriever) -> None:
    _, tok = load_causal_lm(policy_dir)
    hits = retriever.search("a file", k=4)
    full, used_all, _ = fit_prompt(tok, "a file?", hits, SYSTEM, budget=10_000)
    assert used_all == reading_order(hits)
    budget = len(full) - 5
    ids, used, truncated = fit_prompt(tok, "a file?", hits, SYSTEM, budget)
    assert len(ids) <= budget and used == used_all[:len(used)] and 0 < len(used) < 4 and not truncated
    bare, _, _ = fit_prompt(tok, "a file?", [], SYSTEM, budget=10_000)
    ids, used, truncated = fit_prompt(tok, "a file?", hits[:1], SYSTEM, budget=len(bare) + 30)
    assert truncated and len(ids) <= len(bare) + 30
    assert used[0].chunk_id == hits[0].chunk_id and 0 < len(used[0].text) < len(hits[0].text)
    assert hits[0].text.startswith(used[0].text[:10])
    with pytest.raises(LifecycleError, match="question and system prompt take"):
        fit_prompt(tok, "a file?", hits, SYSTEM, budget=5)


def hit(doc: str, index: int, score: float) -> Hit:
    return Hit(f"{doc}-{index}", doc, index, f"{doc} part {index}", "stdlib", f"{doc}.py", doc, doc, score)


def test_a_documents_chunks_go_into_the_prompt_in_reading_order() -> None:
    # json.dumps's later chunks outrank its opening (they say "JSON" more often); the opening says what it does
    ranked = [hit("json.dumps", 2, 0.9), hit("json.dumps", 3, 0.8), hit("json.loads", 1, 0.7),
              hit("json.dumps", 0, 0.6), hit("json.loads", 0, 0.5)]
    assert [h.chunk_id for h in reading_order(ranked)] == [
        "json.dumps-0", "json.dumps-2", "json.dumps-3", "json.loads-0", "json.loads-1"]
    assert reading_order([]) == []


def test_full_text_queries_drop_question_words() -> None:
    assert keywords("What does os.path.join do?") == "os.path.join"  # not `sndhdr.what` by its title
    assert keywords("How is sndhdr.what used?") == "sndhdr.what used?"
    assert keywords("What is it?") == "it?" and keywords("what does") == "what does"  # never empty


def test_model_resolution_order_and_errors(policy_dir: Path, tmp_path: Path) -> None:
    assert resolve_policy(str(policy_dir), "m", tmp_path)[0] == policy_dir
    with pytest.raises(LifecycleError, match="--model"):
        resolve_policy(str(tmp_path / "missing"), "m", tmp_path)
    with pytest.raises(LifecycleError, match="through sft.*--model"):
        resolve_policy(None, "tiny-policy", tmp_path / "empty-state")

    state = tmp_path / "state"
    experiment_id = setup_mlflow(state, "rag-test")  # artifacts under the state dir, not ./mlruns
    model, tok = load_causal_lm(policy_dir)
    for _ in range(2):
        with mlflow.start_run(experiment_id=experiment_id):
            mlflow.transformers.log_model({"model": model, "tokenizer": tok}, name="policy", task="text-generation",
                                          registered_model_name="tiny-policy", pip_requirements=["transformers"])
    with pytest.raises(LifecycleError, match="@champion.*@candidate"):  # two versions, no alias: no guessing
        resolve_policy(None, "tiny-policy", state)
    client = MlflowClient()
    client.set_registered_model_alias("tiny-policy", "candidate", "2")
    path, label, ref = resolve_policy(None, "tiny-policy", state)
    assert label == "tiny-policy@candidate (version 2)" and str(ref) == "tiny-policy/2"
    client.set_registered_model_alias("tiny-policy", "champion", "1")
    path, label, ref = resolve_policy(None, "tiny-policy", state)
    assert label == "tiny-policy@champion (version 1)" and path == state / "models" / "tiny-policy" / "1"
    loaded, loaded_tok = load_causal_lm(path)
    assert loaded.config.vocab_size == model.config.vocab_size and loaded_tok.chat_template
    assert resolve_policy("tiny-policy/2", "other", state)[2] == ref.__class__("tiny-policy", "2")
    assert resolve_policy("models:/tiny-policy@candidate", "other", state)[2].version == "2"
    with pytest.raises(LifecycleError, match="no version 7"):
        resolve_policy("tiny-policy/7", "other", state)
    with pytest.raises(LifecycleError, match="no alias @nope"):
        resolve_policy("tiny-policy@nope", "other", state)
