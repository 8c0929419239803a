"""What routes receive through FastAPI dependencies: the service, the settings, admin auth."""
from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from sassflow.settings import Settings
from serving.service import RecommendationService


def get_service(request: Request) -> RecommendationService:
    return request.app.state.service


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


ServiceDep = Annotated[RecommendationService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def call(request: Request, fn, *args):
    """Run ``fn`` in the thread pool when the feature reader does I/O (Feast), inline when it is in
    memory (saves a thread hop per request)."""
    if request.app.state.blocking:
        return await run_in_threadpool(fn, *args)
    return fn(*args)


def require_admin(settings: SettingsDep, authorization: str | None = Header(None)) -> None:
    token = settings.serving.admin_token
    if token is None:
        raise HTTPException(403, "admin endpoints are disabled: set SASSFLOW_SERVING__ADMIN_TOKEN")
    expected = f"Bearer {token.get_secret_value()}"
    if not authorization or not hmac.compare_digest(authorization.encode(), expected.encode()):
        raise HTTPException(401, "missing or wrong 'Authorization: Bearer <admin token>'")
