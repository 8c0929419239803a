"""Request and response bodies of the HTTP API (pydantic)."""
from __future__ import annotations

from pydantic import BaseModel, Field

MAX_ID = 2**63 - 1
DEFAULT_K = 20


class RecommendResponse(BaseModel):
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


class RecommendRequest(BaseModel):
    user_id: int = Field(ge=0, le=MAX_ID)
    scenario: str
    k: int = Field(DEFAULT_K, ge=1)


class BatchRequest(BaseModel):
    requests: list[RecommendRequest] = Field(min_length=1)


class BatchResponse(BaseModel):
    results: list[RecommendResponse]
