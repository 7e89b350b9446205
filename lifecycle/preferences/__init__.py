"""Human preferences: the store (SQLAlchemy, Alembic), assignment, the annotation app (FastAPI),
agreement statistics, importers of public formats, the simulated judge and the exported TRL-format set."""
