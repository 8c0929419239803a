from tests.features.conftest import redis_server  # noqa: F401 -- the same session fixture
