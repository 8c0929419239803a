"""The HTTP service's app factory: it only wires (lifespan resources, middleware, routes, error
handlers, docs)."""
from __future__ import annotations

import os
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from sassflow.settings import Settings
from serving.docs import install_openapi, mount_docs
from serving.errors import install_error_handlers
from serving.feature_reader import FeatureReader
from serving.middleware import DeclaredBodyLimit, HttpMetricsMiddleware
from serving.routes import router
from serving.schemas import RequestModels
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
        lifespan=lifespan, docs_url=None, redoc_url=None,  # /docs is served offline by serving.docs
    )
    models = RequestModels(settings)
    app.state.settings, app.state.models = settings, models
    app.include_router(router)
    mount_docs(app)
    install_openapi(app, models, settings.serving.max_body_bytes)
    install_error_handlers(app)
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=settings.serving.max_body_bytes)
    app.add_middleware(DeclaredBodyLimit, max_body_bytes=settings.serving.max_body_bytes)
    app.add_middleware(HttpMetricsMiddleware)  # outermost: sees the body limits' 413s too
    return app


# `sassflow serve --workers N`: uvicorn imports the app factory below by name in each worker process
# (spawned, never forked); the parent passes the settings as SASSFLOW_* variables and a static
# feature table (synthetic benchmarks) by path in this one.
STATIC_FEATURES_ENV = "SASSFLOW_SERVE_STATIC_FEATURES"


def create_app_from(settings: Settings, static_features: Path | None = None) -> FastAPI:
    """The app reading Feast, or a static feature table (``--static-features``: synthetic benchmarks)."""
    reader = None
    if static_features:
        from serving.feature_reader import StaticFeatureReader

        reader = StaticFeatureReader.from_file(static_features)
    return create_app(settings, feature_reader=reader)


def app_from_environment() -> FastAPI:
    """The app of one worker of a multi-process service: settings from the environment."""
    from sassflow.settings import get_settings

    table = os.environ.get(STATIC_FEATURES_ENV)
    return create_app_from(get_settings(), Path(table) if table else None)
