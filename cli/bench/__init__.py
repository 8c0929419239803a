"""The benchmarks (`sassflow bench ...`); each prints one JSON object last (BENCHMARKS.md keys)."""
