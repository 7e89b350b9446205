"""The stage graph, assembled from the stages' own declarations: a stage is a config section (a field of
`lifecycle.config.Config`) with a `tasks/<section>.py` that declares its node as `STAGE`. Pipeline order is
the order of those fields; `Graph` checks at import that every stage comes after what it needs.

    GRAPH.plan(until="sft").run        # ("ingest", "validate", "tokenize", "pretrain", "sft")
    GRAPH["rag_index"].inputs          # ("ingest",)
"""

from __future__ import annotations

from importlib import import_module

from lifecycle.stages import Graph, Stage
from tasks import stage_names


def assemble() -> Graph:
    stages: list[Stage] = []
    for section in stage_names():
        stage = import_module(f"tasks.{section}").STAGE
        if stage.name != section or stage.module != f"tasks.{section}":
            raise AssertionError(f"tasks/{section}.py declares stage {stage.name!r} from {stage.module}: a stage is "
                                 "named after its config section and declared in its own module")
        stages.append(stage)
    return Graph(stages)


GRAPH = assemble()
