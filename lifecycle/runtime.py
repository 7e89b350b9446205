"""Process set-up for a run: what the run was asked for (`RunSettings`), the state directory, the
environment Prefect, MLflow and HF read, and the run's own Prefect API when no server is given.

Call `prepare_environment` and `start_embedded_api` before importing prefect (it reads PREFECT_HOME and
PREFECT_API_URL when its settings load).
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from lifecycle import children
from lifecycle.errors import LifecycleError, StorageError

if TYPE_CHECKING:
    from lifecycle.config import Config

# Third-party warnings known to be harmless here, by category and message; any other warning still shows.
KNOWN_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    # datasets' worker processes fork after LanceDB started its runtime; the children never use LanceDB
    (RuntimeWarning, r"lancedb fork support is experimental"),
    # TRL's trainers still call transformers' old name for it
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
)
# ... and log records, by logger and message: MLflow looks for a hub model card and licence of a model
# saved from a local folder; Great Expectations sets this logger to INFO itself
KNOWN_LOG_RECORDS: dict[str, tuple[str, ...]] = {
    "mlflow.transformers": (r"The model card could not be retrieved from the hub",
                            r"Unable to find license information for this model"),
    "great_expectations.data_context.types.base": (r"Created temporary directory .* for ephemeral docs site",),
}


def resolve_state_dir(cli_value: str | None, configured: str) -> Path:
    """--state-dir, then LIFECYCLE_HOME, then run.state_dir from the config (relative to the cwd)."""
    return Path(cli_value or os.environ.get("LIFECYCLE_HOME") or configured).expanduser().resolve()


def prepare_environment(state_dir: Path) -> None:
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LifecycleError(f"state directory '{state_dir}' cannot be created: {err.strerror}") from None
    try:  # a read-only or forbidden state dir fails here, naming it, not later as a Prefect API that won't start
        with tempfile.TemporaryFile(dir=state_dir):
            pass
    except OSError as err:
        raise StorageError(f"state directory '{state_dir}' cannot be written: {err.strerror} (point --state-dir "
                           "at a writable folder)") from None
    if not os.environ.get("PREFECT_API_URL"):  # embedded: ephemeral API on SQLite inside the state dir
        os.environ.setdefault("PREFECT_HOME", str(state_dir / "prefect"))
    quiet_environment()


EMBEDDED_API = "LIFECYCLE_EMBEDDED_API"  # the URL of the Prefect API this process started for itself


class EmbeddedApi:
    """The process's own Prefect API (a run's, the annotation app's): Prefect's temporary server (the same
    uvicorn app with the ephemeral-mode services, on the SQLite database under PREFECT_HOME, which a fresh
    state dir gets as a copy of an empty migrated one: lifecycle/prefect_api.py), started before
    prefect is imported so it comes up while the pipeline's modules load; Prefect would start it only at the
    first flow call, after them, and bound only by atexit, which SIGTERM and SIGKILL skip. It lives as long
    as this process, however that ends (lifecycle.children). Its own output goes to `PREFECT_HOME/api.log`,
    not the run's console (uvicorn and Prefect's services print tracebacks of the work they cancel when
    stopped)."""

    def __init__(self, url: str, process: subprocess.Popen, log_path: Path) -> None:  # process: its watchdog
        self.url, self.process, self.log_path = url, process, log_path

    def wait(self, timeout_s: float | None = None) -> None:
        """Return once it answers; an error naming its exit status if it stops first."""
        timeout_s = timeout_s or float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", 60))
        deadline, opener = time.monotonic() + timeout_s, urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while self.process.poll() is None:
            try:
                with opener.open(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        logging.getLogger("lifecycle").info("Prefect API of this process: %s (temporary; "
                                                            "PREFECT_HOME %s)", self.url,
                                                            os.environ.get("PREFECT_HOME"))
                        return
            except OSError:  # not listening yet: poll again until the deadline
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise LifecycleError(f"this process's Prefect API {self.url} did not answer in {timeout_s:.0f} s "
                                     f"(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS); its log: {self.log_path}")
            time.sleep(0.05)
        raise LifecycleError(f"this process's Prefect API {self.url} stopped with status {self.process.returncode} "
                             "before it answered (3: its port was taken meanwhile; run again, or set PREFECT_API_URL "
                             f"to a running Prefect server); its log: {self.log_path}")

    def stop(self) -> None:
        children.stop(self.process)


def start_embedded_api() -> EmbeddedApi | None:
    """With no PREFECT_API_URL, and prefect not imported yet: start the run's Prefect API (`EmbeddedApi`)
    and point this process at it. None when a server is given, or Prefect will start its own."""
    if os.environ.get("PREFECT_API_URL") or "prefect" in sys.modules:
        return None
    port = _free_port()
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "api.log", "a", encoding="utf-8") as log:  # the child keeps its own descriptor
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}: pid {os.getpid()} starts its own Prefect API on "
                  f"port {port}\n")
        log.flush()
        process = children.start_bound(  # it ends with this process, even one killed by SIGKILL (lifecycle.children)
            [sys.executable, "-m", "lifecycle.prefect_api", str(port)], stdout=log, stderr=subprocess.STDOUT,
            env=os.environ | {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                              "PREFECT__SERVER_FINAL": "1",
                              "PREFECT_SERVER_ANALYTICS_ENABLED": "0"})  # a run's own API sends Prefect nothing
    api = EmbeddedApi(f"http://127.0.0.1:{port}/api", process, home / "api.log")
    atexit.register(api.stop)
    os.environ["PREFECT_API_URL"] = os.environ[EMBEDDED_API] = api.url
    os.environ.setdefault("PREFECT_UI_URL", "")  # no "View at" links: the server has no UI, and goes with the run
    return api


def is_temporary_api(url: str | None) -> bool:
    """Whether the Prefect API at `url` (None: Prefect's temporary server) lives only as long as this run."""
    return not url or url == os.environ.get(EMBEDDED_API)


def no_heartbeats_on_temporary_api() -> AbstractContextManager:
    """On a temporary Prefect API (the run's own) flow runs started inside send no heartbeats: heartbeats
    let a server mark a dead flow run Crashed, and this server dies with the process; each flow run would
    pay up to 1 s at its end (Prefect joins the heartbeat thread, which sleeps in 1 s slices). Against a
    real server they stay on."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings

    if not is_temporary_api(get_current_settings().api.url):
        return nullcontext()
    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


def _free_port() -> int:
    for port in random.sample(range(8000, 9000), 50):  # Prefect's range for its temporary server
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise LifecycleError("no free port in 8000-8999 for the run's Prefect API; set PREFECT_API_URL to a running "
                         "Prefect server")


def quiet_environment() -> None:
    """No analytics, no fork warnings, no artifact-upload bars, no known-harmless third-party warnings; the
    `lifecycle` logger in Prefect's logs."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "lifecycle")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")  # library logs outside a flow run
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow's own HTTP retries default to 7 with a factor-2 backoff (minutes against a server that is down) and
    # a 120 s timeout; the stage tasks' retries (tasks/retries.py STAGE_RETRIES) come on top, so keep these short
    for name, value in MLFLOW_HTTP_RETRIES.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("LANCEDB_LOG", "warn,lance::dataset::write::insert=error")  # "no dataset, creating it"
    filter_known_warnings()


# ~3 retries over 0 + 2 + 4 s (+ up to 1 s jitter each) per request; a request that hangs gives up after 60 s
MLFLOW_HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}


