"""The subcommands of `sassflow`, one module per part; each has ``register(commands, benches)``."""
