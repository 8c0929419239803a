"""The Feast internals sassflow uses for speed, behind one adapter, for the pinned Feast version.

The online write/read path calls the provider directly (``FeatureStore.write_to_online_store``
and ``get_online_features`` build DataFrames/Arrow tables per call), and the Redis row writer
reproduces Feast's Redis layout with Feast's own key helpers.  These names are private to Feast:
``check_pinned_feast`` (run by ``tests/features``) fails loudly when an upgrade moves or changes
them, before anything writes a row in a layout Feast would no longer read.
"""
from __future__ import annotations

import importlib.metadata

PINNED = "0.67."  # the Feast release line this adapter was written against (pyproject.toml pins it)


def provider(store):
    """The store's provider: ``online_write_batch`` / ``online_read`` without the DataFrame round trip."""
    return store._get_provider()


def field_hash(view_name: str, feature: str) -> bytes:
    """The Redis hash field of a feature: ``_mmh3("<view>:<feature>")`` (feast.infra.online_stores.helpers)."""
    from feast.infra.online_stores.helpers import _mmh3

    return _mmh3(f"{view_name}:{feature}")


def redis_view_name(view, config) -> str:
    """The (possibly versioned) view name Feast's Redis store uses in its keys."""
    from feast.infra.online_stores.redis import _versioned_fv_name

    return _versioned_fv_name(view, config)


def redis_client(online_store, online_config):
    """The redis-py client Feast's Redis online store holds (one connection pool per process)."""
    return online_store._get_client(online_config)


def check_pinned_feast() -> list[str]:
    """Problems with the installed Feast for this adapter (empty when all is in place)."""
    problems = []
    version = importlib.metadata.version("feast")
    if not version.startswith(PINNED):
        problems.append(f"feast {version} is installed; features/feast_internals.py was written for {PINNED}x")
    checks = [("feast.feature_store", "FeatureStore", "_get_provider"),
              ("feast.infra.online_stores.helpers", None, "_mmh3"),
              ("feast.infra.online_stores.redis", None, "_versioned_fv_name"),
              ("feast.infra.online_stores.redis", "RedisOnlineStore", "_get_client"),
              ("feast.infra.online_stores.redis", "RedisOnlineStore", "_parse_connection_string"),
              ("feast.infra.key_encoding_utils", None, "serialize_entity_key")]
    for module, cls, name in checks:
        try:
            owner = importlib.import_module(module)
            owner = getattr(owner, cls) if cls else owner
            if not callable(getattr(owner, name)):
                problems.append(f"{module}.{cls + '.' if cls else ''}{name} is not callable")
        except (ImportError, AttributeError) as exc:
            problems.append(f"{module}.{cls + '.' if cls else ''}{name}: {exc}")
    return problems


def redis_from_connection_string(connection_string: str):
    """A redis-py client for a connection string in Feast's format (``host:port,password=...,ssl=true``),
    parsed by Feast's own parser so the recall store and the online store read one setting alike."""
    from feast.infra.online_stores.redis import RedisOnlineStore
    from redis import Redis

    nodes, kwargs = RedisOnlineStore._parse_connection_string(connection_string)
    return Redis(host=nodes[0]["host"], port=int(nodes[0]["port"]), **kwargs)
