"""Shared by the serving tests (unit, browser): a state directory with a tiny chat model registered twice
(two different sets of weights) in its own MLflow, @champion on version 1 and @challenger on version 2, both
paired with a tiny RAG index; the serving config; and the app served by uvicorn in a thread."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
from transformers import LlamaForCausalLM

from lifecycle.config import load_config
from lifecycle.config.serve import ServeConfig
from lifecycle.preferences.db import default_url
from lifecycle.preferences.store import PreferenceStore
from lifecycle.rag.index import build_index
from lifecycle.rag.pairing import pair_index
from lifecycle.registry import CHALLENGER, CHAMPION, ModelRef, register_model, set_alias
from lifecycle.serve.models import ServedModels
from lifecycle.tracking import setup_mlflow
from tests.unit.test_rag_answer import save_tiny_policy
from tests.unit.test_rag_index import make_docs, rag_config

CONF = Path(__file__).resolve().parents[1] / "conf"
NAME = "tiny-chat"
SERVE_OVERRIDES = ["serve.answer.top_k=3", "serve.answer.max_new_tokens=12", "serve.answer.system_prompt=null",
                   "serve.server.reload_interval_s=0.2", "serve.server.max_body_bytes=4096",
                   "serve.server.max_prompt_chars=300", "serve.server.recent_answers=50"]


@dataclass(frozen=True)
class ServeState:
    state_dir: Path
    experiment_id: str
    champion: ModelRef
    challenger: ModelRef

    def models(self, cfg: ServeConfig) -> ServedModels:
        models = ServedModels(self.state_dir, NAME, cfg)
        models.load()
        return models

    def store(self) -> PreferenceStore:
        return PreferenceStore.open(default_url(self.state_dir))


def serve_config(*overrides: str) -> ServeConfig:
    return load_config(CONF, overrides=[*SERVE_OVERRIDES, *overrides]).serve


def _other_weights(src: Path, out: Path) -> Path:
    """The same tiny architecture and tokenizer with other random weights: it answers differently."""
    shutil.copytree(src, out)
    model = LlamaForCausalLM.from_pretrained(src)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    model.save_pretrained(str(out))
    return out


def make_serve_state(root: Path) -> ServeState:
    """Two registered versions of NAME (@champion 1, @challenger 2), each paired with one tiny index whose
    index.json sits where the rag_index stage would have put it."""
    state = root / "state"
    experiment_id = setup_mlflow(state, "serve-test")
    info = build_index(make_docs(), rag_config(), str(state / "rag" / "lancedb"), "docs").to_dict()
    key = "tinyindex0000001"
    index_json = state / "artifacts" / "rag_index" / key / "index.json"
    index_json.parent.mkdir(parents=True)
    index_json.write_text(json.dumps(info | {"key": key}))
    first = save_tiny_policy(root / "policy-1")
    refs = []
    for folder in (first, _other_weights(first, root / "policy-2")):
        with mlflow.start_run(experiment_id=experiment_id):
            ref = register_model(folder, NAME, tags={"lifecycle.test": "serve"})
        pair_index(ref, info, key)
        refs.append(ref)
    set_alias(refs[0], CHAMPION)
    set_alias(refs[1], CHALLENGER)
    return ServeState(state, experiment_id, refs[0], refs[1])
