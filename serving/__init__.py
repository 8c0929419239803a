"""Serving: immutable per-scenario bundles, the request pipeline (features -> recall sources ->
top k), the HTTP API (app factory, routes, dependencies) and zero-downtime hot swap."""
