"""The item catalogue: its contract, the catalogue stage against the real broker (history, dead
letters, restart), and the two sources' catalogues."""
from __future__ import annotations

import base64
import json
import threading
import uuid

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition

from sassflow.contracts.catalog import ItemEvent, decode_image, encode_image, parse_item
from sassflow.contracts.events import EventError
from streaming.catalog import (
    PALETTE, ensure_catalog_topics, movielens_catalog, read_catalog, synthetic_catalog,
    synthetic_group,
)
from streaming.consumer import Shutdown, run_catalog_stage
from streaming.produce import make_producer
from streaming.sources import SyntheticSource

SCEN = ["family", "thriller", "action", "comedy", "drama"]
GOOD = {"event_id": "i-1", "item_id": 7, "title": "Heat", "tags": ["Action", "Crime"], "year": 1995,
        "scenarios": ["action"], "event_time": 1_700_000_000_000}


def _raw(**over) -> bytes:
    return json.dumps({**GOOD, **over}).encode()


def test_a_valid_item_round_trips_with_its_image():
    pixels = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    item = parse_item(_raw(image=encode_image(pixels), attributes={"studio": "x", "runtime": 170}), SCEN)
    assert item.title == "Heat" and item.year == 1995 and item.shown_in(SCEN) == ["action"]
    assert np.array_equal(decode_image(item.image), pixels)  # PNG is lossless; 16 px is the model's size
    assert parse_item(item.to_bytes(), SCEN) == item
    everywhere = parse_item(_raw(scenarios=None), SCEN)
    assert everywhere.shown_in(SCEN) == SCEN


@pytest.mark.parametrize("raw, reason, needle", [
    (b"{not json", "not_json", "not JSON"),
    (_raw(item_id="7"), "wrong_type", "item_id"),
    (_raw(title=""), "invalid_value", "title"),
    (_raw(year=1200), "invalid_value", "year"),
    (_raw(price=3), "unknown_field", "price"),
    (_raw(scenarios=["casino"]), "unknown_scenario", "casino"),
    (_raw(tags=["x" * 65]), "invalid_value", "tags"),
    (_raw(image="%%%not base64"), "bad_image", "base64"),
    (_raw(image=base64.b64encode(b"GIF89a....").decode()), "bad_image", "not a PNG"),
    (_raw(image=base64.b64encode(b"\x89PNG\r\n\x1a\n garbage").decode()), "bad_image", "readable PNG"),
    (_raw(image=encode_image(np.zeros((80, 80, 3), np.uint8))), "bad_image", "80x80"),
    (_raw(title="t" * 400, tags=["y" * 60] * 30), "oversized", "bytes"),
])
def test_malformed_items_get_a_reason_and_a_precise_message(raw, reason, needle):
    with pytest.raises(EventError) as err:
        parse_item(raw, SCEN, max_bytes=2048)
    assert err.value.reason == reason and needle in err.value.message


def test_synthetic_catalogue_posters_carry_the_fine_category_the_title_lacks():
    src = SyntheticSource(n_users=10, n_items=60, n_events=10, seed=2, n_categories=20)
    items = list(synthetic_catalog(src))
    assert [it.item_id for it in items] == list(range(60))
    cat = src.truth.item_category
    for it in items:
        assert it.tags == [f"group-{synthetic_group(cat[it.item_id])}"]  # the coarse group only
        colour = decode_image(it.image).reshape(-1, 3).mean(0)
        nearest = int(np.argmin(((PALETTE * 0.85 - colour) ** 2).sum(1)))
        assert nearest == cat[it.item_id] % len(PALETTE)
    same_group = [it for it in items if synthetic_group(cat[it.item_id]) == synthetic_group(cat[0])]
    assert len({cat[it.item_id] for it in same_group}) > 1  # a group spans several fine categories


def test_movielens_catalogue_has_title_genres_year_and_scenario(tiny_movielens):
    from sassflow.datasets import Dataset

    ds = Dataset(tiny_movielens)
    items = list(movielens_catalog(ds))
    assert sorted(it.item_id for it in items) == sorted(ds.movies["item_id"].tolist())
    first = {int(k): int(v) for k, v in ds.load_events().groupby("item_id")["event_time"].min().items()}
    for it in items:
        movie = ds.movies.set_index("item_id").loc[it.item_id]
        assert it.title == movie["title"] and it.tags == movie["genres"].split("|") and it.year == movie["year"]
        assert it.scenarios == [ds.item_scenario[it.item_id]]
        if it.item_id in first:
            assert it.event_time == first[it.item_id]  # in the catalogue before its first impression
        assert parse_item(it.to_bytes(), SCEN).item_id == it.item_id


@pytest.fixture
def tiny_movielens(tmp_path):
    """The training tests' tiny MovieLens-format folder (scenarios.json beside it)."""
    from tests.training.test_cli import _tiny_movielens
    from tests.training.test_data import _scenarios

    folder = tmp_path / "ml" / "tiny"
    folder.parent.mkdir()
    _tiny_movielens(folder, _scenarios(tmp_path))
    return folder


@pytest.fixture
def catalog_settings(kafka):
    s = kafka.model_copy(deep=True)
    suffix = uuid.uuid4().hex[:8]
    s.kafka.items_topic, s.kafka.items_dlq_topic = f"items-{suffix}", f"items-{suffix}.dlq"
    s.streaming.batch_max_ms, s.streaming.checkpoint_interval_ms = 100, 200
    ensure_catalog_topics(s)
    return s


