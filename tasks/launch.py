"""Where a stage runs: the device tags of its MLflow run, and a stage's training under torchrun (one node or
several), whose global rank 0 writes the result the task then registers."""

from __future__ import annotations

from pathlib import Path

import mlflow
from prefect import get_run_logger

from lifecycle.config.distributed import LaunchConfig
from lifecycle.errors import LifecycleError
from lifecycle.names import DEVICE, DEVICE_COUNT
from tasks.common import StageDirs


def device_tags(preference: str, count: int = 1) -> dict[str, str]:
    """`DEVICE` ("cpu", "cuda:<GPU name>") and `DEVICE_COUNT` (lifecycle/names.py) of a stage's run: what the
    report card prices its wall time by."""
    from lifecycle.train.distributed import resolve_device

    device = resolve_device(preference)
    name = "cpu"
    if device.type == "cuda":
        import torch

        name = f"cuda:{torch.cuda.get_device_name(device)}"
    return {DEVICE: name, DEVICE_COUNT: str(count)}


def launch_stage(stage: str, module: str, args: list[str], launch: LaunchConfig, dirs: StageDirs,
                 expect: Path) -> bool:
    """Run the library's `module` under torchrun for `stage` (the rendezvous id comes from the stage key, the
    same on every node; MLflow's URI goes with it). True on node 0, where global rank 0 wrote `expect` and
    the task registers; False on any other node (its StageResult is then `worker=True`: nothing to commit)."""
    from lifecycle.train.distributed import launch_torchrun

    logger = get_run_logger()
    launch_torchrun(module, args, launch, f"{stage}-{dirs.key[:16]}",
                    env={"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}, logger=logger)
    if launch.node_rank > 0:
        logger.info("%s: node %d of %d done; node 0 commits and registers the result", stage, launch.node_rank,
                    launch.nnodes)
        return False
    if not expect.exists():
        raise LifecycleError(f"{stage}: torchrun finished but global rank 0 did not write {expect}"
                             + (f": with {stage}.distributed.rdzv_backend c10d torchrun may put rank 0 on another "
                                "node; use static, where node_rank 0 runs it" if launch.nnodes > 1 else ""))
    return True
