"""RAG answers with a tiny in-process causal LM: the retrieved chunks go into the chat prompt, the sources
come back, generation is deterministic, long contexts are cut to fit, and the policy resolves from --model,
@champion or the newest registered version (with a clear error when there is none)."""

from __future__ import annotations

from pathlib import Path

import datasets
import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from transformers import LlamaConfig, LlamaForCausalLM

from lifecycle.config import TokenizeConfig
from lifecycle.errors import LifecycleError
from lifecycle.rag.answer import (
    answer_question,
    fit_prompt,
    load_policy,
    resolve_policy,
)
from lifecycle.rag.index import build_index
from lifecycle.rag.search import Retriever, open_index
from lifecycle.tokenizer import train_tokenizer
from lifecycle.tracking import setup_mlflow
from tests.unit.test_rag_index import TOPICS, make_docs, rag_config

SYSTEM = "Answer using the context."


def save_tiny_policy(out: Path, context_length: int = 512) -> Path:
    texts = [f"{name}: {text}" for name, text in TOPICS.items()] * 20
    tok = train_tokenizer(TokenizeConfig(vocab_size=400, min_frequency=1, train_max_chars=10**6,
                                         context_length=context_length, num_proc=1, batch_size=100),
                          datasets.Dataset.from_dict({"text": texts}))
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
    cfg = rag_config()
    info = build_index(make_docs(), cfg, str(tmp_path_factory.mktemp("rag") / "db"), "docs")
    return open_index(info.to_dict(), cfg)


def answer_cfg(top_k: int = 3, max_new_tokens: int = 12):
    return rag_config(f"rag_index.answer.top_k={top_k}", f"rag_index.answer.max_new_tokens={max_new_tokens}",
                      f"rag_index.answer.system_prompt={SYSTEM}").answer


def test_answer_is_conditioned_on_retrieved_chunks_and_cites_them(policy_dir: Path, retriever: Retriever) -> None:
    model, tok = load_policy(policy_dir)
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


def test_a_small_context_keeps_the_best_chunks_that_fit(policy_dir: Path, retriever: Retriever) -> None:
    _, tok = load_policy(policy_dir)
    hits = retriever.search("a file", k=4)
    full, used_all, _ = fit_prompt(tok, "a file?", hits, SYSTEM, budget=10_000)
    assert used_all == hits
    budget = len(full) - 5
    ids, used, truncated = fit_prompt(tok, "a file?", hits, SYSTEM, budget)
    assert len(ids) <= budget and used == hits[:len(used)] and 0 < len(used) < 4 and not truncated
    bare, _, _ = fit_prompt(tok, "a file?", [], SYSTEM, budget=10_000)
    ids, used, truncated = fit_prompt(tok, "a file?", hits[:1], SYSTEM, budget=len(bare) + 30)
    assert truncated and len(ids) <= len(bare) + 30
    assert used[0].chunk_id == hits[0].chunk_id and 0 < len(used[0].text) < len(hits[0].text)
    assert hits[0].text.startswith(used[0].text[:10])
    with pytest.raises(LifecycleError, match="max_new_tokens"):
        fit_prompt(tok, "a file?", hits, SYSTEM, budget=5)


def test_policy_resolution_order_and_errors(policy_dir: Path, tmp_path: Path) -> None:
    assert resolve_policy(str(policy_dir), "m", tmp_path)[0] == policy_dir
    with pytest.raises(LifecycleError, match="--model"):
        resolve_policy(str(tmp_path / "missing"), "m", tmp_path)
    with pytest.raises(LifecycleError, match="pretrain.*--model"):
        resolve_policy(None, "tiny-policy", tmp_path / "empty-state")

    state = tmp_path / "state"
    experiment_id = setup_mlflow(state, "rag-test")  # artifacts under the state dir, not ./mlruns
    model, tok = load_policy(policy_dir)
    for _ in range(2):
        with mlflow.start_run(experiment_id=experiment_id):
            mlflow.transformers.log_model({"model": model, "tokenizer": tok}, name="policy", task="text-generation",
                                          registered_model_name="tiny-policy", pip_requirements=["transformers"])
    path, label = resolve_policy(None, "tiny-policy", state)
    assert "version 2" in label and "latest" in label
    MlflowClient().set_registered_model_alias("tiny-policy", "champion", "1")
    path, label = resolve_policy(None, "tiny-policy", state)
    assert label == "tiny-policy@champion (version 1)" and path.name == "tiny-policy-v1"
    loaded, loaded_tok = load_policy(path)
    assert loaded.config.vocab_size == model.config.vocab_size and loaded_tok.chat_template