def filter_known_warnings() -> None:
    """Drop the KNOWN_WARNINGS and KNOWN_LOG_RECORDS (and only those); safe to call again."""
    for category, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, messages in KNOWN_LOG_RECORDS.items():
        logging.getLogger(name).addFilter(_DROP_KNOWN[name])


class _DropMessages(logging.Filter):
    def __init__(self, messages: tuple[str, ...]) -> None:
        super().__init__()
        self.pattern = re.compile("|".join(messages))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


_DROP_KNOWN = {name: _DropMessages(messages) for name, messages in KNOWN_LOG_RECORDS.items()}


class _UserErrorOnce(logging.Filter):
    """Prefect reports a failure at every level (the task run fails, its flow run, the pipeline's), each
    with the exception's text. For a user error (`LifecycleError`: bad input, a failed validation) that
    text is the whole story, and the CLI prints it once at the end: the API's copy keeps the message
    without a traceback; the console keeps one short line per failed run."""

    def __init__(self, console: bool) -> None:
        super().__init__()
        self.console = console

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], LifecycleError):
            record.exc_info, record.exc_text = None, None
            record.lifecycle_user_error = True
        if not self.console or not record.name.startswith(("prefect.flow_runs", "prefect.task_runs")):
            return True
        message = record.getMessage()
        found = _USER_ERROR.search(message) if _USER_ERROR else None
        if not found and not getattr(record, "lifecycle_user_error", False):
            return True
        if found and message.startswith("Finished in state"):
            record.msg, record.args = f"Finished in state Failed ({found[1]}: the message is printed below)", ()
            return True
        return False  # "Task run failed with exception: ...", "Encountered exception during execution: ..."


def _user_error_names() -> re.Pattern | None:
    names, todo = set(), [LifecycleError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return re.compile(rf"\b({'|'.join(sorted(names))})[(:]")


_USER_ERROR: re.Pattern | None = None


def report_user_errors_once() -> None:
    """Install `_UserErrorOnce` on Prefect's handlers (after prefect is imported and its logging set up)."""
    global _USER_ERROR
    _USER_ERROR = _user_error_names()
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(_UserErrorOnce(console=False))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.addFilter(_UserErrorOnce(console=True))


def configure_logging() -> None:
    """Our progress at INFO; third-party chatter (GX, MLflow hints, Hugging Face bars off a TTY) kept down."""
    logging.getLogger("lifecycle").setLevel(logging.INFO)
    warnings.filterwarnings("ignore", module=r"mlflow\..*", category=UserWarning)
    for name in ("great_expectations", "mlflow", "alembic", "httpx", "datasets", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if not sys.stderr.isatty():  # read when datasets / transformers load (a cached run never loads them)
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # and transformers' weight loading/saving bars
        if "datasets" in sys.modules:
            sys.modules["datasets"].disable_progress_bars()


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
