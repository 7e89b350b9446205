"""Prefect tasks: thin wrappers that open each stage's MLflow child run and call the library."""
