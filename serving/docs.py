"""The API's documentation: the OpenAPI document and ``/docs`` (Swagger UI), working offline.

Swagger UI's files are served by the service itself from the ``swagger-ui-bundle-v2`` package
(FastAPI's "self-hosting JavaScript and CSS for docs" recipe), so ``/docs`` needs no CDN.

The OpenAPI document is FastAPI's, completed from the same models the requests are validated
with (``serving.schemas.RequestModels``): the /recommend query parameters and the batch body carry
their real limits (scenario list, k range, batch size, body size) and examples that succeed when
submitted; every error is ``ErrorResponse``; the admin endpoints declare the bearer scheme.
"""
from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles

from serving.schemas import RequestModels

ASSETS = "/docs/assets"


def mount_docs(app: FastAPI) -> None:
    """``/docs`` with Swagger UI's assets under ``/docs/assets`` (no external URL in the page)."""
    from swagger_ui_bundle import swagger_ui_path

    app.mount(ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(
            openapi_url=app.openapi_url, title=f"{app.title} - docs",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js", swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from swagger.io
        )


def _query_parameters(models: RequestModels) -> list[dict]:
    schema = models.entry.model_json_schema()
    required, example = set(schema.get("required", [])), models.example_query()
    params = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        description = prop.pop("description", "")
        examples = prop.pop("examples", None) or [None]
        if prop.get("type") == "integer":
            description += " (written with ASCII digits only: no sign, space or underscore)"
        params.append({"name": name, "in": "query", "required": name in required, "description": description,
                       "schema": prop, "example": example.get(name, examples[0])})
    return params


def _batch_body(models: RequestModels, max_body_bytes: int) -> tuple[dict, dict]:
    """The request body's description, and the schemas it refers to."""
    schema = models.batch.model_json_schema(ref_template="#/components/schemas/{model}")
    return {
        "required": True,
        "description": f"At most {models.batch_max} requests and {max_body_bytes} bytes "
                       "(a larger body is refused with 413 before it is read). Ids are JSON integers.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BatchRequest"},
                                         "example": models.example_batch()}},
    }, dict(schema.pop("$defs", {})) | {"BatchRequest": schema}


def openapi_document(app: FastAPI, models: RequestModels, max_body_bytes: int) -> dict:
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    paths = doc["paths"]
    paths["/recommend"]["get"]["parameters"] = _query_parameters(models)
    body, schemas = _batch_body(models, max_body_bytes)
    paths["/recommend/batch"]["post"]["requestBody"] = body
    doc.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
    return doc


def install_openapi(app: FastAPI, models: RequestModels, max_body_bytes: int) -> None:
    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_document(app, models, max_body_bytes)
        return app.openapi_schema

    app.openapi = openapi
