"""Streaming: the ingest consumers (Kafka -> per-scenario features in the online store + the
offline history), the pure aggregation they share with the batch replay, event sources and the
producer."""
