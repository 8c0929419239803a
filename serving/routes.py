"""The HTTP routes: thin functions over ``RecommendationService``, resources through ``serving.deps``,
requests parsed by ``serving.schemas``, errors raised as ``ApiError`` (one JSON shape, ``serving.errors``)."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from serving.bundle import BundleError
from serving.deps import ModelsDep, ServiceDep, call, require_admin
from serving.feature_reader import FeaturesUnavailable
from serving.schemas import (
    AdminResult, ApiError, BatchResponse, ErrorResponse, HealthResponse, ReadyResponse, RecommendResponse,
    VersionResponse, dumps, parse_batch, parse_query,
)
from serving.service import NotReady, RecommendationService

router = APIRouter()

_ERRORS = {  # status -> (when, an example body as the service returns it)
    400: ("unknown scenario, k above k_max, or more requests than the batch limit",
          {"detail": "unknown scenario 'horror'; known: ['action', 'comedy', 'drama', 'family', 'thriller']",
           "reason": "unknown_scenario"}),
    401: ("missing or wrong admin token",
          {"detail": "missing or wrong 'Authorization: Bearer <admin token>'", "reason": "unauthorized"}),
    403: ("admin endpoints are disabled (no admin token configured)",
          {"detail": "admin endpoints are disabled: set SASSFLOW_SERVING__ADMIN_TOKEN", "reason": "admin_disabled"}),
    409: ("nothing to swap to: the bundle was refused, or no earlier bundle validates",
          {"detail": "no earlier published bundle validates (current: 20261125T184202509-mv7-cd2286)",
           "reason": "no_rollback_target"}),
    413: ("the body is larger than serving.max_body_bytes (refused before it is read)",
          {"detail": "the request body is larger than 65536 bytes", "reason": "body_too_large"}),
    415: ("the body is not application/json",
          {"detail": "send the body as 'Content-Type: application/json' (UTF-8)", "reason": "unsupported_media_type"}),
    422: ("a malformed, missing or unknown parameter or field",
          {"detail": "query parameter user_id must be written with ASCII digits 0-9 only (no sign, space or "
                     "underscore), got '1_000'", "reason": "validation"}),
    503: ("no bundle loaded yet, or the feature store is unavailable (Retry-After: 1)",
          {"detail": "feature store read timed out after 6s", "reason": "features_unavailable"}),
}


def errors(*codes: int) -> dict:
    return {code: {"model": ErrorResponse, "description": _ERRORS[code][0],
                   "content": {"application/json": {"example": _ERRORS[code][1]}}} for code in codes}


async def answer(request: Request, service: RecommendationService, fields: list[dict]):
    """The recommendations of parsed requests, in order; requests asking for the same branches are
    answered together (one feature read, one tower call per scenario)."""
    groups: dict[tuple | None, list[int]] = {}
    for i, f in enumerate(fields):
        groups.setdefault(f.get("branches"), []).append(i)
    out = [None] * len(fields)
    for branches, idx in groups.items():
        triples = [(fields[i]["user_id"], fields[i]["scenario"], fields[i]["k"]) for i in idx]
        ranking = [fields[i]["ranking"] for i in idx]
        for i, rec in zip(idx, await _recommend(request, service, triples, list(branches) if branches else None,
                                                ranking)):
            out[i] = rec
    return out


async def _recommend(request: Request, service: RecommendationService, triples: list[tuple[int, str, int]],
                     branches: list[str] | None, ranking: list[bool]):
    try:
        return await call(request, service.recommend_many, triples, branches, ranking)
    except NotReady as exc:
        raise ApiError(503, "not_ready", str(exc), {"Retry-After": "1"}) from None
    except FeaturesUnavailable as exc:
        raise ApiError(503, "features_unavailable", str(exc), {"Retry-After": "1"}) from None


# /recommend is the hot path: its query is parsed by serving.schemas rather than by FastAPI's
# parameter machinery, and its JSON written directly (FastAPI skips response_model for a
# Response); together that halves the per-request CPU.  serving.docs documents the parameters.
@router.get("/recommend", response_model=RecommendResponse, summary="Top-k items for one user in one scenario",
            responses=errors(400, 422, 503))
async def recommend(request: Request, service: ServiceDep, models: ModelsDep):
    fields = parse_query(models, request.query_params.multi_items())
    (rec,) = await answer(request, service, [fields])
    return Response(dumps(rec.__dict__), media_type="application/json")


def require_json(request: Request) -> None:
    media_type, _, params = request.headers.get("content-type", "").partition(";")
    charset = params.strip().lower().removeprefix("charset=").strip('"') if params.strip() else "utf-8"
    if media_type.strip().lower() != "application/json" or charset != "utf-8":
        raise ApiError(415, "unsupported_media_type", "send the body as 'Content-Type: application/json' (UTF-8)")


@router.post("/recommend/batch", response_model=BatchResponse, summary="Many recommendations in one call",
             responses=errors(400, 413, 415, 422, 503))
async def recommend_batch(request: Request, service: ServiceDep, models: ModelsDep):
    require_json(request)
    body = await request.body()  # at most serving.max_body_bytes: the body limit refuses the rest
    recs = await answer(request, service, parse_batch(models, body))
    return Response(dumps({"results": [r.__dict__ for r in recs]}), media_type="application/json")


@router.get("/healthz", response_model=HealthResponse, summary="The process is up")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz", response_model=ReadyResponse, summary="A bundle is loaded and warmed, the feature store answers",
            responses={503: {"model": ReadyResponse, "description": "not ready; `reasons` says why"}})
async def readyz(request: Request, service: ServiceDep):
    bundle, reasons = service.bundle, []
    if bundle is None:
        reasons.append("no bundle loaded yet" + (f" ({service.pointer_problem})" if service.pointer_problem else ""))
    features_problem = await call(request, service.features.health)
    if features_problem:
        reasons.append(features_problem)
    body = ReadyResponse(ready=not reasons, bundle_id=bundle and bundle.bundle_id,
                         scenarios=sorted(bundle.catalogs) if bundle else [], reasons=reasons, refused=service.refused)
    return JSONResponse(status_code=503 if reasons else 200, content=body.model_dump())


@router.get("/version", response_model=VersionResponse, summary="Model and bundle being served",
            responses=errors(503))
async def version(service: ServiceDep):
    bundle = service.bundle
    if bundle is None:
        raise ApiError(503, "not_ready", "no bundle loaded yet")
    m = bundle.manifest
    return {
        "bundle_id": bundle.bundle_id, "model_version": str(bundle.model_version), "kind": m["kind"],
        "created_at": m["created_at"], "dim": m["dim"],
        "scenarios": {s: {"count": v["count"], "index": v["index"]} for s, v in m["scenarios"].items()},
        "previous_bundle_id": service.previous_bundle_id, "refused": service.refused,
        "pointer_problem": service.pointer_problem,
    }


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"description": "Prometheus text exposition format",
                             "content": {"text/plain; version=0.0.4": {"schema": {"type": "string"}}}}})
async def metrics(service: ServiceDep):
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(service.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.post("/admin/reload", dependencies=[Depends(require_admin)], response_model=AdminResult,
             summary="Swap to the bundle CURRENT names now (even one refused before)", responses=errors(401, 403, 409))
async def admin_reload(service: ServiceDep):
    result = await run_in_threadpool(service.reload)
    if result["status"] == "no_bundle_published":
        raise ApiError(409, "no_bundle_published", "no bundle has been published yet")
    if result["status"] == "refused":
        raise ApiError(409, "bundle_refused", result["reason"])
    return result


@router.post("/admin/rollback", dependencies=[Depends(require_admin)], response_model=AdminResult,
             summary="Move CURRENT back to the newest earlier bundle that validates, and serve it",
             description="The same rollback as `sassflow bundle rollback`: the shared pointer moves (every "
                         "service follows); this service swaps at once.", responses=errors(401, 403, 409))
async def admin_rollback(service: ServiceDep):
    try:
        return await run_in_threadpool(service.rollback)
    except BundleError as exc:
        raise ApiError(409, "no_rollback_target", str(exc)) from None
