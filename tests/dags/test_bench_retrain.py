"""`sassflow bench retrain`: the retrain DAG timed with and without the rankers, through the real parser
and ``dag.test()`` on a tiny MovieLens-format folder."""
from __future__ import annotations

import json

from cli.main import build_parser
from tests.conftest import make_settings
from tests.dags.conftest import SMALL_TRAINING


def test_bench_retrain_times_the_dag_with_and_without_the_rankers(airflow_home, tmp_path, capsys):
    from tests.training.test_cli import _tiny_movielens
    from tests.training.test_data import _scenarios

    data = tmp_path / "ml" / "tiny"
    data.parent.mkdir()
    _tiny_movielens(data, _scenarios(tmp_path))
    settings = make_settings(tmp_path / "state", airflow={"home": airflow_home}, training=SMALL_TRAINING)
    args = build_parser().parse_args(["bench", "retrain", "--data", str(data), "--state-dir", str(tmp_path / "bench")])
    assert args.func(args, settings) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    with_rankers, without = r["with_rankers"], r["without_rankers"]
    # the warm-up's single day has no requests to train rankers on: they are left out, the run succeeds
    assert with_rankers["state"] == without["state"] == r["warm_up_state"] == "success"
    assert r["events"] > 4000  # every rating an impression, the good ones a click too
    # the rankers trained in the first run only; the switch reached the tasks through the run's env
    assert with_rankers["rankers_reason"] and "disabled" not in with_rankers["rankers_reason"]
    assert without["rankers_included"] is False and "disabled" in without["rankers_reason"]
    assert with_rankers["tasks_s"]["retrain.ranking.train_rankers"] > without["tasks_s"]["retrain.ranking.train_rankers"]
    for run in (with_rankers, without):
        assert "retrain.finetune" in run["tasks_s"] and run["wall_s"] >= run["tasks_sum_s"] - 0.2  # rounding
    assert r["ranker_added_share"] == round((with_rankers["wall_s"] - without["wall_s"]) / without["wall_s"], 3)
    others = with_rankers["tasks_sum_s"] - with_rankers["ranking_s"]
    assert abs(r["ranking_share_of_other_tasks"] - with_rankers["ranking_s"] / others) < 1e-3
