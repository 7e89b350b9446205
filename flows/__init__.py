"""Prefect flows: one per stage (usable alone by a deployment) and the pipeline that calls them. Wiring only.

No `from __future__ import annotations` in these modules: Prefect builds each flow's parameter model from
its annotations when a worker or runner loads the flow from its entrypoint, and string annotations of
imported types (RunSettings, RunContext) do not resolve there."""
