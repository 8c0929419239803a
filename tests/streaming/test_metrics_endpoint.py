"""The consumers' Prometheus endpoint: a port another process holds costs the endpoint, not the stage."""
from __future__ import annotations

import logging
import socket

from streaming import metrics


def test_a_busy_metrics_port_is_logged_and_the_stage_goes_on(caplog):
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    port = held.getsockname()[1]
    try:
        with caplog.at_level(logging.WARNING, logger="sassflow.ingest"):
            metrics.serve(port)  # would raise OSError (address in use) and kill the consumer
        assert any(f"127.0.0.1:{port}" in r.getMessage() for r in caplog.records)
    finally:
        held.close()
