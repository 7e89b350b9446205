"""Monitoring of served traffic: the last window of requests `lifecycle serve` answered (its MLflow traces)
against the questions the served model was trained and evaluated on (window.py, reference.py); drift figures
and per-version feedback with their thresholds (drift.py); the Evidently report and the markdown summary
(report.py). tasks/monitoring.py runs them as the `monitor` flow and emits the Prefect events."""
