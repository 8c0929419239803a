"""The demo's choice of users to ask for a new item: its clickers, then users who clicked its neighbours."""
from __future__ import annotations

import pandas as pd

from cli.demo.fresh import _asked_by_clickers


def test_new_item_clickers_first_then_users_of_its_neighbours_who_never_clicked_it():
    rows = [  # (user, item, scenario, type, time); new item 99, second replay from t=100
        (1, 99, "drama", "click", 150), (1, 5, "drama", "click", 140),  # 5 is 99's neighbour
        (2, 5, "drama", "click", 160), (3, 6, "drama", "click", 170),  # 2: a neighbour's clicker; 3: not
        (4, 5, "drama", "click", 50), (5, 5, "comedy", "impression", 160), (2, 99, "drama", "impression", 165),
    ]
    history = pd.DataFrame(rows, columns=["user_id", "item_id", "scenario", "event_type", "event_time"])
    assert _asked_by_clickers(history, {99}, since_ms=100) == [(1, "drama"), (2, "drama")]
