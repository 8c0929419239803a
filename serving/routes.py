"""The HTTP routes: thin functions over ``RecommendationService``, resources through ``serving.deps``."""
from __future__ import annotations

import json

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from sassflow.contracts.recall import BRANCHES
from serving.bundle import BundleError
from serving.deps import ServiceDep, SettingsDep, call, require_admin
from serving.schemas import DEFAULT_K, MAX_ID, BatchRequest, BatchResponse, RecommendResponse
from serving.service import NotReady, RecommendationService

router = APIRouter()


def bad_request(service: RecommendationService, reason: str, message: str, status: int = 400):
    service.metrics.bad_requests.labels(reason).inc()
    raise HTTPException(status_code=status, detail=message)


def check(service: RecommendationService, settings, scenario: str, k: int) -> None:
    if scenario not in settings.scenarios:
        bad_request(service, "unknown_scenario", f"unknown scenario {scenario!r}; known: {sorted(settings.scenarios)}")
    if not 1 <= k <= settings.serving.k_max:
        bad_request(service, "k_out_of_range", f"k must be between 1 and {settings.serving.k_max}, got {k}")


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


def parse_branches(service, query) -> list[str] | None:
    """``branches=sass,i2i``: the recall branches to run (default: settings.recall.branches)."""
    raw = query.get("branches")
    if raw is None:
        return None
    names = [b for b in raw.split(",") if b]
    unknown = [b for b in names if b not in BRANCHES]
    if unknown or not names:
        bad_request(service, "validation", f"query parameter branches must name some of {list(BRANCHES)}, "
                                           f"got {raw[:80]!r}", 422)
    return names


async def answer(request: Request, service: RecommendationService, triples: list[tuple[int, str, int]],
                 branches: list[str] | None = None):
    try:
        return await call(request, service.recommend_many, triples, branches)
    except NotReady as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from None


# /recommend is the hot path: its query is parsed here rather than by FastAPI's parameter machinery,
# and its JSON written directly (FastAPI skips response_model for a Response); together that halves
# the per-request CPU.  The app factory documents the parameters (``recommend_parameters``).
@router.get("/recommend", response_model=RecommendResponse, summary="Top-k items for one user in one scenario",
            responses={400: {"description": "unknown scenario or k out of range"},
                       422: {"description": "malformed or missing parameter"},
                       503: {"description": "no bundle loaded yet"}})
async def recommend(request: Request, service: ServiceDep, settings: SettingsDep):
    query = request.query_params
    user_id = parse_int(service, query, "user_id", None, 0, MAX_ID)
    k = parse_int(service, query, "k", DEFAULT_K, 1, settings.serving.k_max)
    scenario = query.get("scenario")
    if scenario is None:
        bad_request(service, "validation", "query parameter scenario is required", 422)
    check(service, settings, scenario, k)
    branches = parse_branches(service, query)
    (rec,) = await answer(request, service, [(user_id, scenario, k)], branches)
    return Response(json.dumps(rec.__dict__).encode(), media_type="application/json")


def recommend_parameters(settings) -> list[dict]:
    """The OpenAPI description of /recommend's query (parsed by hand, see above)."""
    return [
        {"name": "user_id", "in": "query", "required": True, "description": "raw user id",
         "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID}},
        {"name": "scenario", "in": "query", "required": True, "description": "one of the configured scenarios",
         "schema": {"type": "string", "enum": settings.scenarios}},
        {"name": "k", "in": "query", "required": False, "description": "number of items",
         "schema": {"type": "integer", "minimum": 1, "maximum": settings.serving.k_max, "default": DEFAULT_K}},
        {"name": "branches", "in": "query", "required": False,
         "description": f"comma-separated recall branches to merge, of {list(BRANCHES)} "
                        f"(default: {','.join(settings.recall.branches)})", "schema": {"type": "string"}},
    ]


@router.post("/recommend/batch", response_model=BatchResponse, summary="Many recommendations in one call")
async def recommend_batch(request: Request, body: BatchRequest, service: ServiceDep, settings: SettingsDep):
    if len(body.requests) > settings.serving.batch_max_requests:
        bad_request(service, "batch_too_large", f"at most {settings.serving.batch_max_requests} requests per batch")
    for r in body.requests:
        check(service, settings, r.scenario, r.k)
    recs = await answer(request, service, [(r.user_id, r.scenario, r.k) for r in body.requests])
    return {"results": [r.__dict__ for r in recs]}


@router.get("/healthz", summary="The process is up")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz", summary="Every scenario is loaded and warmed")
async def readyz(service: ServiceDep):
    bundle = service.bundle
    if bundle is None:
        return JSONResponse(status_code=503, content={"ready": False, "refused": service.refused})
    return {"ready": True, "bundle_id": bundle.bundle_id, "scenarios": sorted(bundle.catalogs)}


@router.get("/version", summary="Model and bundle being served")
async def version(service: ServiceDep):
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


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(service: ServiceDep):
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.post("/admin/reload", dependencies=[Depends(require_admin)], summary="Swap to the published bundle now")
async def admin_reload(service: ServiceDep):
    return await run_in_threadpool(service.reload)


@router.post("/admin/rollback", dependencies=[Depends(require_admin)], summary="Serve the previous good bundle")
async def admin_rollback(service: ServiceDep):
    try:
        return await run_in_threadpool(service.rollback)
    except BundleError as exc:
        raise HTTPException(409, str(exc)) from None
