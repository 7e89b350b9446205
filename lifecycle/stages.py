"""The stage graph's types and planner. Each stage declares its own node (`Stage`) beside its work in
`tasks/<stage>.py`; tasks/graph.py assembles them into a `Graph`, checked for order here. The
`--until`/`--from` planner and the cache keys come from it; nothing here names a stage.

    graph.plan(until="tokenize").run                                  # ("ingest", "validate", "tokenize")
    stage_key(graph["tokenize"], cfg, {"ingest": "ab12..."})          # the cache key of tokenize's output

A key hashes the stage's config section, its inputs' keys, its extras and its code: the closure of the
project modules its `tasks/<stage>.py` imports (lifecycle/hashing.py `code_closure`), computed from the
source, so an edit to anything the stage runs changes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lifecycle.errors import ConfigError, LifecycleError
from lifecycle.hashing import code_closure, hash_json, hash_modules

if TYPE_CHECKING:
    from lifecycle.config import Config
    from lifecycle.store import StageOutput


@dataclass(frozen=True)
class Stage:
    """One node of the graph, declared by its `tasks/<name>.py` (`module`) as `STAGE`. Its config section is
    `<name>` (conf/<name>.yaml)."""

    name: str
    module: str  # the module declaring it: the root of its code closure
    inputs: tuple[str, ...]  # stages whose outputs it reads; their keys are part of its cache key
    produces: str  # what its output holds (`lifecycle stages`, docs/ARCHITECTURE.md)
    run: Callable[..., StageOutput]  # (ctx, inputs by name, model or None) -> its output; called by its flow
    after: tuple[str, ...] = ()  # gates: stages that must have passed first (not part of its key)
    uses: tuple[str, ...] = ()  # model stages whose reference it takes when they run too (not part of its key)
    model: str | None = None  # "base" or "chat": registers a model of that kind and hands on its reference
    candidate: bool = False  # measures the run's chat model: the pipeline marks it @candidate first
    extras: Callable[[Config], dict[str, str]] | None = None  # key extras read from the config (seed, file hashes)
    dynamic: Mapping[str, Callable[..., str]] = field(default_factory=dict)  # key extras only a running
    # pipeline can read: name -> (run context, {input stage: its ModelRef or None}) -> value
    check: Callable[[Config, Path], None] | None = None  # pre-flight (before any work): builds third-party configs
    lineage: Callable[[StageOutput], dict[str, str]] | None = None  # tags its output gives the run's candidate
    announce: Callable[[StageOutput, Any], None] | None = None  # run alone (a deployment): tell the world


class Graph:
    """The stages in pipeline order; every stage's inputs, gates and used models come before it."""

    def __init__(self, stages: Iterable[Stage]) -> None:
        self.stages = tuple(stages)
        self.by_name = {s.name: s for s in self.stages}
        seen: set[str] = set()
        for stage in self.stages:  # declared order is a topological order: everything a stage needs comes first
            missing = [s for s in stage.inputs + stage.after + stage.uses if s not in seen]
            if missing:
                raise AssertionError(f"stage graph: {stage.name} needs {missing}, declared after it")
            seen.add(stage.name)

    def __getitem__(self, name: str) -> Stage:
        return self.by_name[name]

    def __iter__(self) -> Iterator[Stage]:
        return iter(self.stages)

    def __contains__(self, name: object) -> bool:
        return name in self.by_name

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.by_name)

    def needs(self, stage: str) -> tuple[str, ...]:
        """What must run before `stage` runs: the stages it reads and the gates it waits for."""
        return self[stage].inputs + self[stage].after

    def ancestors(self, stage: str) -> set[str]:
        found: set[str] = set()
        todo = list(self.needs(stage))
        while todo:
            s = todo.pop()
            if s not in found:
                found.add(s)
                todo.extend(self.needs(s))
        return found

    def plan(self, until: str | Sequence[str] | None = None, from_stage: str | None = None) -> Plan:
        """`--until S` (repeatable): each S and its ancestors, nothing else. `--from S`: S's ancestors reused from
        the cache (never run), S and everything after it that depends on it recomputed."""
        targets = [until] if isinstance(until, str) else list(until or [])
        for flag, value in [("--until", t) for t in targets] + [("--from", from_stage)]:
            if value is not None and value not in self:
                raise ConfigError(f"{flag} {value}: unknown stage (stages: {', '.join(self.names)})")
        wanted = set(self.names) if not targets else set().union(*(self.ancestors(t) | {t} for t in targets))
        reuse: set[str] = set()
        force: set[str] = set()
        if from_stage is not None:
            if from_stage not in wanted:
                raise ConfigError(f"--from {from_stage} comes after --until {' '.join(targets)}: nothing would run")
            reuse = self.ancestors(from_stage)
            force = {s for s in wanted if s == from_stage or from_stage in self.ancestors(s)}
        order = [s for s in self.names if s in wanted]
        return Plan(run=tuple(order), reuse=tuple(s for s in order if s in reuse),
                    force=tuple(s for s in order if s in force))

    def mermaid(self) -> str:
        """The graph as a Mermaid flowchart (docs/ARCHITECTURE.md holds it; `lifecycle stages --mermaid`)."""
        lines = ["flowchart LR"]
        for stage in self.stages:
            for name in stage.inputs:
                label = f"{self[name].model} model ref" if self[name].model else ""
                lines.append(f"    {name} -- {label} --> {stage.name}" if label else f"    {name} --> {stage.name}")
            lines += [f"    {name} -. gate .-> {stage.name}" for name in stage.after]
            lines += [f"    {name} -. {self[name].model} model ref .-> {stage.name}" for name in stage.uses]
        return "\n".join(lines)

    def planned_keys(self, cfg: Config, stage: str, identity: Callable[[str, str], str] | None = None,
                     dynamic: Callable[[str, str, dict[str, str]], str] | None = None) -> dict[str, str]:
        """The cache keys of `stage` and of every stage it reads, computed without running anything.
        `identity(stage, key)` gives what a reader of that output keys on (its content hash, when the stored
        output has one: lifecycle.store.StageOutput.identity); by default the key itself. `dynamic(stage,
        extra, input keys)` gives a dynamic key extra (needed by the stages that have one)."""
        keys: dict[str, str] = {}

        def key(name: str) -> str:
            if name not in keys:
                spec = self[name]
                inputs = {i: key(i) for i in spec.inputs}
                extras = key_extras(spec, cfg, (lambda extra: dynamic(name, extra, inputs)) if dynamic else None)
                keys[name] = stage_key(spec, cfg, {i: identity(i, k) if identity else k for i, k in inputs.items()},
                                       extras)
            return keys[name]

        key(stage)
        return keys


