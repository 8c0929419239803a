"""The HTTP service: FastAPI app factory, lifespan, thin routes over ``RecommendationService``."""
from __future__ import annotations

import hmac
import json
import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from sassflow.settings import Settings
from serving.bundle import BundleError
from serving.feature_reader import FeatureReader
from serving.service import NotReady, RecommendationService
from serving.watcher import BundleWatcher

log = logging.getLogger("sassflow.serving")
MAX_ID = 2**63 - 1
DEFAULT_K = 20


class RecommendResponse(BaseModel):
    user_id: int
    scenario: str
    items: list[int] = Field(description="raw item ids, best first; items the user just clicked are left out")
    scores: list[float] = Field(description="inner products (personal) or popularity rank scores (fallback)")
    fallback: bool = Field(description="true when the user had no usable history: the scenario's popular items")
    model_version: str
    bundle_id: str


class RecommendRequest(BaseModel):
    user_id: int = Field(ge=0, le=MAX_ID)
    scenario: str
    k: int = Field(DEFAULT_K, ge=1)


class BatchRequest(BaseModel):
    requests: list[RecommendRequest] = Field(min_length=1)


class BatchResponse(BaseModel):
    results: list[RecommendResponse]


def create_app(settings: Settings, feature_reader: FeatureReader | None = None) -> FastAPI:
    sv = settings.serving
    scenarios = set(settings.scenarios)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        reader = feature_reader
        if reader is None:
            from serving.feature_reader import FeastFeatureReader

            reader = FeastFeatureReader(settings)
        service = RecommendationService(settings, reader)
        # The first tick loads the published bundle; until then /readyz says 503 and /healthz 200.
        watcher = BundleWatcher(service, sv.watch_interval_s).start()
        app.state.service = service
        # A reader that does I/O (Feast) runs in the thread pool; an in-memory one inline,
        # which saves a thread hop per request.
        app.state.blocking = getattr(reader, "blocking", True)
        yield
        watcher.stop()

    app = FastAPI(
        title="sassflow recall service",
        version="0.1.0",
        description="Per-scenario candidate retrieval from SASS user/item towers and FAISS indexes.",
        lifespan=lifespan,
    )

    def service_of(request: Request) -> RecommendationService:
        return request.app.state.service

    async def run(request: Request, fn, *args):
        if request.app.state.blocking:
            return await run_in_threadpool(fn, *args)
        return fn(*args)

    def bad_request(service: RecommendationService, reason: str, message: str, status: int = 400):
        service.metrics.bad_requests.labels(reason).inc()
        raise HTTPException(status_code=status, detail=message)

    def check(service: RecommendationService, scenario: str, k: int) -> None:
        if scenario not in scenarios:
            bad_request(service, "unknown_scenario", f"unknown scenario {scenario!r}; known: {sorted(scenarios)}")
        if not 1 <= k <= sv.k_max:
            bad_request(service, "k_out_of_range", f"k must be between 1 and {sv.k_max}, got {k}")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        service_of(request).metrics.bad_requests.labels("validation").inc()
        messages = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": "; ".join(messages),
                                                      "errors": jsonable_encoder(exc.errors())})

    async def answer(request: Request, triples: list[tuple[int, str, int]]):
        service = service_of(request)
        try:
            return await run(request, service.recommend_many, triples)
        except NotReady as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from None

    # /recommend is the hot path: its query is parsed here rather than by FastAPI's parameter
    # machinery, and its JSON written directly (FastAPI skips response_model for a Response).
    # Together that halves the per-request CPU; the OpenAPI schema still documents both.
    recommend_params = [
        {"name": "user_id", "in": "query", "required": True, "description": "raw user id",
         "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID}},
        {"name": "scenario", "in": "query", "required": True, "description": "one of the configured scenarios",
         "schema": {"type": "string", "enum": settings.scenarios}},
        {"name": "k", "in": "query", "required": False, "description": "number of items",
         "schema": {"type": "integer", "minimum": 1, "maximum": sv.k_max, "default": DEFAULT_K}},
    ]

    def parse_int(service, query, name: str, default: int | None, low: int, high: int) -> int:
        raw = query.get(name)
        if raw is None:
            if default is None:
                bad_request(service, "validation", f"query parameter {name} is required", 422)
            return default
        try:
            value = int(raw)
        except ValueError:
            bad_request(service, "validation", f"query parameter {name} must be an integer, got {raw[:40]!r}", 422)
        if not low <= value <= high:
            reason, status = ("k_out_of_range", 400) if name == "k" else ("validation", 422)
            bad_request(service, reason, f"{name} must be between {low} and {high}, got {value}", status)
        return value

    @app.get("/recommend", response_model=RecommendResponse, summary="Top-k items for one user in one scenario",
             openapi_extra={"parameters": recommend_params},
             responses={400: {"description": "unknown scenario or k out of range"},
                        422: {"description": "malformed or missing parameter"},
                        503: {"description": "no bundle loaded yet"}})
    async def recommend(request: Request):
        service = service_of(request)
        query = request.query_params
        user_id = parse_int(service, query, "user_id", None, 0, MAX_ID)
        k = parse_int(service, query, "k", DEFAULT_K, 1, sv.k_max)
        scenario = query.get("scenario")
        if scenario is None:
            bad_request(service, "validation", "query parameter scenario is required", 422)
        check(service, scenario, k)
        (rec,) = await answer(request, [(user_id, scenario, k)])
        return Response(json.dumps(rec.__dict__).encode(), media_type="application/json")

    @app.post("/recommend/batch", response_model=BatchResponse, summary="Many recommendations in one call")
    async def recommend_batch(request: Request, body: BatchRequest):
        service = service_of(request)
        if len(body.requests) > sv.batch_max_requests:
            bad_request(service, "batch_too_large", f"at most {sv.batch_max_requests} requests per batch")
        for r in body.requests:
            check(service, r.scenario, r.k)
        recs = await answer(request, [(r.user_id, r.scenario, r.k) for r in body.requests])
        return {"results": [r.__dict__ for r in recs]}

    @app.get("/healthz", summary="The process is up")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="Every scenario is loaded and warmed")
    async def readyz(request: Request):
        service = service_of(request)
        bundle = service.bundle
        if bundle is None:
            return JSONResponse(status_code=503, content={"ready": False, "refused": service.refused})
        return {"ready": True, "bundle_id": bundle.bundle_id, "scenarios": sorted(bundle.catalogs)}

    @app.get("/version", summary="Model and bundle being served")
    async def version(request: Request):
        service = service_of(request)
        bundle = service.bundle
        if bundle is None:
            raise HTTPException(status_code=503, detail="no bundle loaded yet")
        m = bundle.manifest
        return {
            "bundle_id": bundle.bundle_id, "model_version": str(bundle.model_version), "kind": m["kind"],
            "created_at": m["created_at"], "dim": m["dim"],
            "scenarios": {s: {"count": v["count"], "index": v["index"]} for s, v in m["scenarios"].items()},
            "previous_bundle_id": service.previous_bundle_id, "refused": service.refused,
        }

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics(request: Request):
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(service_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def admin(request: Request, authorization: str | None = Header(None)) -> None:
        if sv.admin_token is None:
            raise HTTPException(403, "admin endpoints are disabled: set SASSFLOW_SERVING__ADMIN_TOKEN")
        expected = f"Bearer {sv.admin_token.get_secret_value()}"
        if not authorization or not hmac.compare_digest(authorization.encode(), expected.encode()):
            raise HTTPException(401, "missing or wrong 'Authorization: Bearer <admin token>'")

    @app.post("/admin/reload", dependencies=[Depends(admin)], summary="Swap to the published bundle now")
    async def admin_reload(request: Request):
        return await run_in_threadpool(service_of(request).reload)

    @app.post("/admin/rollback", dependencies=[Depends(admin)], summary="Serve the previous good bundle")
    async def admin_rollback(request: Request):
        try:
            return await run_in_threadpool(service_of(request).rollback)
        except BundleError as exc:
            raise HTTPException(409, str(exc)) from None

    return app
