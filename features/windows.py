"""Read-time window features: a view's stored tiles in, its windowed features as of a time out.

Pure (no I/O, no clock): the caller says the time.  Serving evaluates as of the request time, the
training-set builder's vectorised code follows the same windows (``sassflow.contracts.features``,
``window_start_ms``), the replay and ``sassflow features check`` compare the stored tiles
themselves.  A window as of ``t`` holds the tiles from ``window_start_ms(window, t)`` up to the tile
of ``t``: an idle key's windows empty out as time passes, and tiles after ``t`` (a clock behind the
events) are left out.

Exactness: a row's tiles cover the windows of any ``t`` at or after the key's newest event (the row
timestamp).  As of an earlier ``t`` the tiles pruned behind that newest event are missing.
"""
from __future__ import annotations

from bisect import bisect_right

from sassflow.contracts.features import (HOUR_MS, ITEM_SCENARIO_STATS, MINUTE_MS, TILE_WIDTH, USER_PROFILE,
                                         USER_SCENARIO_STATS, WINDOW_1H, WINDOW_7D, WINDOW_24H, View)

HOURS_PER_DAY = WINDOW_24H.tiles


def encode_tiles(tiles: dict[int, list[int]]) -> list[int]:
    """{tile index: [counts...]} as the stored flat list, sorted by tile index."""
    out: list[int] = []
    for k in sorted(tiles):
        out.append(k)
        out.extend(tiles[k])
    return out


def _span(tiles, width: int, first_excluded: int, last: int) -> tuple[int, int]:
    """The slice (in records) of tiles, sorted by index, whose index is in (first_excluded, last]."""
    index = tiles[0::width]
    return bisect_right(index, first_excluded), bisect_right(index, last)


def window_counts(minute_tiles, hour_tiles, as_of_ms: int) -> tuple[int, int, int, int, int, int]:
    """(imp_1h, imp_24h, imp_7d, clk_1h, clk_24h, clk_7d) as of ``as_of_ms`` from [idx, imp, clk] tiles
    (sorted by index, as stored)."""
    m_end, h_end = as_of_ms // MINUTE_MS, as_of_ms // HOUR_MS
    mt, ht = minute_tiles or [], hour_tiles or []
    a, b = _span(mt, 3, m_end - WINDOW_1H.tiles, m_end)
    i1, c1 = sum(mt[1::3][a:b]), sum(mt[2::3][a:b])
    a7, b = _span(ht, 3, h_end - WINDOW_7D.tiles, h_end)
    a24, _ = _span(ht, 3, h_end - WINDOW_24H.tiles, h_end)
    imp, clk = ht[1::3], ht[2::3]
    return i1, sum(imp[a24:b]), sum(imp[a7:b]), c1, sum(clk[a24:b]), sum(clk[a7:b])


def ctr(clicks: int, impressions: int) -> float:
    return clicks / impressions if impressions else 0.0


def trending(clk_1h: int, clk_24h: int) -> float:
    """Last hour's clicks against the day's hourly mean, smoothed so that a cold item sits at 1.0."""
    return (clk_1h + 1) / (clk_24h / HOURS_PER_DAY + 1)


def scenario_window_features(row: dict, as_of_ms: int) -> dict:
    """The derived features of ``user_scenario_stats`` (window counts and CTRs)."""
    i1, i24, i7, c1, c24, c7 = window_counts(row.get("minute_tiles"), row.get("hour_tiles"), as_of_ms)
    return {"imp_1h": i1, "imp_24h": i24, "imp_7d": i7, "clk_1h": c1, "clk_24h": c24, "clk_7d": c7,
            "ctr_24h": ctr(c24, i24), "ctr_7d": ctr(c7, i7)}


def since_click_ms(minute_tiles, hour_tiles, as_of_ms: int) -> int | None:
    """ms from the start of the newest tile holding a click (at or before ``as_of_ms``) to
    ``as_of_ms``: a minute tile within the last hour, else an hour tile within 7 days; None without a
    click in 7 days (the tiles keep no older ones)."""
    for tiles, tile_ms, window in ((minute_tiles or [], MINUTE_MS, WINDOW_1H), (hour_tiles or [], HOUR_MS, WINDOW_7D)):
        end = as_of_ms // tile_ms
        a, b = _span(tiles, 3, end - window.tiles, end)
        for j in range(b - 1, a - 1, -1):
            if tiles[3 * j + 2] > 0:
                return as_of_ms - tiles[3 * j] * tile_ms
    return None


def user_scenario_window_features(row: dict, as_of_ms: int) -> dict:
    """The derived features of ``user_scenario_stats``: window counts, CTRs, time since the last click."""
    out = scenario_window_features(row, as_of_ms)
    out["since_click_ms"] = since_click_ms(row.get("minute_tiles"), row.get("hour_tiles"), as_of_ms)
    return out


def item_window_features(row: dict, as_of_ms: int) -> dict:
    """The derived features of ``item_scenario_stats`` (window counts, CTRs, ``trending``)."""
    out = scenario_window_features(row, as_of_ms)
    out["trending"] = trending(out["clk_1h"], out["clk_24h"])
    return out


def profile_window_features(row: dict, as_of_ms: int, n_scenarios: int) -> dict:
    """The derived features of ``user_profile``: 7d totals and the per-scenario click share."""
    h_end = as_of_ms // HOUR_MS
    tiles, width = row.get("scenario_hour_tiles") or [], TILE_WIDTH["scenario_hour_tiles"]
    a, b = _span(tiles, width, h_end - WINDOW_7D.tiles, h_end)
    clicks = [0] * n_scenarios
    for scenario, c in zip(tiles[1::width][a:b], tiles[3::width][a:b]):
        if scenario < n_scenarios:
            clicks[scenario] += c
    total_clk = sum(clicks)
    share = [c / total_clk if total_clk else 0.0 for c in clicks]
    return {"total_imp_7d": sum(tiles[2::width][a:b]), "total_clk_7d": total_clk, "scenario_click_share": share}


def evaluate(view: View, row: dict | None, as_of_ms: int, n_scenarios: int) -> dict:
    """A stored row of ``view`` as its readers get it (``view.row_names``) as of ``as_of_ms``; a key
    without a row reads every feature as None (cold start)."""
    if row is None:
        return dict.fromkeys(view.row_names)
    out = {f.name: row.get(f.name) for f in view.features if not f.tiles}
    out.update(_DERIVED[view.name](row, as_of_ms, n_scenarios))
    return out


_DERIVED = {
    USER_SCENARIO_STATS.name: lambda row, t, _: user_scenario_window_features(row, t),
    USER_PROFILE.name: profile_window_features,
    ITEM_SCENARIO_STATS.name: lambda row, t, _: item_window_features(row, t),
}
