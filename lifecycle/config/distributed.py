"""The `distributed` block of the training stages (conf/pretrain.yaml, conf/rlhf.yaml): processes per node,
nodes, and where the nodes meet. More than one process in all: the stage runs under `torchrun`
(lifecycle/train/distributed.py builds its command line)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from lifecycle.config.base import Section

# where processes meet, not what they compute: left out of the stage's cache key (lifecycle/stages.py), so
# every node of a run computes the same key (and the same checkpoint folder and rendezvous id)
PLACEMENT_KEYS = ("node_rank", "rdzv_backend", "rdzv_endpoint", "rdzv_id")


class LaunchConfig(Section):
    nproc: int = Field(ge=1)  # processes on each node (one per GPU)
    nnodes: int = Field(ge=1)
    node_rank: int = Field(ge=0)  # this node; node 0 hosts the rendezvous and runs global rank 0
    rdzv_backend: Literal["static", "c10d"]  # static: node_rank fixes the ranks; c10d: torchrun assigns them
    rdzv_endpoint: str | None  # HOST:PORT on node 0, reachable from every node; null: one node (--standalone)
    rdzv_id: str | None  # the rendezvous (job) id; null: derived from the stage's cache key

    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes

    @field_validator("node_rank")
    @classmethod
    def _rank_in_range(cls, value: int, info: ValidationInfo) -> int:
        nnodes = info.data.get("nnodes", 1)
        if value >= nnodes:
            raise ValueError(f"node_rank must be below nnodes ({nnodes}): nodes are numbered 0 .. nnodes - 1")
        return value

    @field_validator("rdzv_endpoint")
    @classmethod
    def _endpoint_for_nodes(cls, value: str | None, info: ValidationInfo) -> str | None:
        nnodes = info.data.get("nnodes", 1)
        if value is None and nnodes > 1:
            raise ValueError(f"nnodes is {nnodes}: every node needs rdzv_endpoint, the HOST:PORT of node 0 "
                             "(e.g. 10.0.0.1:29500)")
        host, sep, port = (value or "").rpartition(":")
        if value is not None and not (sep and host and port.isdigit()):
            raise ValueError("expected HOST:PORT (e.g. 10.0.0.1:29500)")
        return value
