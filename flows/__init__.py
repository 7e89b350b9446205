"""Prefect flows: one per stage (usable alone by a deployment) and the pipeline that calls them. Wiring only."""
