"""The Feast feature repo: definitions derived from the feature contract, the store built from
settings (SQLite embedded, Redis in production), the online row writer/reader, and the Feast
internals it relies on behind one adapter."""
