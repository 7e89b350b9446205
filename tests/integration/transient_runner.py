"""Runs the real ingest task inside a pipeline flow run (its MLflow parent run opened), but first waits for the
test to inject a fault: it touches SYNC/ready once the parent run is open, then waits for SYNC/go. Used by
tests/integration/test_transient_faults.py:

    python -m tests.integration.transient_runner STATE_DIR SYNC_DIR [--set KEY=VALUE]...

Prints one JSON line: the task run's final state, run_count and state history.
"""

import json
import sys
import time
from pathlib import Path

from lifecycle.runtime import RunSettings, configure_logging, prepare_environment, start_embedded_api

CONF = Path(__file__).resolve().parents[2] / "conf"


def main(state: Path, sync: Path, overrides: list[str]) -> None:
    prepare_environment(state)
    api = start_embedded_api()
    from prefect import flow
    from prefect.client.orchestration import get_client

    from tasks.context import pipeline_run
    from tasks.graph import GRAPH
    from tasks.ingest import ingest

    configure_logging()
    if api:
        api.wait()

    @flow(name="transient-fault")
    def run_ingest():
        settings = RunSettings(overrides=overrides, state_dir=str(state), conf_dir=str(CONF))
        with pipeline_run(settings, settings.load(), GRAPH.plan("ingest", None)) as ctx:
            (sync / "ready").touch()
            while not (sync / "go").exists():
                time.sleep(0.05)
            final = ingest(ctx, {}, return_state=True)  # a failed task fails no further: the test reads its state
        return final.state_details.task_run_id, final.name, final.message

    task_run_id, name, message = run_ingest()
    with get_client(sync_client=True) as client:
        run = client.read_task_run(task_run_id)
        states = [s.name for s in client.read_task_run_states(task_run_id)]
    print(json.dumps({"state": name, "run_count": run.run_count, "states": states, "message": message}), flush=True)


if __name__ == "__main__":
    args = sys.argv[3:]
    main(Path(sys.argv[1]), Path(sys.argv[2]), [v for k, v in zip(args, args[1:]) if k == "--set"])
