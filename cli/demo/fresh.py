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


def _asked_by_clickers(history: pd.DataFrame, new_ids: set, since_ms: int, limit: int = 40) -> list[tuple[int, str]]:
    """(user, scenario) pairs to ask: users who clicked one of ``new_ids`` in the second replay, then
    users who clicked, there, what those clickers clicked (but no new item).  A user is never
    recommended what they just clicked, so the streaming branches show a new item to the second
    kind: the new item is among the i2i neighbours of their clicks, or trends in their tags."""
    recent = history[(history["event_type"] == "click") & (history["event_time"] >= since_ms)]
    on_new = recent["item_id"].isin(new_ids)
    clickers = recent.loc[on_new, ["user_id", "scenario"]].drop_duplicates().head(limit)
    neighbours = set(recent.loc[recent["user_id"].isin(set(clickers["user_id"])) & ~on_new, "item_id"])
    new_clickers = set(recent.loc[on_new, "user_id"])
    others = recent[recent["item_id"].isin(neighbours) & ~recent["user_id"].isin(new_clickers)]
    others = others[["user_id", "scenario"]].drop_duplicates().head(5 * limit)
    return [(int(u), s) for u, s in pd.concat([clickers, others]).itertuples(index=False)]


def new_item_answer(url: str, history: pd.DataFrame, new_ids: set, since_ms: int, bundle_path,
                    branches: str | None = None, timeout_s: float = 30.0) -> dict:
    """The first answer (asked for users who clicked new items) holding an item the served bundle
    does not hold, with its branch and reason; {"found": False} when none came within the timeout."""
    import httpx

    from serving.branches import items_outside_bundle

    pairs = _asked_by_clickers(history, new_ids, since_ms)
    params = {"k": 20, **({"branches": branches} if branches else {})}
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
                            "bundle_id": body["bundle_id"], "asked_branches": branches or "default"}
            time.sleep(0.5)
    return {"found": False, "asked_pairs": len(pairs), "asked_branches": branches or "default"}