def _send(settings, messages: list[tuple[bytes, bytes]]) -> None:
    producer = make_producer(settings, linger_ms=5)
    for key, value in messages:
        producer.send(settings.kafka.items_topic, key=key, value=value)
    producer.flush()
    producer.close()


def _dead_letters(settings) -> list:
    c = KafkaConsumer(**settings.kafka.client_kwargs(), group_id=None, enable_auto_commit=False)
    tp = TopicPartition(settings.kafka.items_dlq_topic, 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    end, out = c.end_offsets([tp])[tp], []
    while c.position(tp) < end:
        for recs in c.poll(timeout_ms=500).values():
            out.extend(recs)
    c.close()
    return out


def test_catalogue_stage_keeps_the_history_and_dead_letters_bad_items_exactly_once(catalog_settings):
    s = catalog_settings
    items = list(synthetic_catalog(SyntheticSource(n_users=5, n_items=40, n_events=5, seed=1)))
    bad = [b"nope", _raw(item_id=-1), _raw(scenarios=["casino"]), _raw(image="@@")]
    _send(s, [(it.key(), it.to_bytes()) for it in items[:25]] + [(b"x", b) for b in bad])
    first = run_catalog_stage(s, until_idle=5.0, shutdown=Shutdown())
    assert first.records == 29 and first.applied == 25
    # a second version of item 3 and 15 new items, read by a restarted stage from its checkpoint
    renamed = items[3].model_copy(update={"title": "Renamed", "event_id": "v2", "event_time": items[3].event_time + 1})
    _send(s, [(it.key(), it.to_bytes()) for it in items[25:]] + [(renamed.key(), renamed.to_bytes())])
    second = run_catalog_stage(s, until_idle=8.0, shutdown=Shutdown())  # the group rejoin takes seconds
    assert second.records == 16  # nothing of the first run is read again
    catalog = read_catalog(s.streaming.offline_dir)
    assert catalog["item_id"].tolist() == list(range(40))
    assert catalog.set_index("item_id").loc[3, "title"] == "Renamed"
    assert catalog.set_index("item_id").loc[5, "image"] == items[5].image
    letters = _dead_letters(s)
    assert sorted(r.value for r in letters) == sorted(bad)
    reasons = {r.value: dict(r.headers)["reason"].decode() for r in letters}
    assert reasons == {b"nope": "not_json", bad[1]: "invalid_value", bad[2]: "unknown_scenario", bad[3]: "bad_image"}
    assert all(dict(r.headers)["source_topic"] == s.kafka.items_topic.encode() for r in letters)


def test_catalogue_stage_stops_on_shutdown_and_loses_nothing(catalog_settings):
    s = catalog_settings
    items = list(synthetic_catalog(SyntheticSource(n_users=5, n_items=30, n_events=5, seed=4), with_image=False))
    _send(s, [(it.key(), it.to_bytes()) for it in items])
    shutdown = Shutdown()
    timer = threading.Timer(2.0, shutdown.flag.set)
    timer.start()
    run_catalog_stage(s, shutdown=shutdown)  # no idle limit: only the shutdown ends it
    timer.join()
    assert read_catalog(s.streaming.offline_dir)["item_id"].tolist() == list(range(30))
    assert isinstance(items[0], ItemEvent) and items[0].image is None


def test_produce_catalog_command_puts_the_synthetic_items_on_the_items_topic(catalog_settings, capsys):
    from cli.main import build_parser
    from streaming.catalog import split_catalog_at

    s = catalog_settings
    args = build_parser().parse_args(["produce", "--catalog", "--source", "synthetic", "--items", "30",
                                      "--users", "5", "--events", "10", "--limit", "25"])
    assert args.func(args, s) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["by_type"] == {"item": 25}
    c = KafkaConsumer(**s.kafka.client_kwargs(), group_id=None, enable_auto_commit=False)
    tp = TopicPartition(s.kafka.items_topic, 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    records = []
    while c.position(tp) < c.end_offsets([tp])[tp]:
        for recs in c.poll(timeout_ms=500).values():
            records.extend(recs)
    c.close()
    items = [parse_item(r.value, SCEN) for r in records]
    assert [it.item_id for it in items] == list(range(25)) and all(r.key == str(r.offset).encode() for r in records)
    before, after = split_catalog_at(items + [items[0].model_copy(update={"event_time": 2_000_000_000_000})],
                                     1_900_000_000_000)
    assert len(before) == 25 and [it.event_time for it in after] == [2_000_000_000_000]


def test_the_catalogue_stage_keeps_the_recall_tag_catalog(catalog_settings):
    """Applied catalogue items' tags reach the recall tag catalog (the tag index and branch read it)."""
    from sassflow.contracts.recall import read_item_tags
    from streaming.produce import produce_events

    s = catalog_settings  # its own items topic: the default one holds other tests' catalogues
    items = [ItemEvent.model_construct(event_id=f"i-{i}", item_id=i, title=f"Film {i}", tags=[f"g{i % 3}", "x"],
                                       year=2000, attributes=None, scenarios=None, image=None,
                                       event_time=1_700_000_000_000 + i) for i in range(1, 6)]
    produce_events(s, items, topic=s.kafka.items_topic, show_progress=False)
    run_catalog_stage(s, until_idle=5.0, shutdown=Shutdown())
    assert read_item_tags(s.recall.catalog_dir) == {i: (f"g{i % 3}", "x") for i in range(1, 6)}
