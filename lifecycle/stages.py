"""The stage graph, declared once: every stage's name, the stages whose outputs it reads, the gates it
waits for, its config section, its code and what it produces. The `--until`/`--from` planner, the cache
keys, the CLI's stage choices and the check that flows/pipeline.py calls the stages in this order with
these inputs (tests/unit/test_stages.py) all come from here.

    plan_stages(until="tokenize").run        # ("ingest", "validate", "tokenize")
    stage_key(STAGES["tokenize"], cfg, {"ingest": "ab12..."})   # the cache key of tokenize's output

Adding a stage: one `Stage(...)` below, a schema + conf/<stage>.yaml, lifecycle code, tasks/<stage>.py,
flows/<stage>.py and one call in flows/pipeline.py (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lifecycle.errors import ConfigError, LifecycleError
from lifecycle.hashing import hash_file, hash_json, hash_modules

if TYPE_CHECKING:
    from lifecycle.config import Config


@dataclass(frozen=True)
class Stage:
    name: str
    inputs: tuple[str, ...]  # stages whose outputs it reads; their keys are part of its cache key
    produces: str  # what its output holds (docs/ARCHITECTURE.md)
    code: tuple[str, ...]  # library modules whose source is part of its cache key
    after: tuple[str, ...] = ()  # gates: stages that must have passed first (not part of its key)
    uses: tuple[str, ...] = ()  # model stages whose reference it takes when they run too (not part of its key)
    key_extras: tuple[str, ...] = ()  # "seed": run.seed; "sources" / "preference_files": content hashes of files;
    # "serve": the query-time settings it uses; "search": serve.search and evaluate.intervals (what a retrieval
    # evaluation measures); DYNAMIC ones come from the running pipeline (registry, stores)
    model: bool = False  # registers a model version and hands on its reference

    @property
    def section(self) -> str:
        return self.name


GRAPH: tuple[Stage, ...] = (
    Stage("ingest", inputs=(), key_extras=("sources",),
          produces="documents: normalised, de-duplicated, split train/validation (Arrow)",
          code=("lifecycle.data.ingest", "lifecycle.data.sources", "lifecycle.data.formats",
                "lifecycle.data.clean")),
    Stage("validate", inputs=("ingest",),
          produces="the Great Expectations result and Data Docs; a failure stops the pipeline",
          code=("lifecycle.data.validate",)),
    Stage("tokenize", inputs=("ingest",), after=("validate",),
          produces="a byte-level BPE tokenizer with a chat template, and packed token blocks",
          code=("lifecycle.tokenizer",)),
    Stage("pretrain", inputs=("tokenize",), key_extras=("seed",), model=True,
          produces="the base model, registered: its reference (name, version, URI)",
          code=("lifecycle.model", "lifecycle.train.pretrain", "lifecycle.train.trainer", "lifecycle.train.data",
                "lifecycle.train.checkpoint", "lifecycle.train.distributed", "lifecycle.train.evaluate",
                "lifecycle.train.flops")),
    Stage("sft", inputs=("pretrain", "ingest"), key_extras=("seed",), model=True,
          produces="the instruction-tuned chat model, registered: its reference; held-out loss and ROUGE-L",
          code=("lifecycle.align.sft", "lifecycle.align.sft_data", "lifecycle.evaluate.text", "lifecycle.rag.prompt",
                "lifecycle.tokenizer", "lifecycle.model", "lifecycle.config.passthrough")),
    Stage("preferences", inputs=("sft", "ingest"), key_extras=("preference_files", "feedback"),
          produces="a preference set (TRL prompt/chosen/rejected, content-hashed) voted by people in the annotation "
                   "app, by a simulated judge, or imported; its quality statistics",
          code=("lifecycle.preferences.collect", "lifecycle.preferences.export", "lifecycle.preferences.importers",
                "lifecycle.preferences.simulated", "lifecycle.preferences.stats", "lifecycle.preferences.feedback")),
    Stage("rlhf", inputs=("sft", "preferences"), key_extras=("seed",), model=True,
          produces="the aligned policy (RLOO/GRPO against a reward model with a KL leash, or DPO) and the reward "
                   "model, registered: the policy's reference; health checks and the reward-hacking alarm",
          code=("lifecycle.align.reward", "lifecycle.align.policy", "lifecycle.align.dpo", "lifecycle.align.health",
                "lifecycle.align.pairs", "lifecycle.align.launch", "lifecycle.model", "lifecycle.config.passthrough")),
    Stage("rag_index", inputs=("ingest",), after=("validate",), uses=("sft", "rlhf"), key_extras=("search",),
          produces="a version of the LanceDB chunk table and its retrieval metrics; paired with the run's model",
          code=("lifecycle.rag.chunk", "lifecycle.rag.embed", "lifecycle.rag.index", "lifecycle.rag.evaluate",
                "lifecycle.rag.search", "lifecycle.rag.rerank", "lifecycle.evaluate.bootstrap")),
    Stage("evaluate", inputs=("ingest", "pretrain", "sft", "rlhf", "rag_index"), key_extras=("champion", "serve"),
          produces="the candidate against @champion, the SFT and base models on held-out data: bits per byte, "
                   "ROUGE-L with and without retrieval, reward-model win rates, recall@k, latency; the report card",
          code=("lifecycle.evaluate.metrics", "lifecycle.evaluate.text", "lifecycle.evaluate.report",
                "lifecycle.evaluate.compare", "lifecycle.evaluate.bootstrap", "lifecycle.evaluate.report_intervals",
                "lifecycle.evaluate.plots", "lifecycle.rag.answer", "lifecycle.rag.prompt", "lifecycle.align.reward",
                "lifecycle.align.sft")),
    Stage("promote", inputs=("evaluate",),
          produces="the gate's decision (each rule, value, threshold, verdict); @champion moves only on a pass",
          code=("lifecycle.evaluate.gate",)),
)
DYNAMIC = ("champion", "feedback")  # key extras read from the registry and the preference store by the pipeline
STAGES: dict[str, Stage] = {s.name: s for s in GRAPH}


def _check_graph() -> None:
    seen: set[str] = set()
    for stage in GRAPH:  # declared order is a topological order: everything a stage needs comes before it
        missing = [s for s in stage.inputs + stage.after + stage.uses if s not in seen]
        if missing:
            raise AssertionError(f"stage graph: {stage.name} needs {missing}, declared after it")
        seen.add(stage.name)


_check_graph()


def needs(stage: str) -> tuple[str, ...]:
    """What must run before `stage` runs: the stages it reads and the gates it waits for."""
    return STAGES[stage].inputs + STAGES[stage].after


def ancestors(stage: str) -> set[str]:
    found: set[str] = set()
    todo = list(needs(stage))
    while todo:
        s = todo.pop()
        if s not in found:
            found.add(s)
            todo.extend(needs(s))
    return found


@dataclass(frozen=True)
class Plan:
    run: tuple[str, ...]  # stages executed (or reused), in pipeline order
    reuse: tuple[str, ...]  # stages whose cached output must exist (before --from)
    force: tuple[str, ...]  # stages recomputed even when cached (--from and its dependants)


def plan_stages(until: str | None = None, from_stage: str | None = None) -> Plan:
    """`--until S`: S and its ancestors, nothing else. `--from S`: S's ancestors reused from the cache
    (never run), S and everything after it that depends on it recomputed."""
    for flag, value in (("--until", until), ("--from", from_stage)):
        if value is not None and value not in STAGES:
            raise ConfigError(f"{flag} {value}: unknown stage (stages: {', '.join(STAGES)})")
    wanted = set(STAGES) if until is None else ancestors(until) | {until}
    reuse: set[str] = set()
    force: set[str] = set()
    if from_stage is not None:
        if from_stage not in wanted:
            raise ConfigError(f"--from {from_stage} comes after --until {until}: nothing would run")
        reuse = ancestors(from_stage)
        force = {s for s in wanted if s == from_stage or from_stage in ancestors(s)}
    order = [s.name for s in GRAPH if s.name in wanted]
    return Plan(run=tuple(order), reuse=tuple(s for s in order if s in reuse),
                force=tuple(s for s in order if s in force))


def section_data(stage: Stage, cfg: Config) -> dict[str, Any]:
    """The stage's config section as its key sees it: without where its processes meet (the node's rank,
    the rendezvous), so every node of a multi-node run computes the same key."""
    from lifecycle.config.distributed import PLACEMENT_KEYS

    data = cfg.section(stage.section).model_dump(mode="json", by_alias=True)
    if isinstance(data.get("distributed"), dict):
        data["distributed"] = {k: v for k, v in data["distributed"].items() if k not in PLACEMENT_KEYS}
    return data


def key_extras(stage: Stage, cfg: Config, dynamic: Callable[[str], str] | None = None) -> dict[str, str]:
    """The extras of `stage`'s key; `dynamic(name)` gives the DYNAMIC ones (the champion version a stage
    compares with, the preference store's feedback digest): only a running pipeline can read those."""
    extras: dict[str, str] = {}
    for name in (n for n in stage.key_extras if n in DYNAMIC):
        if dynamic is None:
            raise LifecycleError(f"stage {stage.name}: its key needs '{name}', which only the pipeline can read")
        extras[name] = dynamic(name)
    if "serve" in stage.key_extras:
        extras["serve"] = hash_json(cfg.serve.model_dump(mode="json", include={"search", "answer"}))
    if "search" in stage.key_extras:  # what a retrieval evaluation measures: the search settings, its intervals
        extras["search"] = hash_json({"search": cfg.serve.search.model_dump(mode="json"),
                                      "intervals": cfg.evaluate.intervals.model_dump(mode="json")})
    if "seed" in stage.key_extras:
        extras["seed"] = str(cfg.run.seed)
    if "sources" in stage.key_extras:
        from lifecycle.data.sources import fingerprint

        extras |= {f"source.{s.name}": fingerprint(s) for s in cfg.ingest.sources}
    if "preference_files" in stage.key_extras:
        files = [*cfg.preferences.prompts.files, *(cfg.preferences.import_.files if cfg.preferences.mode == "import"
                                                   else [])]
        extras |= {f"file.{name}": hash_file(Path(name).expanduser()) for name in files}
    return extras


