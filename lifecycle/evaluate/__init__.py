"""Evaluation metrics (text similarity now; the report card and promotion gate later)."""
