"""Serving: an OpenAI-shaped chat API and a chat page over `NAME@champion` (and `@challenger`, for side-by-side
comparisons) with the RAG index each version was paired with; every completion is an MLflow trace, a moved
alias is loaded and swapped in without a restart, and the page's feedback lands in the preference store.

    lifecycle serve [--host 127.0.0.1] [--port 8000] [--model NAME@ALIAS|NAME/VERSION] [--no-reload]

models.py (what is served, reloads), generation.py (prompt + streamed generation), tracing.py (MLflow
spans), api.py (OpenAI shapes), app.py (routes, auth), cli.py (the command).
"""
