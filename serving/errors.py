"""How every error leaves the service: one JSON shape (``schemas.ErrorResponse``), a reason code
counted in ``sassflow_bad_requests_total`` for 4xx, no echo of the input, and no traceback of
input-sized text in the log."""
from __future__ import annotations

import logging
import traceback

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from serving.schemas import ApiError

log = logging.getLogger("sassflow.serving")

# Starlette/FastAPI raise these themselves (routing, the body limit, auth schemes).
_REASON_OF_STATUS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                     405: "method_not_allowed", 409: "conflict", 413: "body_too_large",
                     415: "unsupported_media_type", 422: "validation", 503: "unavailable"}


def error_response(request: Request, status: int, reason: str, detail: str, headers: dict | None = None):
    if 400 <= status < 500:
        service = getattr(request.app.state, "service", None)
        if service is not None:
            service.metrics.bad_requests.labels(reason).inc()
    return JSONResponse(status_code=status, content={"detail": detail[:1000], "reason": reason}, headers=headers)


async def api_error(request: Request, exc: ApiError):
    return error_response(request, exc.status, exc.reason, exc.detail, exc.headers)


async def http_error(request: Request, exc: HTTPException):
    reason = _REASON_OF_STATUS.get(exc.status_code, "error")
    detail = exc.detail if isinstance(exc.detail, str) else reason
    if exc.status_code == 413:
        detail = f"the request body is larger than {request.app.state.settings.serving.max_body_bytes} bytes"
    return error_response(request, exc.status_code, reason, detail, getattr(exc, "headers", None))


async def validation_error(request: Request, exc: RequestValidationError):
    # No route lets FastAPI validate input (they parse with serving.schemas); kept for safety.
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))[:80]
    return error_response(request, 422, "validation", f"{where}: {str(first.get('msg', 'invalid'))[:200]}")


async def unexpected_error(request: Request, exc: Exception):
    """A bug, not bad input: 500, logged once with a short message and the stack (no input)."""
    tb = "".join(traceback.format_tb(exc.__traceback__))
    log.error("unhandled %s on %s %s: %s\n%s", type(exc).__name__, request.method, request.url.path[:100],
              str(exc)[:200], tb)
    return JSONResponse(status_code=500, content={"detail": "internal error", "reason": "internal"})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected_error)
