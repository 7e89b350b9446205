"""Process set-up for a run: what the run was asked for (`RunSettings`), the state directory and the
environment Prefect, MLflow and HF read.

Call `prepare_environment` before importing prefect (it reads PREFECT_HOME when its settings load).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from lifecycle.errors import LifecycleError

if TYPE_CHECKING:
    from lifecycle.config import Config


def resolve_state_dir(cli_value: str | None, configured: str) -> Path:
    """--state-dir, then LIFECYCLE_HOME, then run.state_dir from the config (relative to the cwd)."""
    return Path(cli_value or os.environ.get("LIFECYCLE_HOME") or configured).expanduser().resolve()


def prepare_environment(state_dir: Path) -> None:
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LifecycleError(f"state directory '{state_dir}' cannot be created: {err.strerror}") from None
    if not os.environ.get("PREFECT_API_URL"):  # embedded: ephemeral API on SQLite inside the state dir
        os.environ.setdefault("PREFECT_HOME", str(state_dir / "prefect"))
    quiet_environment()


def quiet_environment() -> None:
    """No analytics, no fork warnings, no artifact-upload bars; the `lifecycle` logger in Prefect's logs."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "lifecycle")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")  # library logs outside a flow run
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def configure_logging() -> None:
    """Our progress at INFO; third-party chatter (GX, MLflow hints, datasets bars off a TTY) kept down."""
    import warnings

    logging.getLogger("lifecycle").setLevel(logging.INFO)
    warnings.filterwarnings("ignore", module=r"mlflow\..*", category=UserWarning)
    for name in ("great_expectations", "mlflow", "alembic", "httpx", "datasets", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if not sys.stderr.isatty():
        import datasets

        datasets.disable_progress_bars()


class RunSettings(BaseModel):
    """What a run is asked to do with the configuration: the parameters of `lifecycle run`, of the
    pipeline flow and of every stage flow (deployments set them in infra/prefect.yaml)."""

    model_config = ConfigDict(frozen=True)

    profile: str = "default"  # conf/profiles/<profile>.yaml, or "default" for none
    overrides: list[str] = []  # --set KEY=VALUE
    sources: list[str] = []  # --source PATH_OR_GLOB (replace ingest.sources)
    state_dir: str | None = None  # default: LIFECYCLE_HOME, then run.state_dir
    conf_dir: str | None = None  # default: LIFECYCLE_CONF, then ./conf

    def load(self) -> Config:
        from lifecycle.config import find_conf_dir, load_config

        return load_config(find_conf_dir(self.conf_dir), None if self.profile == "default" else self.profile,
                           self.overrides, self.sources)

    def state(self, cfg: Config) -> Path:
        return resolve_state_dir(self.state_dir, cfg.run.state_dir)
