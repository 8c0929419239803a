"""The demo's choice of users to ask for a new item: its clickers, then users whose newest click is one
of its co-clicked neighbours."""
from __future__ import annotations

import pandas as pd

from cli.demo.fresh import _asked_by_clickers

DAY = 86_400_000


def test_new_item_clickers_first_then_users_whose_newest_click_is_a_neighbour():
    rows = [  # (user, item, scenario, type, time); new item 99, second replay from t=100
        (1, 99, "drama", "click", 150), (1, 5, "drama", "click", 140),  # 5: clicked next to 99
        (1, 7, "drama", "click", 150 + 2 * DAY),  # 7: clicked by 1 too, but days later
        (2, 5, "drama", "click", 160),  # 2's newest drama click is the neighbour 5: asked
        (3, 5, "drama", "click", 160), (3, 6, "drama", "click", 170),  # 3 clicked 6 since: not asked
        (4, 7, "drama", "click", 170),  # 7 is no neighbour: not asked
        (5, 5, "drama", "click", 50),  # before the second replay: not asked
        (6, 5, "comedy", "impression", 160), (2, 99, "drama", "impression", 165),  # impressions count for nothing
    ]
    history = pd.DataFrame(rows, columns=["user_id", "item_id", "scenario", "event_type", "event_time"])
    assert _asked_by_clickers(history, {99}, since_ms=100) == [(1, "drama"), (2, "drama")]
