"""The Feast feature repo of sassflow: definitions, store configuration, CLI."""
