"""MLflow hooks for the pretraining loop: metrics and sample texts go to an explicit run id through
MlflowClient, so they work from any thread (Prefect's task workers) and from torchrun's rank 0.

    on_metrics, on_text = mlflow_hooks(run_id)
    on_metrics({"pretrain/loss": 3.2}, step=10); on_text("...", "pretrain/samples/step-000010.txt")
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient


def mlflow_hooks(run_id: str) -> tuple[Callable[[dict[str, float], int], None], Callable[[str, str], None]]:
    client = MlflowClient()

    def on_metrics(metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(key=k, value=float(v), timestamp=now, step=step) for k, v in metrics.items()
                 if math.isfinite(float(v))]
        client.log_batch(run_id, metrics=batch)

    def on_text(text: str, artifact_file: str) -> None:
        client.log_text(run_id, text, artifact_file)

    return on_metrics, on_text
