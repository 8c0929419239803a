"""What routes receive through FastAPI dependencies: the service, the settings, the request
models, admin auth."""
from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from sassflow.settings import Settings
from serving.schemas import ApiError, RequestModels
from serving.service import RecommendationService


# async on purpose: FastAPI runs a sync dependency in the thread pool, a thread hop per request
# per dependency on the hot path
async def get_service(request: Request) -> RecommendationService:
    return request.app.state.service


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_models(request: Request) -> RequestModels:
    return request.app.state.models


ServiceDep = Annotated[RecommendationService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ModelsDep = Annotated[RequestModels, Depends(get_models)]


async def call(request: Request, fn, *args):
    """Run ``fn`` in the thread pool when the feature reader does I/O (Feast), inline when it is in
    memory (saves a thread hop per request)."""
    if request.app.state.blocking:
        return await run_in_threadpool(fn, *args)
    return fn(*args)


admin_bearer = HTTPBearer(auto_error=False, scheme_name="AdminToken",
                          description="`Authorization: Bearer <SASSFLOW_SERVING__ADMIN_TOKEN>`")


def require_admin(settings: SettingsDep,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(admin_bearer)]) -> None:
    token = settings.serving.admin_token
    if token is None:
        raise ApiError(403, "admin_disabled", "admin endpoints are disabled: set SASSFLOW_SERVING__ADMIN_TOKEN")
    given = credentials.credentials.encode() if credentials is not None else b""
    if not hmac.compare_digest(given, token.get_secret_value().encode()):
        raise ApiError(401, "unauthorized", "missing or wrong 'Authorization: Bearer <admin token>'",
                       headers={"WWW-Authenticate": "Bearer"})
