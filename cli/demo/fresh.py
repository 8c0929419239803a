"""The demo's new items: the catalogue split at the second replay, and the proof that items the
served bundle does not hold reach `/recommend` answers before the second retrain has finished --
through the catalogue (content vectors in the service's side index) and through the streaming
recall branches (i2i, tags, trending)."""
from __future__ import annotations

import time

import pandas as pd


def catalogue(source) -> list:
    """The source's item catalogue (MovieLens: title, genres, year; synthetic: with posters)."""
    from streaming.catalog import movielens_catalog, synthetic_catalog

    dataset = getattr(source, "dataset", None)
    return list(movielens_catalog(dataset) if dataset is not None else synthetic_catalog(source))


def split_catalogue(items: list, seen: set[int]) -> tuple[list, list]:
    """(items a user can meet in the first replay, items first shown in the second): an item no event
    of the first part names (not in ``seen``) is new in the second, and is published with it."""
    return [it for it in items if it.item_id in seen], [it for it in items if it.item_id not in seen]


def _asked_by_clickers(history: pd.DataFrame, new_ids: set, since_ms: int, limit: int = 40,
                       pair_gap_ms: int = 86_400_000) -> list[tuple[int, str]]:
    """(user, scenario) pairs to ask: users who clicked one of ``new_ids`` in the second replay, then
    users whose newest click there (in that scenario) is an item a new item's clicker clicked within
    ``pair_gap_ms`` of it (recall.pair_max_gap_ms).  A user is never recommended what they just
    clicked, so the streaming branches show a new item to the second kind: it is a co-clicked
    neighbour of their newest click, the i2i branch's first trigger."""
    recent = history[(history["event_type"] == "click") & (history["event_time"] >= since_ms)]
    on_new = recent["item_id"].isin(new_ids)
    clickers = recent.loc[on_new, ["user_id", "scenario"]].drop_duplicates().head(limit)
    new_clicks = recent.loc[on_new, ["user_id", "event_time"]].rename(columns={"event_time": "new_time"})
    near = recent[~on_new].merge(new_clicks, on="user_id")
    neighbours = set(near.loc[(near["event_time"] - near["new_time"]).abs() <= pair_gap_ms, "item_id"])
    newest = recent.sort_values("event_time").groupby(["user_id", "scenario"], sort=False).tail(1)
    others = newest[newest["item_id"].isin(neighbours) & ~newest["user_id"].isin(set(new_clicks["user_id"]))]
    others = others.sort_values("event_time", ascending=False)[["user_id", "scenario"]].head(5 * limit)
    return [(int(u), s) for u, s in pd.concat([clickers, others]).itertuples(index=False)]


def new_item_answer(url: str, history: pd.DataFrame, new_ids: set, since_ms: int, bundle_path,
                    branches: str | None = None, timeout_s: float = 30.0, k: int = 20) -> dict:
    """The first answer (asked for users who clicked new items) holding an item the served bundle
    does not hold, with its branch and reason; {"found": False} when none came within the timeout."""
    import httpx

    from serving.branches import items_outside_bundle

    pairs = _asked_by_clickers(history, new_ids, since_ms)
    params = {"k": k, **({"branches": branches} if branches else {})}
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, timeout=10.0) as client:
        while pairs and time.monotonic() < deadline:
            for user, scenario in pairs:
                body = client.get("/recommend", params={"user_id": user, "scenario": scenario, **params}).json()
                outside = items_outside_bundle(bundle_path, scenario, body.get("items", []))
                if outside:
                    j = body["items"].index(outside[0])
                    return {"found": True, "user_id": user, "scenario": scenario, "item_id": outside[0],
                            "rank": j + 1, "branch": body["branches"][j], "reason": body["reasons"][j],
                            "bundle_id": body["bundle_id"], "asked_branches": branches or "default", "k": k}
            time.sleep(0.5)
    return {"found": False, "asked_pairs": len(pairs), "asked_branches": branches or "default"}
