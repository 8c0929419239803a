"""The API's documentation is true: its examples succeed when submitted, its limits and error shape
are the ones the service applies, and /docs renders offline in a real (headless) browser."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli.local.browser import rendered_dom, screenshot
from serving.schemas import ErrorResponse, ReadyResponse, RecommendResponse, VersionResponse
from tests.serving.conftest import admin_headers

SCENARIOS = ["family", "thriller", "action", "comedy", "drama"]


@pytest.fixture(scope="module")
def openapi(server):
    import httpx

    return httpx.get(server.url + "/openapi.json").json()


def test_every_example_succeeds_when_submitted(client, openapi):
    get = openapi["paths"]["/recommend"]["get"]
    query = {p["name"]: p["example"] for p in get["parameters"]}
    r = client.get("/recommend", params=query)
    assert r.status_code == 200, r.text
    RecommendResponse.model_validate(r.json())
    body = openapi["paths"]["/recommend/batch"]["post"]["requestBody"]["content"]["application/json"]["example"]
    r = client.post("/recommend/batch", json=body)
    assert r.status_code == 200 and len(r.json()["results"]) == len(body["requests"]), r.text
    for path in ("/healthz", "/readyz", "/version", "/metrics"):
        assert client.get(path).status_code == 200, path
    assert client.post("/admin/reload", headers=admin_headers()).status_code == 200


def test_the_documented_limits_are_the_applied_ones(client, openapi):
    schemas = openapi["components"]["schemas"]
    batch, entry = schemas["BatchRequest"], schemas["RecommendRequest"]
    assert batch["properties"]["requests"]["maxItems"] == 256 and batch["properties"]["requests"]["minItems"] == 1
    assert entry["properties"]["scenario"]["enum"] == SCENARIOS
    assert entry["properties"]["k"]["maximum"] == 500 and entry["properties"]["k"]["minimum"] == 1
    assert entry["properties"]["user_id"]["maximum"] == 2**63 - 1 and entry["additionalProperties"] is False
    assert "65536 bytes" in openapi["paths"]["/recommend/batch"]["post"]["requestBody"]["description"]
    params = {p["name"]: p for p in openapi["paths"]["/recommend"]["get"]["parameters"]}
    assert params["scenario"]["schema"]["enum"] == SCENARIOS and params["k"]["schema"]["maximum"] == 500
    assert "ASCII digits only" in params["user_id"]["description"]
    # and the service applies exactly those
    assert client.post("/recommend/batch", json={"requests": [{"user_id": 1, "scenario": "drama"}] * 257}).status_code == 400
    assert client.post("/recommend/batch", json={"requests": [{"user_id": 1, "scenario": "drama"}] * 256}).status_code == 200
    assert client.get("/recommend", params={"user_id": 1, "scenario": "drama", "k": 500}).status_code == 200
    assert client.get("/recommend", params={"user_id": 1, "scenario": "drama", "k": 501}).status_code == 400


def test_errors_auth_and_responses_are_typed(client, openapi):
    assert openapi["components"]["securitySchemes"]["AdminToken"] == {
        "type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <SASSFLOW_SERVING__ADMIN_TOKEN>`"}
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, method, codes in [("/recommend", "get", {"400", "422", "503"}),
                                ("/recommend/batch", "post", {"400", "413", "415", "422", "503"}),
                                ("/admin/reload", "post", {"401", "403", "409"}),
                                ("/admin/rollback", "post", {"401", "403", "409"})]:
        op = openapi["paths"][path][method]
        documented = {c for c in op["responses"] if c != "200"}
        assert documented == codes, (path, documented)
        for code in codes:
            content = op["responses"][code]["content"]["application/json"]
            assert content["schema"] == error_ref
            ErrorResponse.model_validate(content["example"])
        if path.startswith("/admin"):
            assert op["security"] == [{"AdminToken": []}]
    for path, model in [("/healthz", "HealthResponse"), ("/readyz", "ReadyResponse"), ("/version", "VersionResponse")]:
        schema = openapi["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{model}"}
    assert "text/plain; version=0.0.4" in openapi["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    # what the service returns has the documented shape
    ReadyResponse.model_validate(client.get("/readyz").json())
    VersionResponse.model_validate(client.get("/version").json())
    for r in (client.get("/recommend", params={"user_id": "x", "scenario": "drama"}), client.post("/admin/reload"),
              client.post("/recommend/batch", content=b"x" * 70_000, headers={"content-type": "application/json"})):
        assert 400 <= r.status_code < 500 and ErrorResponse.model_validate(r.json())


def test_docs_render_offline_in_headless_chromium(server, tmp_path):
    dom = rendered_dom(server.url + "/docs")
    for path in ("/recommend", "/recommend/batch", "/healthz", "/readyz", "/version", "/metrics",
                 "/admin/reload", "/admin/rollback"):
        assert f'class="opblock-summary-path" data-path="{path}"' in dom, path
    assert "OAS 3.1" in dom and "Authorize" in dom  # the spec parsed, the bearer scheme is offered
    out = Path(os.environ.get("SASSFLOW_SCREENSHOT_DIR", tmp_path)) / "docs.png"
    screenshot(server.url + "/docs#/default/recommend_batch_recommend_batch_post", out, size=(1280, 2000))
    pixels = np.asarray(Image.open(out).convert("L"))
    assert pixels.shape == (2000, 1280)
    assert (pixels < 128).mean() > 0.02 and (pixels > 200).mean() > 0.3  # text on a page, not a blank canvas
    print(f"screenshot: {out}")
