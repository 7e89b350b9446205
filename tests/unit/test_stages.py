"""The stage graph: assembled from the stages' own modules, the --until/--from planner, cache keys (with the
code each stage runs, computed from its imports), and the pipeline flow agreeing with the graph (every stage
called in graph order, with exactly the inputs the graph declares, for every --until)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

import flows.pipeline as pipeline_module
import lifecycle.hashing
from lifecycle.config import load_config
from lifecycle.errors import ConfigError, LifecycleError
from lifecycle.hashing import code_closure
from lifecycle.registry import ModelRef
from lifecycle.runtime import RunSettings
from lifecycle.stages import stage_key
from lifecycle.store import StageOutput
from tasks.common import check_stages
from tasks.context import RunContext
from tasks.graph import GRAPH

STAGES = GRAPH.names
plan_stages, planned_keys, ancestors = GRAPH.plan, GRAPH.planned_keys, GRAPH.ancestors

ROOT = Path(__file__).resolve().parents[2]


def test_until_runs_the_stage_and_its_ancestors_only() -> None:
    assert plan_stages(until="ingest").run == ("ingest",)
    assert plan_stages(until="validate").run == ("ingest", "validate")
    assert plan_stages(until="rag_index").run == ("ingest", "validate", "rag_index")  # no training for a RAG rebuild
    assert plan_stages(until="sft").run == ("ingest", "validate", "tokenize", "pretrain", "sft")
    assert plan_stages(until="preferences").run[-2:] == ("sft", "preferences")
    assert plan_stages(until="validate").reuse == () and plan_stages(until="validate").force == ()


def test_several_untils_run_each_stage_and_its_ancestors_in_graph_order() -> None:
    assert plan_stages(until=["rag_index", "tokenize"]).run == ("ingest", "validate", "tokenize", "rag_index")
    assert plan_stages(until=["sft", "validate"]).run == plan_stages(until="sft").run
    with pytest.raises(ConfigError, match="--until nope: unknown stage"):
        plan_stages(until=["tokenize", "nope"])
    with pytest.raises(ConfigError, match="--from pretrain comes after --until tokenize rag_index"):
        plan_stages(until=["tokenize", "rag_index"], from_stage="pretrain")


def test_full_plan_is_every_stage_in_graph_order() -> None:
    assert plan_stages().run == tuple(s.name for s in GRAPH) == STAGES


def test_from_reuses_ancestors_and_forces_dependants() -> None:
    plan = plan_stages(until="tokenize", from_stage="validate")
    assert plan.reuse == ("ingest",)
    assert plan.force == ("validate", "tokenize")  # tokenize runs only behind the validation gate
    plan = plan_stages(from_stage="pretrain")
    assert plan.reuse == ("ingest", "validate", "tokenize")
    assert plan.force == ("pretrain", "sft", "preferences", "rlhf", "evaluate", "promote")  # not rag_index: cached


def test_bad_stage_names_are_errors() -> None:
    with pytest.raises(ConfigError, match="unknown stage"):
        plan_stages(until="nope")
    with pytest.raises(ConfigError, match="comes after"):
        plan_stages(until="ingest", from_stage="tokenize")


# --- the pipeline flow calls the stages the graph declares, in its order, with its inputs ---------------

@dataclass
class Recorder:
    calls: list[tuple[str, dict[str, Any]]]

    def stage(self, name: str):
        def call(ctx: Any = None, inputs: dict[str, StageOutput] | None = None, **extra: Any) -> StageOutput:
            self.calls.append((name, (inputs or {}) | extra))
            model = ModelRef(f"model-of-{name}", "1") if GRAPH[name].model else None
            return StageOutput(stage=name, key=f"key-{name}", path=f"/{name}", run_id="r", model=model)
        return call


@dataclass
class FakeContext:
    plan: Any

    def wants(self, stage: str) -> bool:
        return stage in self.plan.run


def run_pipeline(monkeypatch: pytest.MonkeyPatch, conf_dir: Path, **params: Any) -> Recorder:
    recorder = Recorder([])
    for stage in STAGES:
        monkeypatch.setitem(pipeline_module.FLOWS, stage, recorder.stage(stage))

    @contextmanager
    def fake_run(settings: Any, cfg: Any, plan: Any):
        yield FakeContext(plan)

    monkeypatch.setattr(pipeline_module, "pipeline_run", fake_run)
    monkeypatch.setattr(pipeline_module, "check_stages", lambda cfg, stages, ctx: None)
    monkeypatch.setattr(pipeline_module, "mark_challenger", lambda ctx, model, out: recorder.calls.append(
        ("mark_challenger", {"model": model})))
    pipeline_module.pipeline.fn(conf_dir=str(conf_dir), **params)
    return recorder


@pytest.mark.parametrize("until", [None, *STAGES])
def test_pipeline_flow_agrees_with_the_graph(monkeypatch: pytest.MonkeyPatch, conf_dir: Path,
                                             until: str | None) -> None:
    calls = run_pipeline(monkeypatch, conf_dir, until=until).calls
    stages = [name for name, _ in calls if name in STAGES]
    wanted = set(STAGES) if until is None else ancestors(until) | {until}
    assert stages == [s.name for s in GRAPH if s.name in wanted]  # exactly these, in graph order
    for name, inputs in calls:
        if name not in STAGES:
            continue
        spec = GRAPH[name]
        assert set(inputs) - {"model"} == set(spec.inputs), name  # reads what the graph declares, no more
        assert all(inputs[i].stage == i for i in spec.inputs)
        if spec.uses:  # a model from a stage of this run, by reference, never looked up
            produced = [s for s in spec.uses if s in stages]
            assert inputs["model"] == (ModelRef(f"model-of-{produced[-1]}", "1") if produced else None)
    candidate = [c for name, c in calls if name == "mark_challenger"]
    final = next((s for s in ("rlhf", "sft") if s in stages), None)  # the run's last chat model stage
    assert candidate == ([{"model": ModelRef(f"model-of-{final}", "1")}] if final else [])


def test_a_stage_given_inputs_the_graph_does_not_declare_is_refused(conf_dir: Path) -> None:
    cfg = load_config(conf_dir)
    with pytest.raises(LifecycleError, match="declares"):
        stage_key(GRAPH["tokenize"], cfg, {"ingest": "a", "pretrain": "b"})


# --- cache keys ------------------------------------------------------------------------------------------

def test_keys_change_with_their_section_and_inputs_only(conf_dir: Path) -> None:
    base = planned_keys(load_config(conf_dir), "sft")
    vocab = planned_keys(load_config(conf_dir, overrides=["tokenize.vocab_size=999"]), "sft")
    assert vocab["ingest"] == base["ingest"]
    assert vocab["tokenize"] != base["tokenize"] and vocab["pretrain"] != base["pretrain"]  # and what reads it
    assert vocab["sft"] != base["sft"]
    serve = planned_keys(load_config(conf_dir, overrides=["serve.answer.system_prompt=Be brief."]), "rag_index")
    assert serve == planned_keys(load_config(conf_dir), "rag_index")  # query-time settings are in no key
    seed = planned_keys(load_config(conf_dir, overrides=["run.seed=1"]), "sft")
    assert seed["tokenize"] == base["tokenize"] and seed["pretrain"] != base["pretrain"]


def test_a_changed_source_file_forces_a_cache_miss(tmp_path: Path, conf_dir: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("alpha beta gamma\n" * 50)

    def ingest_key() -> str:
        return planned_keys(load_config(conf_dir, sources=[str(corpus)]), "ingest")["ingest"]

    first = ingest_key()
    assert ingest_key() == first
    corpus.write_text("alpha beta delta\n" * 50)  # same size, new content
    assert ingest_key() != first


def test_a_reader_keys_on_the_content_hash_of_an_output_that_has_one(conf_dir: Path) -> None:
    """A preference set's content (the votes) is not fixed by its key: what reads it keys on its hash."""
    cfg = load_config(conf_dir)
    plain = planned_keys(cfg, "sft")
    hashed = planned_keys(cfg, "sft", lambda stage, key: "content-1" if stage == "pretrain" else key)
    assert hashed["pretrain"] == plain["pretrain"] and hashed["sft"] != plain["sft"]
    other = planned_keys(cfg, "sft", lambda stage, key: "content-2" if stage == "pretrain" else key)
    assert other["sft"] != hashed["sft"]
    out = StageOutput(stage="preferences", key="k", path="/p", run_id="r")
    assert out.identity == "k" and StageOutput(stage="preferences", key="k", path="/p", run_id="r",
                                               digest="d").identity == "d"


