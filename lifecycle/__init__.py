"""llm-lifecycle: the library behind the Prefect flows (importable without a Prefect server)."""

__version__ = "0.1.0"
