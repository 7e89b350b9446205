-- MLflow gets its own database next to Prefect's.
CREATE DATABASE mlflow;