def stage_key(stage: Stage, cfg: Config, input_keys: dict[str, str], extras: dict[str, str] | None = None) -> str:
    """The cache key: changes when the stage's config section, an input's key, its code or an extra
    (seed, source contents; `key_extras`, computed here unless given) changes, and only then."""
    if set(input_keys) != set(stage.inputs):
        raise LifecycleError(f"stage {stage.name}: given inputs {sorted(input_keys)}, but the stage graph "
                             f"declares {list(stage.inputs)}")
    extras = key_extras(stage, cfg) if extras is None else extras
    return hash_json({"stage": stage.name, "config": section_data(stage, cfg), "inputs": input_keys,
                      "code": hash_modules(stage.code), "extra": extras})


def planned_keys(cfg: Config, stage: str, identity: Callable[[str, str], str] | None = None,
                 dynamic: Callable[[str, str, dict[str, str]], str] | None = None) -> dict[str, str]:
    """The cache keys of `stage` and of every stage it reads, computed without running anything.
    `identity(stage, key)` gives what a reader of that output keys on (its content hash, when the stored
    output has one: lifecycle.store.StageOutput.identity); by default the key itself. `dynamic(stage, extra,
    input keys)` gives a DYNAMIC key extra (needed by the stages that have one)."""
    keys: dict[str, str] = {}

    def key(name: str) -> str:
        if name not in keys:
            spec = STAGES[name]
            inputs = {i: key(i) for i in spec.inputs}
            extras = key_extras(spec, cfg, (lambda extra: dynamic(name, extra, inputs)) if dynamic else None)
            keys[name] = stage_key(spec, cfg, {i: identity(i, k) if identity else k for i, k in inputs.items()},
                                   extras)
        return keys[name]

    key(stage)
    return keys
