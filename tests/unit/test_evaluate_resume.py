"""evaluate resumes by model: each model's measurements are saved atomically as it finishes; a run killed
after some models reads them back, measures only the rest, and ends with the evaluation a clean run gives
(timings aside), intervals included. A saved part computed from other inputs is not trusted. With the
lm-evaluation-harness on, each model's scores are part of its saved part: read back, not run again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lifecycle.align.sft_data import Pair
from lifecycle.config import load_config
from lifecycle.evaluate import metrics as evaluate_metrics
from lifecycle.evaluate.metrics import evaluate_models
from lifecycle.rag.index import build_index
from lifecycle.rag.search import Retriever, open_index
from tests.unit.test_rag_answer import save_tiny_policy
from tests.harness_fixtures import TASK, write_task
from tests.unit.test_rag_index import TOPICS, make_docs, rag_config, search_config

CONF = Path(__file__).resolve().parents[2] / "conf"
TIMINGS = ("latency_p50_ms", "tokens_per_s")


class Killed(Exception):
    """Where the process died."""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"candidate": save_tiny_policy(root / "candidate"), "sft": save_tiny_policy(root / "sft", 256),
            "base": save_tiny_policy(root / "base", 128)}


@pytest.fixture(scope="module")
def retriever(tmp_path_factory: pytest.TempPathFactory) -> Retriever:
    info = build_index(make_docs(), rag_config(), str(tmp_path_factory.mktemp("rag") / "db"), "docs")
    return open_index(info.to_dict(), search_config())


def questions() -> list[Pair]:
    return [Pair(messages=({"role": "user", "content": f"What does {name} do?"},
                           {"role": "assistant", "content": text}), source="python-docs", held_out=True,
                 question=f"What does {name} do?") for name, text in list(TOPICS.items())[:4]]


def run(models: dict[str, Path], retriever: Retriever, checkpoints: Path | None, *more: str) -> dict:
    cfg = load_config(CONF, overrides=["evaluate.max_new_tokens=6", "evaluate.latency_requests=1",
                                       "evaluate.samples=2", *more])
    torch.manual_seed(0)
    return evaluate_models(cfg, models, questions(), [text for text in TOPICS.values()], retriever, None,
                           torch.device("cpu"), checkpoints)


def without_timings(result: dict) -> dict:
    return {**result, "metrics": {role: {k: v for k, v in found.items() if k not in TIMINGS}
                                  for role, found in result["metrics"].items()}}


def test_a_killed_evaluation_resumes_by_model_and_ends_as_a_clean_one(
        tmp_path: Path, models: dict[str, Path], retriever: Retriever, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    clean = run(models, retriever, None)
    assert clean["resumed_models"] == 0 and list(clean["metrics"]) == ["candidate", "sft", "base"]
    assert set(clean["comparisons"]) == {"candidate_vs_sft", "candidate_vs_base", "candidate_rag_vs_no_rag"}
    for role, found in clean["metrics"].items():  # the intervals' estimates are the metrics
        assert clean["intervals"][role]["val_bpb"]["estimate"] == pytest.approx(found["val_bpb"])
        assert clean["intervals"][role]["rouge_l_rag"]["n"] == len(questions())

    checkpoints = tmp_path / "ckpt"
    real_text_loss, measured = evaluate_metrics.text_loss, []

    def dies_on_the_third_model(model, tokenizer, texts, batch_size):  # the process is killed measuring "base"
        measured.append(model.config.max_position_embeddings)
        if len(measured) == 3:
            raise Killed
        return real_text_loss(model, tokenizer, texts, batch_size)

    monkeypatch.setattr(evaluate_metrics, "text_loss", dies_on_the_third_model)
    with pytest.raises(Killed):
        run(models, retriever, checkpoints)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["model-candidate.json", "model-sft.json"]

    measured.clear()
    monkeypatch.setattr(evaluate_metrics, "text_loss", real_text_loss)
    with caplog.at_level("INFO", logger="lifecycle.evaluate"):
        resumed = run(models, retriever, checkpoints)
    assert resumed["resumed_models"] == 2
    assert "resuming: 2 of 3 model parts already done" in caplog.text
    assert without_timings(resumed) == without_timings(clean) | {"resumed_models": 2}


def test_a_part_saved_from_other_inputs_is_measured_again(tmp_path: Path, models: dict[str, Path],
                                                           retriever: Retriever) -> None:
    checkpoints = tmp_path / "ckpt"
    first = run(models, retriever, checkpoints)
    part = checkpoints / "model-sft.json"
    saved = json.loads(part.read_text())
    saved["expect"]["model"] = "/elsewhere/another-model"
    saved["value"]["metrics"]["val_bpb"] = -1.0
    part.write_text(json.dumps(saved))
    again = run(models, retriever, checkpoints)
    assert again["resumed_models"] == 2  # candidate and base; sft measured again
    assert again["metrics"]["sft"]["val_bpb"] == first["metrics"]["sft"]["val_bpb"] > 0


def test_harness_scores_resume_with_their_model(tmp_path: Path, models: dict[str, Path], retriever: Retriever,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    harness = [f"evaluate.harness.tasks=[{TASK}]", f"evaluate.harness.include_path={write_task(tmp_path / 'tasks')}"]
    checkpoints = tmp_path / "ckpt"
    run(models, retriever, checkpoints)  # measured without the harness: these parts lack its scores
    ran = []
    real_run_harness = evaluate_metrics.run_harness
    monkeypatch.setattr(evaluate_metrics, "run_harness", lambda *args: ran.append(1) or real_run_harness(*args))
    first = run(models, retriever, checkpoints, *harness)
    assert first["resumed_models"] == 0 and len(ran) == 3  # every model measured again, with the harness
    assert set(first["harness"]["scores"]) == {"candidate", "sft", "base"}
    assert all(set(scores) == {f"{TASK}/acc", f"{TASK}/acc_norm"} for scores in first["harness"]["scores"].values())

    resumed = run(models, retriever, checkpoints, *harness)
    assert resumed["resumed_models"] == 3 and len(ran) == 3  # read back with the rest: lm-eval not run again
    assert resumed["harness"] == first["harness"]
    other = run(models, retriever, checkpoints, *harness, "evaluate.harness.limit=5")
    assert other["resumed_models"] == 0 and {s["n"] for s in other["harness"]["scores"]["sft"].values()} == {5}
