-- Runs once, when the Postgres volume is first initialised (docker-entrypoint-initdb.d): MLflow's database
-- beside Prefect's (POSTGRES_DB), owned by the same user.
CREATE DATABASE mlflow;
