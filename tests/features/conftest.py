from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server on a free loopback port, once per session."""
    from cli.local.redis import LocalRedis
    from sassflow.processes import free_port

    server = LocalRedis(free_port(), tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()
