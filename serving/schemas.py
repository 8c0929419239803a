"""What the HTTP API accepts and answers: request models, their strict parsing, response models.

A recommendation request is one model, ``RequestModels.entry`` (built from the settings: the
scenario list, ``k_max``), used by both ways of asking:

* ``GET /recommend?user_id=&scenario=&k=`` -- ``parse_query``: each query value is turned into its
  JSON type first (integers: ASCII digits only, ``sassflow.contracts.events.parse_digits``), then
  validated by the model;
* ``POST /recommend/batch`` -- ``parse_batch``: the body is validated by ``RequestModels.batch``
  straight from its bytes (pydantic's JSON parser: NaN/Infinity, wrong types, deep nesting and
  non-UTF-8 are errors; the list length is checked before any entry is validated).

Ids are JSON integers only, exactly as in the event contract (``sassflow.contracts.events.Id``).
A new request parameter is one more field of ``entry``; both ways pick it up, and the docs too.
Errors never repeat more than a short prefix of the input (``preview``).
"""
from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from sassflow.contracts.events import MAX_ID, Id, parse_digits
from sassflow.contracts.recall import BRANCHES

DEFAULT_K = 20
_STRICT = ConfigDict(extra="forbid", strict=True)


class ApiError(Exception):
    """A request the service answers with ``status``; ``reason`` is a short code (a metric label)."""

    def __init__(self, status: int, reason: str, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.reason, self.detail, self.headers = status, reason, detail, headers


def preview(value, limit: int = 32) -> str:
    """A short, safe rendering of an input value for an error message."""
    if isinstance(value, str):
        return repr(value[:limit]) + ("…" if len(value) > limit else "")
    if isinstance(value, (bool, int, float)) or value is None:
        text = repr(value)
        return text[:limit] + ("…" if len(text) > limit else "")
    return f"a {type(value).__name__}"


# ---------------------------------------------------------------- request models

class RequestModels:
    """The request models for one service's settings."""

    def __init__(self, settings):
        sv = settings.serving
        self.scenarios, self.k_max, self.batch_max = list(settings.scenarios), sv.k_max, sv.batch_max_requests
        Scenario = Literal[tuple(self.scenarios)]  # noqa: N806 (a type)
        self.entry = create_model(
            "RecommendRequest", __config__=_STRICT,
            user_id=(Id, Field(description=f"raw user id, 0 … {MAX_ID}; in JSON an integer (not a string "
                                           "or a float)", examples=[1])),
            scenario=(Scenario, Field(description="one of the configured scenarios", examples=[self.scenarios[0]])),
            k=(int, Field(DEFAULT_K, ge=1, le=self.k_max, description="number of items", examples=[10])),
            branches=(str | None, Field(None, pattern=branch_list_pattern(), description=(
                f"comma-separated recall branches to merge, of {list(BRANCHES)} "
                f"(default: {','.join(settings.recall.branches)})"), examples=["sass,i2i"])),
            ranking=(bool, Field(True, description="rank the recalled candidates with the bundle's coarse and fine "
                                                   "rankers (when it has them); false: the recall order",
                                 examples=[True])),
        )
        self.batch = create_model(
            "BatchRequest", __config__=_STRICT,
            requests=(list[self.entry], Field(min_length=1, max_length=self.batch_max,
                                              description=f"1 … {self.batch_max} requests")),
        )
        self.fields = frozenset(self.entry.model_fields)
        properties = self.entry.model_json_schema()["properties"].items()
        self.integer_fields = frozenset(name for name, spec in properties if spec.get("type") == "integer")
        self.boolean_fields = frozenset(name for name, spec in properties if spec.get("type") == "boolean")

    def example_query(self) -> dict:
        return {"user_id": 1, "scenario": self.scenarios[0], "k": 10, "ranking": True}

    def example_batch(self) -> dict:
        second = self.scenarios[1 % len(self.scenarios)]
        return {"requests": [self.example_query(), {"user_id": 2, "scenario": second}]}


def branch_list_pattern() -> str:
    """``sass,i2i``: one or more known branch names, comma-separated, each once at most."""
    name = "(?:" + "|".join(BRANCHES) + ")"
    return f"^{name}(?:,{name}){{0,{len(BRANCHES) - 1}}}$"


def _fields(model) -> dict:
    """A validated request's fields; ``branches`` as a sorted tuple of names (None: the default)."""
    fields = dict(model.__dict__)  # (model_dump costs 2x more)
    if fields.get("branches") is not None:
        fields["branches"] = tuple(sorted(set(fields["branches"].split(","))))
    return fields


def parse_query(models: RequestModels, items: list[tuple[str, str]]) -> dict:
    """A GET query (name, value pairs) -> the request's fields; raises ``ApiError``."""
    values: dict = {}
    for name, text in items:
        if name not in models.fields:
            raise ApiError(422, "validation", f"unknown query parameter {preview(name)}; known: {sorted(models.fields)}")
        if name in values:
            raise ApiError(422, "validation", f"query parameter {name} is given more than once")
        if name in models.integer_fields:
            try:
                values[name] = parse_digits(text)
            except ValueError as exc:
                raise ApiError(422, "validation", f"query parameter {name} {exc}, got {preview(text)}") from None
        elif name in models.boolean_fields:
            if text not in ("true", "false"):
                raise ApiError(422, "validation", f"query parameter {name} must be true or false, got {preview(text)}")
            values[name] = text == "true"
        else:
            values[name] = text
    try:
        return _fields(models.entry.model_validate(values))
    except ValidationError as exc:
        raise _api_error(models, exc, query=True) from None


def parse_batch(models: RequestModels, body: bytes) -> list[dict]:
    """A batch body -> each request's fields; raises ``ApiError``."""
    try:
        return [_fields(r) for r in models.batch.model_validate_json(body).requests]
    except ValidationError as exc:
        raise _api_error(models, exc, query=False) from None


# ---------------------------------------------------------------- errors

_OUT_OF_RANGE = ("greater_than_equal", "less_than_equal")


def _describe(models: RequestModels, e: dict, query: bool) -> tuple[int, str, str]:
    """(status, reason, message) of one pydantic error."""
    loc = ".".join(str(p) for p in e["loc"])
    field, kind = (e["loc"][-1] if e["loc"] else None), e["type"]
    if field == "scenario" and kind == "literal_error":
        return 400, "unknown_scenario", f"unknown scenario {preview(e['input'])}; known: {sorted(models.scenarios)}"
    if field == "k" and kind in _OUT_OF_RANGE:
        return 400, "k_out_of_range", f"k must be between 1 and {models.k_max}, got {preview(e['input'])}"
    if loc == "requests" and kind == "too_long":
        return 400, "batch_too_large", (f"at most {models.batch_max} requests per batch, "
                                        f"got {e['ctx']['actual_length']}")
    if kind == "missing":
        return 422, "validation", f"{'query parameter ' if query else ''}{loc} is required"
    if kind == "json_invalid":
        return 422, "validation", f"the body is not valid JSON: {e['msg']}"
    got = "" if kind == "extra_forbidden" else f", got {preview(e['input'])}"
    return 422, "validation", f"{loc}: {e['msg']}{got}"


def _api_error(models: RequestModels, exc: ValidationError, query: bool, limit: int = 5) -> ApiError:
    errors = exc.errors(include_url=False)
    described = [_describe(models, e, query) for e in errors[:limit]]
    status, reason = described[0][0], described[0][1]
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return ApiError(status, reason, "; ".join(m for _, _, m in described) + more)


# ---------------------------------------------------------------- responses

class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer of this API."""

    detail: str = Field(description="what was wrong; quotes at most a short prefix of the input")
    reason: str = Field(description="a short code: validation, unknown_scenario, k_out_of_range, batch_too_large, "
                                    "body_too_large, unsupported_media_type, unauthorized, admin_disabled, "
                                    "not_found, not_ready, features_unavailable, bundle_refused, no_rollback_target…")


class RecommendResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "user_id": 1, "scenario": "family", "items": [2975, 1265, 2650], "scores": [0.9752, 0.9738, 0.9669],
        "fallback": False, "model_version": "7", "bundle_id": "20261125T184202509-mv7-cd2286", "ranked": True}]})

    user_id: int
    scenario: str
    items: list[int] = Field(description="raw item ids, best first; items the user just clicked are left out")
    scores: list[float] = Field(description="each item's score in the branch that found it: inner products (sass), "
                                            "decayed co-click or click counts (i2i, tags, trending), popularity "
                                            "rank scores (popular)")
    fallback: bool = Field(description="true when the user had no usable history: the scenario's popular items")
    model_version: str
    bundle_id: str
    branches: list[str] = Field([], description="per item: the recall branch that found it (sass, i2i, tags, "
                                                "trending, popular)")
    reasons: list[str] = Field([], description="per item: why, e.g. 'because you clicked 1193', 'trending in drama'")
    ranked: bool = Field(False, description="true when the bundle's rankers ordered the items (coarse, then fine); "
                                            "false: the recall order (ranking=false, no rankers in the bundle, or "
                                            "the popular fallback)")


class BatchResponse(BaseModel):
    results: list[RecommendResponse] = Field(description="one answer per request, in the request's order")


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"ready": True, "bundle_id": "20261125T184202509-mv7-cd2286", "scenarios": ["action", "drama"],
         "reasons": [], "refused": {}},
        {"ready": False, "bundle_id": "20261125T184202509-mv7-cd2286", "scenarios": ["action", "drama"],
         "reasons": ["feature store read timed out after 6s"], "refused": {}}]})

    ready: bool
    bundle_id: str | None = Field(None, description="the bundle being served")
    scenarios: list[str] = []
    reasons: list[str] = Field([], description="why the service is not ready (no bundle, feature store down)")
    refused: dict[str, str] = Field({}, description="bundle id -> why it was refused")


class ScenarioInfo(BaseModel):
    count: int = Field(description="items in the scenario's index")
    index: dict = Field(description="the index type and its search parameters")


class VersionResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "bundle_id": "20261125T184202509-mv7-cd2286", "model_version": "7", "kind": "sass",
        "created_at": "2026-11-25T18:42:02Z", "dim": 64,
        "scenarios": {"drama": {"count": 881, "index": {"type": "flat"}},
                      "action": {"count": 120000, "index": {"type": "ivf", "nlist": 1385, "nprobe": 32}}},
        "previous_bundle_id": "20261124T101500000-mv6-a1b2c3",
        "refused": {"20261125T190000000-mv8-d4e5f6": "bundle 20261125T190000000-mv8-d4e5f6: checksum mismatch on "
                                                     "drama/index.faiss"},
        "pointer_problem": None}]})

    bundle_id: str
    model_version: str
    kind: str = Field(description="the user tower's kind (sass, two_tower, mean_history)")
    created_at: str
    dim: int
    scenarios: dict[str, ScenarioInfo]
    previous_bundle_id: str | None
    refused: dict[str, str] = Field(description="bundle id -> why it was refused (no filesystem paths)")
    pointer_problem: str | None = Field(None, description="why CURRENT names no bundle, when it does not")


class AdminResult(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "status": "swapped", "bundle_id": "20261124T101500000-mv6-a1b2c3", "load_s": 0.42,
        "previous": "20261125T184202509-mv7-cd2286"}]})

    status: Literal["swapped", "unchanged"]
    bundle_id: str
    load_s: float | None = None
    previous: str | None = None


def dumps(obj) -> bytes:
    """Compact JSON for the hot paths (they skip FastAPI's response-model machinery)."""
    return json.dumps(obj, separators=(",", ":")).encode()
