"""A two-stage pipeline that waits for a person between its stages, as the preferences stage will: with
`suspend`, it frees its process (Prefect re-executes it from the top when resumed); otherwise it pauses
in place. Served by tests/integration/test_parent_run.py."""

from prefect import flow
from prefect.flow_runs import pause_flow_run, suspend_flow_run

from flows.stages import FLOWS
from lifecycle.runtime import RunSettings
from tasks.context import pipeline_run
from tasks.graph import GRAPH


@flow(name="waits-for-people")
def waits_for_people(state_dir: str, conf_dir: str, overrides: list[str], suspend: bool) -> str:
    settings = RunSettings(overrides=overrides, state_dir=state_dir, conf_dir=conf_dir)
    with pipeline_run(settings, settings.load(), GRAPH.plan(until="validate")) as ctx:
        docs = FLOWS["ingest"](ctx=ctx)
        if suspend:
            suspend_flow_run(timeout=300)
        else:
            pause_flow_run(timeout=300, poll_interval=1)
        FLOWS["validate"](ctx=ctx, inputs={"ingest": docs})
    return ctx.parent_run_id


if __name__ == "__main__":  # a runner for the test: `python suspend_probe.py` serves the flow
    waits_for_people.serve(name="probe")
