"""--until / --from planning over the stage DAG."""

import pytest

from lifecycle.errors import ConfigError
from lifecycle.stages import STAGES, plan_stages


def test_until_runs_the_stage_and_its_ancestors_only() -> None:
    plan = plan_stages(until="validate")
    assert plan.run == ("ingest", "validate")
    assert plan.reuse == () and plan.force == ()


def test_full_plan_is_every_stage_in_order() -> None:
    assert plan_stages().run == tuple(STAGES)


def test_from_reuses_ancestors_and_forces_dependants() -> None:
    plan = plan_stages(until="tokenize", from_stage="validate")
    assert plan.reuse == ("ingest",)
    assert plan.force == ("validate", "tokenize")  # tokenize runs only behind the validation gate
    plan = plan_stages(until="tokenize", from_stage="tokenize")
    assert plan.reuse == ("ingest", "validate") and plan.force == ("tokenize",)


def test_bad_stage_names_are_errors() -> None:
    with pytest.raises(ConfigError, match="unknown stage"):
        plan_stages(until="nope")
    with pytest.raises(ConfigError, match="comes after"):
        plan_stages(until="ingest", from_stage="tokenize")