@dataclass(frozen=True)
class Plan:
    run: tuple[str, ...]  # stages executed (or reused), in pipeline order
    reuse: tuple[str, ...]  # stages whose cached output must exist (before --from)
    force: tuple[str, ...]  # stages recomputed even when cached (--from and its dependants)


def section_data(stage: Stage, cfg: Config) -> dict[str, Any]:
    """The stage's config section as its key sees it: without where its processes meet (the node's rank,
    the rendezvous), so every node of a multi-node run computes the same key."""
    from lifecycle.config.distributed import PLACEMENT_KEYS

    data = cfg.section(stage.name).model_dump(mode="json", by_alias=True)
    if isinstance(data.get("distributed"), dict):
        data["distributed"] = {k: v for k, v in data["distributed"].items() if k not in PLACEMENT_KEYS}
    return data


def key_extras(stage: Stage, cfg: Config, dynamic: Callable[[str], str] | None = None) -> dict[str, str]:
    """The extras of `stage`'s key: its `extras(cfg)`, and its dynamic ones from `dynamic(name)` (the champion
    a stage compares with, the preference store's feedback digest): only a running pipeline can read those."""
    extras = stage.extras(cfg) if stage.extras else {}
    for name in stage.dynamic:
        if dynamic is None:
            raise LifecycleError(f"stage {stage.name}: its key needs '{name}', which only the pipeline can read")
        extras[name] = dynamic(name)
    return extras


def code_hash(stage: Stage) -> str:
    """The hash of every project module `stage` runs: its own module and what it imports, at any depth."""
    return hash_modules(code_closure(stage.module))


def stage_key(stage: Stage, cfg: Config, input_keys: dict[str, str], extras: dict[str, str] | None = None) -> str:
    """The cache key: changes when the stage's config section, an input's key, its code or an extra
    (seed, source contents; `key_extras`, computed here unless given) changes, and only then."""
    if set(input_keys) != set(stage.inputs):
        raise LifecycleError(f"stage {stage.name}: given inputs {sorted(input_keys)}, but the stage graph "
                             f"declares {list(stage.inputs)}")
    extras = key_extras(stage, cfg) if extras is None else extras
    return hash_json({"stage": stage.name, "config": section_data(stage, cfg), "inputs": input_keys,
                      "code": code_hash(stage), "extra": extras})
