"""The pipeline's stages and their dependencies, and what `--until` / `--from` make of them.

`--until S` runs S and everything it depends on (nothing else). `--from S` reuses the cached outputs
of S's ancestors without running them, and recomputes S and whatever depends on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from lifecycle.errors import ConfigError

# stage -> the stages whose outputs it reads (order = pipeline order)
STAGES: dict[str, tuple[str, ...]] = {
    "ingest": (),
    "validate": ("ingest",),
    "tokenize": ("ingest", "validate"),
    "pretrain": ("tokenize",),
    "rag_index": ("ingest", "validate"),  # keep last: it pairs the index with the newest registered model
}


def ancestors(stage: str) -> set[str]:
    found: set[str] = set()
    todo = list(STAGES[stage])
    while todo:
        s = todo.pop()
        if s not in found:
            found.add(s)
            todo.extend(STAGES[s])
    return found


@dataclass(frozen=True)
class Plan:
    run: tuple[str, ...]  # stages executed, in pipeline order
    reuse: tuple[str, ...]  # stages whose cached output must exist (before --from)
    force: tuple[str, ...]  # stages recomputed even when cached (--from and its dependants)


def plan_stages(until: str | None = None, from_stage: str | None = None) -> Plan:
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
    order = [s for s in STAGES if s in wanted]
    return Plan(run=tuple(order), reuse=tuple(s for s in order if s in reuse),
                force=tuple(s for s in order if s in force))
