"""Serves the preferences stage's flow as a deployment (a runner, like a worker), so a flow run of it can
suspend while people vote and be re-executed when resumed. Used by tests/integration/test_preferences_flow.py:
`python tests/integration/preferences_runner.py`."""

from flows.stages import FLOWS

if __name__ == "__main__":
    FLOWS["preferences"].serve(name="probe")
