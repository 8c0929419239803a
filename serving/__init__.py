"""Serving: per-scenario FAISS bundles, the retrieval HTTP API, and zero-downtime hot swap."""