def test_preference_files_key_the_preferences_stage_by_content(tmp_path: Path, conf_dir: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "p", "chosen": "yes", "rejected": "no"}\n')
    sets = ["preferences.mode=import", f"preferences.import.files=[{pairs}]"]

    def keys() -> dict[str, str]:
        return planned_keys(load_config(conf_dir, overrides=sets), "preferences", dynamic=lambda *_: "no-feedback")

    first = keys()
    pairs.write_text('{"prompt": "p", "chosen": "yes!", "rejected": "no"}\n')
    second = keys()
    assert second["preferences"] != first["preferences"] and second["sft"] == first["sft"]
    pairs.unlink()
    with pytest.raises(LifecycleError, match="pairs.jsonl"):
        keys()


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the project's code that the keys are computed from (lifecycle.hashing.ROOT), free to edit."""
    for package in ("lifecycle", "tasks"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(lifecycle.hashing, "ROOT", tmp_path)
    return tmp_path


def all_keys(conf_dir: Path) -> dict[str, str]:
    return planned_keys(load_config(conf_dir), "promote", dynamic=lambda *_: "fixed")


def test_an_edit_to_code_a_stage_runs_changes_its_key(checkout: Path, conf_dir: Path) -> None:
    """rag_index's retrieval metrics come from lifecycle/rag/search.py, which tasks/rag_index.py imports: an edit
    there changes rag_index's key (and its readers'), and only the keys of the stages that run it."""
    before = all_keys(conf_dir)
    search = checkout / "lifecycle" / "rag" / "search.py"
    search.write_text(search.read_text() + "\n# an edit\n")
    after = all_keys(conf_dir)
    changed = {s for s in before if before[s] != after[s]}
    assert "rag_index" in changed and "evaluate" in changed and "promote" in changed
    assert {"ingest", "validate", "tokenize", "pretrain"}.isdisjoint(changed)
    assert changed == {s for s in STAGES if "lifecycle.rag.search" in code_closure(f"tasks.{s}")
                       or any(i in changed for i in GRAPH[s].inputs)}


def test_an_edit_to_a_function_level_import_changes_the_key(checkout: Path, conf_dir: Path) -> None:
    """tasks/tokenize.py imports lifecycle.tokenizer inside its work (a run of cache hits never loads it): still
    part of its code."""
    before = all_keys(conf_dir)["tokenize"]
    tokenizer = checkout / "lifecycle" / "tokenizer.py"
    tokenizer.write_text(tokenizer.read_text().replace("def ", "def  ", 1))
    assert all_keys(conf_dir)["tokenize"] != before


def test_an_edit_to_code_no_stage_runs_changes_no_key(checkout: Path, conf_dir: Path) -> None:
    unused = "lifecycle.serve.app"
    assert all(unused not in code_closure(f"tasks.{s}") for s in STAGES)
    before = all_keys(conf_dir)
    app = checkout / "lifecycle" / "serve" / "app.py"
    app.write_text(app.read_text() + "\n# an edit\n")
    assert all_keys(conf_dir) == before


def test_the_code_of_a_stage_is_its_module_and_what_it_imports() -> None:
    closure = code_closure("tasks.rag_index")
    assert "tasks.rag_index" in closure and "lifecycle.rag.search" in closure and "lifecycle.rag" in closure
    assert not any(m.startswith("tasks.") and m != "tasks.rag_index" for m in closure)  # not the stage runtime
    assert "lifecycle.align.policy" not in closure and "lifecycle.align.policy" in code_closure("tasks.rlhf")


# --- what a run of cache hits does not do -----------------------------------------------------------------

def test_a_bad_trainer_key_stops_a_run_that_trains_and_not_one_that_reuses_the_model(tmp_path: Path,
                                                                                     conf_dir: Path) -> None:
    """Trainer sections are checked (TRL builds its config) for the stages about to train, before any work;
    a stage that will be a cache hit trains nothing, so a cached run neither checks nor imports TRL for it."""
    cfg = load_config(conf_dir, overrides=["sft.trainer.learning_rat=0.1"])
    ctx = RunContext(cfg=cfg, settings=RunSettings(), state_dir=str(tmp_path), experiment_id="0", parent_run_id="p",
                     flow_run_id="f", git_commit="c", config_hash="h", plan=plan_stages(until="sft"))
    with pytest.raises(ConfigError, match="learning_rat"):
        check_stages(cfg, ctx.plan.run, ctx)
    key = planned_keys(cfg, "sft")["sft"]
    with ctx.store.building("sft", key) as tmp:
        ctx.store.commit(tmp, StageOutput(stage="sft", key=key, path=str(ctx.store.path("sft", key)), run_id="r"))
    check_stages(cfg, ctx.plan.run, ctx)  # cached for this config: nothing to train
    forced = replace(ctx, plan=plan_stages(until="sft", from_stage="sft"))
    with pytest.raises(ConfigError, match="learning_rat"):  # --from sft trains it again
        check_stages(cfg, forced.plan.run, forced)


def test_the_pipeline_loads_no_training_library_until_a_stage_computes() -> None:
    """Stages import torch, transformers, TRL, datasets, GX, LanceDB, sentence-transformers, lm-eval inside the work
    they do: importing the pipeline (all a run of cache hits needs) loads none of them."""
    heavy = ["torch", "transformers", "trl", "datasets", "tokenizers", "great_expectations", "sentence_transformers",
             "sklearn", "matplotlib", "lancedb", "lm_eval"]
    code = f"import sys, lifecycle.cli, flows.pipeline; print([m for m in {heavy!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
