-- Runs once, when the PostgreSQL volume is new: the Optuna studies get their own database
-- beside MLflow's (POSTGRES_DB). Both create tables named alembic_version: they cannot share one.
CREATE DATABASE optuna;
