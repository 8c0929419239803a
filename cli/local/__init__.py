"""Local services for development, tests and benchmarks: the Kafka broker, Redis, PostgreSQL, Airflow,
and the HTTP service in a child process."""
