"""ASGI middleware of the service: every HTTP request counted by endpoint and status, and request
bodies bounded before they are read.

The body limit (``serving.max_body_bytes``) has two parts: ``DeclaredBodyLimit`` answers a request
whose Content-Length is over the limit with the API's 413 before anything is read; Starlette's
``RequestBodyLimitMiddleware`` (wired in ``serving.app``) counts the bytes of a body without a
Content-Length (chunked) while the route reads it and stops at the limit.
"""
from __future__ import annotations

import time

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.routing import Match
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
                service.metrics.observe_http(_endpoint(scope), scope["method"], status, time.perf_counter() - start)


def _endpoint(scope: Scope) -> str:
    route = scope.get("route")
    if route is None:  # answered before routing (e.g. by the body limit): the route it was meant for
        route = next((r for r in scope["app"].routes if r.matches(scope)[0] != Match.NONE), None)
    return getattr(route, "path", None) or "unmatched"


class DeclaredBodyLimit:
    """413 for a declared Content-Length over ``max_body_bytes``, before the body is read."""

    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            declared = Headers(scope=scope).get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_body_bytes:
                service = getattr(scope["app"].state, "service", None)
                if service is not None:
                    service.metrics.bad_requests.labels("body_too_large").inc()
                response = JSONResponse(status_code=413, headers={"Connection": "close"}, content={
                    "detail": f"the request body is larger than {self.max_body_bytes} bytes", "reason": "body_too_large"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
