"""Scale-out: process-group set-up from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), DDP or
FSDP wrapping, the few collectives the loop needs, and launching torchrun from the Prefect task.

A single process (no WORLD_SIZE, or 1) needs no process group: every helper here degrades to a no-op.

    dist = init_distributed("auto", "auto")          # under `torchrun --nproc_per_node 2 -m ...`
    model = wrap_model(model, "ddp", dist)
    launch_torchrun("lifecycle.train.pretrain", ["--data", ...], cfg.distributed, rdzv_id)   # from the task
"""

from __future__ import annotations

import inspect
import logging
import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import nn

from lifecycle.children import start_bound, stop
from lifecycle.config.distributed import LaunchConfig
from lifecycle.errors import LifecycleError

log = logging.getLogger("lifecycle.train")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise LifecycleError("pretrain.device=cuda but no CUDA GPU is visible; use device: auto or cpu")
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device_pref: str, backend_pref: str) -> DistInfo:
    """Join the process group torchrun set up (if any) and pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not tdist.is_initialized():
        backend = backend_pref if backend_pref != "auto" else ("nccl" if device.type == "cuda" else "gloo")
        tdist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
        log.info("distributed: rank %d/%d (%s) on %s", rank, world, backend, device)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def cleanup(dist: DistInfo) -> None:
    if dist.enabled and tdist.is_initialized():
        tdist.destroy_process_group()


def barrier(dist: DistInfo) -> None:
    if dist.enabled:
        tdist.barrier()


def all_reduce_sum(t: torch.Tensor, dist: DistInfo) -> torch.Tensor:
    if dist.enabled:
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def wrap_model(model: nn.Module, strategy: str, dist: DistInfo) -> nn.Module:
    """DDP (replicas, gradients all-reduced) or FSDP2 (each decoder layer sharded); as is for one process."""
    if not dist.enabled:
        return model
    if strategy == "ddp":
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        # no buffer sync in forward: the buffers are constants (RoPE frequencies), and without it a forward
        # pass is not a collective, so ranks may evaluate uneven shards
        ddp = nn.parallel.DistributedDataParallel
        no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
                   else {"broadcast_buffers": False})  # the older spelling, deprecated in torch 2.13
        return ddp(model, device_ids=ids, **no_sync)
    from torch.distributed.fsdp import fully_shard

    for layer in decoder_layers(model):
        fully_shard(layer)
    fully_shard(model)
    return model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    inner = getattr(model, "model", None) or getattr(model, "transformer", None)
    layers = getattr(inner, "layers", None) or getattr(inner, "h", None)
    if layers is None:
        raise LifecycleError(f"FSDP: cannot find the decoder layers of {type(model).__name__}")
    return layers


def set_grad_sync(model: nn.Module, enabled: bool) -> None:
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulation."""
    model = getattr(model, "_orig_mod", model)  # torch.compile wraps the DDP/FSDP module
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model.require_backward_grad_sync = enabled
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def torchrun_command(module: str, args: list[str], launch: LaunchConfig, rdzv_id: str) -> list[str]:
    """`python -m torch.distributed.run ... -m module args...`: `--standalone` on one node without an
    endpoint, else the multi-node rendezvous (`rdzv_id`: the same on every node of the run)."""
    if launch.nnodes == 1 and launch.rdzv_endpoint is None:
        where = ["--standalone"]
    else:
        where = [f"--nnodes={launch.nnodes}", f"--node_rank={launch.node_rank}",
                 f"--rdzv_backend={launch.rdzv_backend}", f"--rdzv_endpoint={launch.rdzv_endpoint}",
                 f"--rdzv_id={launch.rdzv_id or rdzv_id}"]
    return [sys.executable, "-m", "torch.distributed.run", *where, f"--nproc_per_node={launch.nproc}",
            "-m", module, *args]


def launch_torchrun(module: str, args: list[str], launch: LaunchConfig, rdzv_id: str,
                    env: dict[str, str] | None = None, logger: logging.Logger | None = None) -> None:
    """Run `module` under torchrun (torchrun_command), streaming its output to `logger`."""
    out = logger or log
    cmd = torchrun_command(module, args, launch, rdzv_id)
    out.info("launching: %s", " ".join(cmd))
    # bound: torchrun and its workers end with this process (lifecycle.children), and with this call; in this
    # process group, so a terminal's Ctrl-C stops them at once, whichever thread waits here
    proc = start_bound(cmd, session=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       env={**os.environ, **(env or {})}, bufsize=1)
    assert proc.stdout is not None
    tail: list[str] = []
    try:
        for line in proc.stdout:
            line = line.rstrip()
            out.info("%s", line)
            tail = (tail + [line])[-20:]
    except BaseException:  # Ctrl-C, or a failing log handler: no training goes on behind our back
        stop(proc)
        raise
    if proc.wait() != 0:
        where = f"node {launch.node_rank} of {launch.nnodes}, " if launch.nnodes > 1 else ""
        raise LifecycleError(f"torchrun ({where}{launch.nproc} processes) failed with exit code {proc.returncode}; "
                             "last lines:\n" + "\n".join(tail))
