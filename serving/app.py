"""The HTTP service's app factory: it only wires (lifespan resources, routes, error handlers)."""
from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from sassflow.settings import Settings
from serving.feature_reader import FeatureReader
from serving.routes import recommend_parameters, router
from serving.service import RecommendationService
from serving.watcher import BundleWatcher


def create_app(settings: Settings, feature_reader: FeatureReader | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        reader = feature_reader
        if reader is None:
            from serving.feature_reader import FeastFeatureReader

            reader = FeastFeatureReader(settings)
        service = RecommendationService(settings, reader)
        # The first tick loads the published bundle; until then /readyz says 503 and /healthz 200.
        watcher = BundleWatcher(service, settings.serving.watch_interval_s).start()
        catalogue = None
        if settings.serving.catalog_consumer:
            from serving.content import CatalogueConsumer

            catalogue = CatalogueConsumer(settings, service.catalogue).start()
        app.state.service = service
        app.state.blocking = getattr(reader, "blocking", True)
        yield
        watcher.stop()
        if catalogue is not None:
            catalogue.stop()

    app = FastAPI(
        title="sassflow recall service",
        version="0.1.0",
        description="Per-scenario candidate retrieval from SASS user/item towers and FAISS indexes.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.include_router(router)
    for route in app.routes:
        if getattr(route, "path", None) == "/recommend":
            route.openapi_extra = {"parameters": recommend_parameters(settings)}
    app.add_exception_handler(RequestValidationError, validation_error)
    return app


async def validation_error(request: Request, exc: RequestValidationError):
    request.app.state.service.metrics.bad_requests.labels("validation").inc()
    messages = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": "; ".join(messages),
                                                  "errors": jsonable_encoder(exc.errors())})
