"""The top layer: the `sassflow` command, the demo, the local services (Kafka, Redis, PostgreSQL,
Airflow, the HTTP service in a child process) and the benchmarks.  It imports the product packages;
nothing imports it (import-linter's "layers" contract in pyproject.toml)."""
