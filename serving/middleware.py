"""ASGI middleware of the service: every HTTP request counted by endpoint and status.

The body-size limit is Starlette's ``RequestBodyLimitMiddleware`` (wired in ``serving.app``): a body
whose Content-Length is over ``serving.max_body_bytes`` is refused with 413 before any of it is
read, and a chunked one as soon as the bytes received pass the limit.
"""
from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HttpMetricsMiddleware:
    """``sassflow_http_requests_total{endpoint,method,status}`` and the request duration by
    endpoint.  The endpoint is the matched route's template (``/recommend``), never the raw path,
    so random paths cannot blow up the label set; a path no route matches is ``unmatched``."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the server answers when the app raises before starting a response

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            service = getattr(scope["app"].state, "service", None)
            if service is not None:
                route = scope.get("route")
                endpoint = getattr(route, "path", None) or "unmatched"
                service.metrics.observe_http(endpoint, scope["method"], status, time.perf_counter() - start)
