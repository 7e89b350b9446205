"""The whole chain on a tiny corpus and model, for real: ingest -> validate -> tokenize -> pretrain -> sft ->
preferences -> rlhf -> rag_index (ingest .. pretrain as the session's tiny chain left them, the rest computed
here). The base model's reference flows into sft, the SFT model's into rlhf, the policy's into the index
pairing and the `@candidate` alias; the SFT model beats the base model on held-out pairs; stored outputs are
never written to by later stages; a stage runs alone as its own flow on the others' cached outputs; `ask`
answers with the candidate and its paired index, with the model's own context length."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows.pipeline import pipeline
from flows.stages import FLOWS
from lifecycle.cli import main
from lifecycle.errors import LifecycleError
from lifecycle.registry import ModelRef, get_alias, lineage
from lifecycle.runtime import RunSettings
from lifecycle.tracking import tracking_uri, use_tracking
from tests.integration.conftest import OVERRIDES, copy_state

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def tree_hash(path: Path) -> str:
    """Every file's relative path and bytes under `path`."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def test_chain_passes_models_by_reference_and_leaves_outputs_untouched(
        pretrained: Path, tmp_path: Path, conf_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    overrides = OVERRIDES
    with pytest.raises(LifecycleError, match="sft runs on the cached output of"):  # alone, with nothing cached
        FLOWS["sft"](settings=RunSettings(overrides=overrides, state_dir=str(tmp_path / "empty"),
                                          conf_dir=str(conf_dir)))

    state = copy_state(pretrained, tmp_path / "state")  # ingest .. pretrain cached (tests/integration/conftest.py)
    settings = RunSettings(overrides=overrides, state_dir=str(state), conf_dir=str(conf_dir))
    first = pipeline(overrides=overrides, state_dir=str(state), conf_dir=str(conf_dir), until="pretrain")
    before = {stage: tree_hash(Path(out["path"])) for stage, out in first.items()}
    out = pipeline(overrides=overrides, state_dir=str(state), conf_dir=str(conf_dir))
    assert list(out) == ["ingest", "validate", "tokenize", "pretrain", "sft", "preferences", "rlhf", "rag_index",
                         "evaluate", "promote"]
    assert out["promote"]["metrics"]["passed"] == 0.0  # tiny models miss the default minimums: no champion
    assert all(out[s]["cached"] for s in before) and not out["sft"]["cached"]
    assert {stage: tree_hash(Path(out[stage]["path"])) for stage in before} == before  # immutable once stored
    assert not list(Path(out["ingest"]["path"]).rglob("cache-*.arrow"))

    use_tracking(state)
    client = MlflowClient(tracking_uri(state))
    base, chat = ModelRef(**out["pretrain"]["model"]), ModelRef(**out["sft"]["model"])
    policy = ModelRef(**out["rlhf"]["model"])  # the run's final chat model
    assert (base.name, chat.name) == ("lifecycle-gpt-base", "lifecycle-gpt")
    tags = client.get_model_version(chat.name, chat.version).tags
    assert tags["lifecycle.base_model"] == str(base)  # trained from the version pretrain handed on
    assert tags["lifecycle.sft_data_hash"] and tags["lifecycle.stage_key"] == out["sft"]["key"]
    policy_tags = client.get_model_version(policy.name, policy.version).tags
    assert policy_tags["lifecycle.base_model"] == str(chat)  # the policy was aligned from the SFT version
    assert policy_tags["lifecycle.rag_index_key"] == out["rag_index"]["key"]  # paired with the index, by reference
    assert get_alias(chat.name, "candidate") == policy and get_alias(base.name, "candidate") is None
    history = lineage(chat)
    assert history["built_from"][0]["model"] == str(base)
    assert history["built_from"][0]["tags"]["lifecycle.tokenizer_key"] == out["tokenize"]["key"]

    metrics = client.get_run(out["sft"]["run_id"]).data.metrics
    assert metrics["sft/eval_loss"] < metrics["sft/base_eval_loss"]  # held-out assistant loss, same pairs
    assert 0 <= metrics["sft/base_rouge_l"] <= 1 and 0 <= metrics["sft/rouge_l"] <= 1 and metrics["sft/rouge_pairs"] > 0
    assert [m.step for m in client.get_metric_history(out["sft"]["run_id"], "sft/train/loss")] == [10, 20, 30, 40]
    assert "sft/samples.json" in {a.path for a in client.list_artifacts(out["sft"]["run_id"], "sft")}

    # one stage as a flow of its own, on the cached outputs of the others (a nightly RAG rebuild)
    alone = FLOWS["rag_index"](settings=settings, model=f"{policy.name}@candidate")
    assert alone.cached and alone.key == out["rag_index"]["key"]
    alone_sft = FLOWS["sft"](settings=settings)
    assert alone_sft.cached and alone_sft.model == chat

    # `ask` as the README writes it: the candidate model, its paired index, its own context length
    assert main(["ask", "What does json.dumps do?", "--state-dir", str(state), "--conf", str(conf_dir), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["model"] == f"{policy.name}@candidate (version {policy.version})" and answer["sources"]
    assert main(["lineage", "--state-dir", str(state), "--conf", str(conf_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == str(policy)


def test_no_stage_looks_up_the_newest_model_version() -> None:
    """Models move by reference: the only registry search left is the one that lists a model's versions
    carrying a tag (to keep the RAG index versions they point at)."""
    offenders = []
    for folder in ("lifecycle", "tasks", "flows"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            if "search_model_versions" in text and path != ROOT / "lifecycle" / "registry.py":
                offenders.append(str(path))
            if "latest_model_version" in text or "max(versions" in text:
                offenders.append(str(path))
    assert offenders == []
