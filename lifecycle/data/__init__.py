"""Data stages: reading sources, clean-up and de-duplication (ingest), and validation."""
