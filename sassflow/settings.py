"""The one settings object of sassflow.

Read from, in order of precedence: keyword arguments, environment variables
(``SASSFLOW_`` prefix, ``__`` between nested names, e.g.
``SASSFLOW_KAFKA__BOOTSTRAP_SERVERS``), a TOML file (``SASSFLOW_CONFIG`` or
``./sassflow.toml``), then the defaults below.  The defaults are the embedded
set-up: a local broker on loopback, SQLite + local files for Feast, SQLite for
the model registry, everything under ``state_dir``.

Credentials (Kafka SASL/TLS, Redis, Postgres, the admin token) only ever come
from here, never from code.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_SCENARIOS = ["family", "thriller", "action", "comedy", "drama"]
DEFAULT_DATASET_DIR = Path.home() / ".cache" / "sassflow" / "datasets" / "movielens-1m"  # `sassflow data fetch`


def is_dataset_folder(folder) -> bool:
    return folder is not None and (Path(folder) / "ratings.csv.gz").exists()


def find_scenarios_file(folder) -> Path | None:
    """The ``scenarios.json`` in a dataset folder or beside it."""
    folder = Path(folder)
    return next((p for p in (folder / "scenarios.json", folder.parent / "scenarios.json") if p.exists()), None)


class KafkaSettings(BaseModel):
    """How clients reach a Kafka cluster (local or production)."""

    bootstrap_servers: str = "127.0.0.1:19092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None  # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
    sasl_plain_username: str | None = None
    sasl_plain_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    events_topic: str = "sassflow.events"
    dlq_topic: str = "sassflow.events.dlq"
    partitions: int = Field(4, ge=1)
    replication_factor: int = Field(1, ge=1)
    # min.insync.replicas of the topics sassflow creates; default replication_factor - 1 (at least 1):
    # with replication 3, acks=all writes survive one broker down and are on two brokers when acked.
    min_insync_replicas: int | None = Field(None, ge=1)
    consumer_group: str = "sassflow-ingest"
    max_event_bytes: int = Field(4096, ge=256)
    # The item catalogue (sassflow.contracts.catalog): its own topic, keyed by item id, and its own
    # dead letters.  Catalogue events carry a thumbnail, hence the larger size limit.
    items_topic: str = "sassflow.items"
    items_dlq_topic: str = "sassflow.items.dlq"
    items_partitions: int = Field(1, ge=1)  # catalogue volume is tiny next to clicks
    max_item_bytes: int = Field(65536, ge=1024)

    def client_kwargs(self) -> dict:
        """Connection/security keyword arguments shared by every kafka-python client."""
        kw: dict = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            kw["sasl_mechanism"] = self.sasl_mechanism
        if self.sasl_plain_username:
            kw["sasl_plain_username"] = self.sasl_plain_username
        if self.sasl_plain_password:
            kw["sasl_plain_password"] = self.sasl_plain_password.get_secret_value()
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(self, name):
                kw[name] = getattr(self, name)
        return kw

    def topic_min_insync_replicas(self) -> int:
        return self.min_insync_replicas or max(1, self.replication_factor - 1)


class LocalKafkaSettings(BaseModel):
    """The single-node KRaft broker that `sassflow kafka start` runs for development and tests."""

    version: str = "4.4.0"
    host: str = "127.0.0.1"
    port: int = 19092
    controller_port: int = 19093
    data_dir: Path | None = None  # default: <state_dir>/kafka
    jar_cache_dir: Path = Path.home() / ".cache" / "sassflow" / "kafka"
    heap: str = "512m"
    start_timeout_s: float = 90.0


class DataSettings(BaseModel):
    """Where the replayable datasets live."""

    movielens_dir: Path | None = None  # a folder with ratings.csv.gz, movies.csv, users.csv
    scenarios_file: Path | None = None  # default: <movielens_dir>/../scenarios.json

    def find_movielens(self) -> Path | None:
        """The configured folder, or the first well-known location that exists, or None."""
        candidates = [self.movielens_dir] if self.movielens_dir else []
        candidates += [
            PROJECT_ROOT / "datasets" / "movielens-1m",
            PROJECT_ROOT.parent / "shared" / "datasets" / "movielens-1m",
            DEFAULT_DATASET_DIR,
        ]
        return next((Path(c) for c in candidates if is_dataset_folder(c)), None)

    def find_scenarios_file(self, data_dir: Path | None) -> Path | None:
        if self.scenarios_file:
            return self.scenarios_file
        return find_scenarios_file(data_dir) if data_dir else None


class StreamingSettings(BaseModel):
    check_sample: int = Field(1000, ge=1)  # users and items `features check` (and the retrain DAG) recompute
    # the retrain DAG's check_features fails (an alert in Airflow) on a mismatch instead of reporting
    # it: off by default, a store fed by a partial backfill or no stream at all is not an error
    check_fails_retrain: bool = False
    batch_max_events: int = Field(20000, ge=1)  # a micro-batch ends at this many events or batch_max_ms
    batch_max_ms: int = Field(200, ge=1)
    allowed_lateness_ms: int = Field(3_600_000, ge=0)
    # How long (in event time, behind a partition's newest event) an event_id is remembered to drop
    # producer duplicates (streaming.dedup).  A producer retry lands within seconds; a day also covers
    # a producer replaying a day's batch.  The ids of the horizon live in every checkpoint, so memory
    # and checkpoint size grow with it: the issue asks for at least 24 h.
    dedup_horizon_ms: int = Field(86_400_000, ge=86_400_000)
    checkpoint_interval_ms: int = Field(2000, ge=0)  # history + checkpoint + commit cadence
    item_shards: int = Field(1, ge=1)  # item-stage processes (each reads every partition)
    # Client-side CRC32C check of fetched record batches (kafka-python's `check_crcs`).  Off by
    # default: kafka-python computes it in pure Python (most of its decoding time, the ingest's
    # biggest cost), while the broker already rejects a batch with a bad CRC on produce and TCP
    # checksums every transfer; what it would add is detection of on-disk corruption at the
    # broker.  Turn it on where that matters more than throughput.
    check_crcs: bool = False
    # How long one step of a changelog transaction (offsets, commit, abort) may take before the
    # producer is replaced and the transaction retried (streaming.changelog).  A healthy step takes
    # milliseconds and a coordinator moving after a broker failure a few seconds; the client can
    # also lose the request for good (streaming.kafka_internals.transaction_step), which only this
    # ends.  Giving up early is safe: the new producer fences the old one and the records are resent.
    transaction_timeout_s: float = Field(10.0, gt=0)
    # How long delivering the dead letters (commit step 1) or reading the dead-letter topic back (the
    # replay guard) may take before the step is given up and retried (streaming.dead_letters).
    dead_letter_timeout_s: float = Field(10.0, gt=0)
    metrics_port: int = 9464  # 0 disables the Prometheus endpoint
    checkpoint_dir: Path | None = None  # default: <state_dir>/checkpoints
    offline_dir: Path | None = None  # default: <state_dir>/offline (partitioned parquet history)


class FeastSettings(BaseModel):
    online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_connection_string: SecretStr = SecretStr("127.0.0.1:6379")
    registry_url: SecretStr | None = None  # SQL registry (production), e.g. postgresql+psycopg://...
    data_dir: Path | None = None  # default: <state_dir>/feast
    project: str = "sassflow"


class TrainingSettings(BaseModel):
    registry_url: SecretStr | None = None  # default: sqlite:///<state_dir>/registry.db
    artifact_dir: Path | None = None  # default: <state_dir>/models
    report_dir: Path | None = None  # default: <state_dir>/reports
    embedding_dim: int = 64
    hidden_dims: list[int] = [64, 64]  # MLSAT widths: the SASS step cost against a plain two-tower is `bench train`'s ratio
    pretrain_epochs: int = 2
    # stage 1 runs more epochs on a small window so that it takes at least this many steps: an epoch
    # has a step per pretrain_batch_size views, a few on a small window against ~55 on MovieLens-1M,
    # and validation recall peaked near the steps MovieLens-1M's 2 epochs take (README, issue #16)
    min_pretrain_steps: int = 100
    # stage 2's ceiling: early stopping on validation recall picks the epochs (training/trainer.py),
    # so a small window is not over-trained and a large one not cut short; the ceiling only bounds
    # the time of a run that keeps improving
    finetune_epochs: int = 30
    # epochs without a better validation recall before stopping (0: off); the per-epoch validation
    # recall of a small window is noisy, so one flat epoch must not end the run
    early_stopping_patience: int = 3
    # stage 2's batch shrinks (down to 64) so an epoch has at least this many steps: the batch size
    # above suits a window of ~0.5M clicks, and on a small one it leaves too few updates
    min_steps_per_epoch: int = 100
    batch_size: int = 1024
    pretrain_batch_size: int = 512  # stage 1: views per step (whole users); chosen on validation recall
    learning_rate: float = 2e-3
    temperature: float = 0.1
    global_loss_weight: float = 0.3
    global_dropout: float = 0.0  # model.py choice 3; dropping the global input hurt validation recall on small windows (it starves sparse scenarios)
    quality_tolerance: float = 0.02
    seed: int = 0
    torch_threads: int = 1  # small matmuls gain nothing from intra-op threads; scale out with torchrun
    log_q_correction: bool = True
    # the item tower reads the item's train click share in the scenario (model.py, choice 11):
    # cosine vectors cannot carry a per-item bias, and on small data the popularity prior is most
    # of what there is to learn
    item_popularity_feature: bool = True
    # How long a promotion (the gate's compare-and-promote, a publish) waits for another one to
    # finish before giving up: a gate re-scores the champion, so it must cover the slowest gate.
    promotion_lock_timeout_s: float = Field(3600.0, gt=0)


class RankingSettings(BaseModel):
    """The ranking stage after recall (``training.ranking``, ``serving.ranking``)."""

    enabled: bool = True  # train rankers in the retrain and rank at serving when the bundle has them
    # Candidates the recall stage hands to ranking per request (the merged ~500), and how many
    # the coarse ranker keeps for the fine one (~100): the fine ranker's cost is per kept candidate.
    candidates: int = Field(500, ge=1)
    coarse_keep: int = Field(100, ge=1)
    # Negatives drawn per training request, uniformly from its recalled candidates that were not
    # clicked, shown or not (the exposure gap: at serving the ranker scores recalled items nobody
    # showed, which impressions alone never cover; a uniform draw keeps the ranking unbiased).  A
    # twentieth of the candidates: twice as many cost half again the fine ranker's training for a
    # hair of validation NDCG (README), and the rankers must add at most half to a retrain.
    exposure_negatives: int = Field(25, ge=1)
    # The rankers' loss: LambdaRank (every (clicked, not clicked) pair of a request's rows, weighted by
    # the NDCG change of swapping them in the current order: the metric itself, which the softmax only
    # approximates; chosen on validation NDCG@10, for both rankers), a softmax over each request's rows
    # (every click against its request's candidates) or pointwise cross-entropy.
    loss: Literal["lambdarank", "softmax", "bce"] = "lambdarank"
    # Each request weighted by 1 / its scenario's share of the training requests: the metric is the
    # mean over scenarios, and family has the fewest requests (an eighth) and clicks per request
    # (chosen on validation NDCG@10, mean and family; the gain is within the noise of its requests).
    scenario_balance: bool = True
    # Both rankers score recall weight x the recall score + a learned correction, starting as the
    # recall order (``training.rankers.RankerConfig.residual``); the weight starts at the recall
    # model's inverse temperature (its scores are cosines its own softmax divided by the temperature).
    residual: bool = True
    # Share of the users whose validation requests are held out to pick the fine ranker's epoch and
    # to gate the rankers (never trained on).
    holdout: float = Field(0.15, gt=0, lt=1)
    # The best of these on the validation lists is kept (at ``learning_rate`` the residual coarse MLP
    # still gains a little up to the tenth or so, within validation noise; an epoch of the LambdaRank
    # loss costs twice the softmax's, and the rankers must not cost a retrain much more: eight).
    coarse_epochs: int = Field(8, ge=1)
    # The best of these on the validation lists is kept (the first epoch is close to the best, the
    # second sometimes gains a little, a third did not; each costs as much as building the lists).
    fine_epochs: int = Field(2, ge=1)
    batch_lists: int = Field(128, ge=1)  # requests per fine-ranker step (their sequences encoded once)
    # The coarse MLP's (a lower rate with more, cheap, epochs beat 2e-3 on validation) and the fine
    # ranker's (it only has two epochs: the higher rate).
    learning_rate: float = 1e-3
    fine_learning_rate: float = 2e-3
    # The fine ranker's dropout: its correction of the coarse logit overfits the few thousand training
    # requests (0.1 did no better on validation).
    dropout: float = Field(0.3, ge=0, lt=1)
    dim: int = 32  # the fine ranker's embedding width: its cost per candidate grows with it
    # The gate: the cascade's validation NDCG@10 must exceed the recall order's x (1 + min_gain).
    min_gain: float = Field(0.0, ge=0)
    # Item features read per request at serving are cached this long (one online-store read for the
    # misses instead of ~500 keys per request); the windows move by the minute, so a second is fresh.
    item_cache_s: float = Field(1.0, ge=0)


MIN_ADMIN_TOKEN_CHARS = 32


class ContentSettings(BaseModel):
    """The content tower (training.content_model): item content -> a vector in each scenario's SASS
    item space, trained after SASS on the warm items, so a new item is retrievable from its content."""

    enabled: bool = True  # training.content.train_content trains it after SASS; off: bundles without it
    text_buckets: int = Field(1 << 14, ge=64)  # hashed word/bigram/char-3-gram rows: few collisions for a catalogue of thousands of titles
    tag_buckets: int = Field(1 << 12, ge=16)  # hashed tags, year and attribute tokens
    hidden_dim: int = 128
    image: bool = True  # use the image encoder when items carry images
    epochs: int = 60  # a few thousand warm items: one epoch is a handful of steps
    batch_size: int = 256
    learning_rate: float = 5e-3
    temperature: float = 0.1  # as SASS's own losses: the targets are SASS vectors on the same unit sphere
    # New items share each scenario's index with the warm ones; their vectors are shortened until
    # they cost the warm items at most this share of validation recall@50 (the issue asks >= 0.99x).
    warm_tolerance: float = Field(0.01, ge=0.0, le=1.0)


class ServingSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    # Processes answering requests on the one port (each loads the bundle and follows CURRENT on its
    # own; /metrics sums them).  One process is bound by its GIL; on N cores, up to N workers.
    workers: int = Field(1, ge=1)
    bundle_dir: Path | None = None  # default: <state_dir>/bundles
    # Admin endpoints refuse every request while unset.  At least 32 characters when set: the token
    # is all that guards rollback/reload, so it must not be guessable (`secrets.token_urlsafe(32)`).
    admin_token: SecretStr | None = None
    omp_threads: int = 1
    torch_threads: int = 1
    watch_interval_s: float = 1.0
    k_max: int = 500
    exact_index_max_items: int = 50_000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128
    ivf_nlist: int | None = None  # default: ~4*sqrt(n)
    ivf_nprobe: int = 32
    ann_index: Literal["hnsw", "ivf"] = "ivf"  # with ann_backend faiss: IVF builds faster than HNSW at 1M items
    # The library of the approximate index: hnswlib (HNSW, hnsw_* parameters) or FAISS (ann_index
    # picks IVF or HNSW).  Chosen by `sassflow bench ann`'s rule, the lowest p99 at recall@100 >= 0.95
    # (README, "ANN backends", has the trade: FAISS IVF builds faster and holds half the memory).
    ann_backend: Literal["faiss", "hnswlib"] = "hnswlib"
    batch_max_requests: int = 256  # POST /recommend/batch size limit
    # New items from the catalogue topic: a consumer thread in the service encodes them with the
    # bundle's content tower and adds them to a side index searched with each scenario's main one.
    catalog_consumer: bool = True
    catalog_poll_ms: int = 200  # an item is searchable one poll + one encode after it is produced
    # Request bodies larger than this are refused with 413 before they are read.  The largest valid
    # batch (batch_max_requests entries with 19-digit ids, pretty-printed) is about 26 KiB; the rest
    # is headroom for new request fields, while parsing a body this size costs about a millisecond.
    max_body_bytes: int = Field(65_536, ge=1024)
    # An online-store read still pending after this is answered with a 503.  Above 5 s because the
    # embedded SQLite store makes a read wait up to 5 s (Python's sqlite3 busy timeout) while the
    # ingest commits a write, and such a read still succeeds; with Redis, whose reads take
    # milliseconds, set it well below a second.
    feature_timeout_s: float = Field(6.0, gt=0)
    # Threads doing online-store reads; when all are stuck on a hung store, further reads time
    # out at once instead of piling up.
    feature_read_threads: int = Field(8, ge=1)
    # /readyz probes the online store at most this often (it is unauthenticated and polled).
    feature_probe_interval_s: float = Field(1.0, ge=0)

    @field_validator("admin_token")
    @classmethod
    def _guessable_token(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < MIN_ADMIN_TOKEN_CHARS:
            raise ValueError(f"must be at least {MIN_ADMIN_TOKEN_CHARS} characters (or unset to disable the "
                             "admin endpoints); e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'")
        return v


class MergeSettings(BaseModel):
    """How one scenario's branches are merged into the candidate list (``serving.merge``)."""

    # "quota": each branch holds its share of every prefix of the list; "rrf": weighted
    # reciprocal-rank fusion.  The default is what `bench quality` chose on the validation split of
    # MovieLens-1M among quotas and RRF weightings (README, "Recall branches"): equal-weight RRF
    # loses to SASS alone there; SASS weighted twice the i2i branch and 8-20x tags and trending wins.
    strategy: Literal["quota", "rrf"] = "rrf"
    # Share of the list per branch (quota) or weight of its ranks (rrf); a branch left out gets 0.
    # content only answers users who clicked new (not yet bundled) items: they should see such items
    weights: dict[str, float] = {"sass": 2.0, "i2i": 1.0, "tags": 0.1, "trending": 0.25, "content": 1.0}
    # rank r counts weight / (rrf_k + r + 1): below the usual 60 a branch's head counts more than
    # agreement deep in the lists (chosen on validation with the weights above)
    rrf_k: float = Field(20.0, ge=0)


class RecallSettings(BaseModel):
    """The streaming recall structures (``streaming.recall_structures``) and the branches serving
    runs over them (``serving.recall``)."""

    stream: bool = True  # run the recall stage in the ingest (streaming.recall_stage)
    catalog_dir: Path | None = None  # default: <state_dir>/catalog (the item-tag catalog)
    # Where the structures live: "sqlite" (embedded default, no server) or "redis" (production);
    # None follows feast.online_store (and its Redis connection string).
    store: Literal["sqlite", "redis"] | None = None
    sqlite_path: Path | None = None  # default: <state_dir>/recall.db
    redis_prefix: str = "sassflow:recall:"
    # Co-click pairs: clicks at most pair_window positions apart in a user's sequence and at most
    # pair_max_gap_ms apart in time (one session, not a month-old click).
    pair_window: int = Field(10, ge=1)
    pair_max_gap_ms: int = Field(86_400_000, ge=0)
    tile_ms: int = Field(3_600_000, ge=1_000)  # counts are kept per hour: decay resolution
    horizon_ms: int = Field(30 * 86_400_000, ge=1)  # older tiles are dropped: memory bound per item
    half_life_ms: int = Field(7 * 86_400_000, ge=0)  # read-time decay of counts; 0 = none
    neighbours: int = Field(100, ge=1)  # stored co-clicked items per (item, scenario)
    tag_items: int = Field(200, ge=1)  # stored items per (tag, scenario)
    trending_items: int = Field(500, ge=1)  # stored items per scenario
    # Serving.  Branches on when a request names none; a request's `branches=` picks among them.
    branches: list[str] = ["sass", "i2i", "tags", "trending", "content"]
    # A branch slower than this is skipped (metric sassflow_recall_branch_skipped_total) and the
    # request answered from the others: a store stall must not stall every request.
    branch_budget_ms: float = Field(30.0, gt=0)
    i2i_triggers: int = Field(20, ge=1)  # the user's newest clicks whose neighbours are looked up
    i2i_norm: float = Field(0.5, ge=0)  # co-clicks / trigger clicks ** i2i_norm: tames hub triggers
    preferred_tags: int = Field(3, ge=1)  # the user's top tags (from their recent clicks) looked up
    merge: MergeSettings = MergeSettings()
    merge_by_scenario: dict[str, MergeSettings] = {}  # per-scenario overrides of merge

    def merge_for(self, scenario: str) -> MergeSettings:
        return self.merge_by_scenario.get(scenario, self.merge)


class AirflowSettings(BaseModel):
    home: Path | None = None  # default: <state_dir>/airflow
    host: str = "127.0.0.1"
    port: int = 8080
    schedule: str = "@daily"
    sql_alchemy_conn: SecretStr | None = None  # default: sqlite in home (or the local Postgres with --postgres)
    postgres_port: int = 15432  # the throwaway local PostgreSQL of `sassflow airflow up --postgres`
    train_window_days: int = Field(28, ge=1)  # the retrain DAG trains on this many days up to its run
    # The Airflow pool of the heavy tasks (snapshot, training, evaluation, gate, bundle, publish):
    # with one slot, runs of both DAGs (backfills included, whose own max_active_runs Airflow does not
    # tie to the DAG's) never train at once.  `sassflow airflow up` creates it; a deployment must
    # create it too (README), or set "default_pool" to opt out.
    training_pool: str = "sassflow_training"
    # execution_timeout of every heavy task: a hung task fails (and retries) instead of holding the
    # pool slot for ever; generous, since a full MovieLens-1M training takes minutes on 2 cores.
    task_timeout_minutes: int = Field(180, ge=1)


# Paths that default to a place under state_dir: (section, field, path below state_dir).
STATE_PATHS = (("local_kafka", "data_dir", "kafka"), ("streaming", "checkpoint_dir", "checkpoints"),
               ("streaming", "offline_dir", "offline"), ("feast", "data_dir", "feast"),
               ("training", "artifact_dir", "models"), ("training", "report_dir", "reports"),
               ("serving", "bundle_dir", "bundles"), ("airflow", "home", "airflow"),
               ("recall", "catalog_dir", "catalog"), ("recall", "sqlite_path", "recall.db"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SASSFLOW_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    state_dir: Path = Path(".sassflow")
    scenarios: list[str] = Field(default_factory=lambda: list(DEFAULT_SCENARIOS))
    kafka: KafkaSettings = KafkaSettings()
    local_kafka: LocalKafkaSettings = LocalKafkaSettings()
    data: DataSettings = DataSettings()
    streaming: StreamingSettings = StreamingSettings()
    feast: FeastSettings = FeastSettings()
    training: TrainingSettings = TrainingSettings()
    content: ContentSettings = ContentSettings()
    serving: ServingSettings = ServingSettings()
    recall: RecallSettings = RecallSettings()
    ranking: RankingSettings = RankingSettings()
    airflow: AirflowSettings = AirflowSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = Path(os.environ.get("SASSFLOW_CONFIG", "sassflow.toml"))
        sources = [init_settings, env_settings]
        if toml_path.exists():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    _derived: set = PrivateAttr(default_factory=set)  # the (section, field) pairs derived below

    @model_validator(mode="after")
    def _derive_paths(self) -> "Settings":
        self.state_dir = Path(self.state_dir).absolute()
        s = self.state_dir
        for section, name, below in STATE_PATHS:
            part = getattr(self, section)
            if getattr(part, name) is None:
                setattr(part, name, s / below)
                self._derived.add((section, name))
        if self.training.registry_url is None:
            self.training.registry_url = SecretStr(f"sqlite:///{s / 'registry.db'}")
            self._derived.add(("training", "registry_url"))
        if len(set(self.scenarios)) != len(self.scenarios) or not self.scenarios:
            raise ValueError("scenarios must be a non-empty list of distinct names")
        return self

    def relocated(self, state_dir) -> "Settings":
        """These settings with another state_dir: every path derived from the old one is derived
        again from the new one; paths set explicitly stay as they are."""
        data = self.model_dump()
        data["state_dir"] = state_dir
        for section, name in self._derived:
            data[section][name] = None
        return type(self).model_validate(data)

    @property
    def recall_store(self) -> str:
        """The recall structures' backend: recall.store, else the Feast online store's kind."""
        return self.recall.store or self.feast.online_store

    def scenario_id(self, name: str) -> int:
        return self.scenarios.index(name)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (tests build their own ``Settings(...)`` instead)."""
    return Settings()


def settings_env(settings: Settings, include_secrets: bool = True) -> dict[str, str]:
    """``SASSFLOW_...`` variables that rebuild ``settings`` in a child process (secrets included
    unless ``include_secrets`` is False: then a file can hold them; a derived default, e.g. the
    SQLite registry URL, is derived again from ``state_dir``)."""
    env: dict[str, str] = {}

    def put(prefix: str, model: BaseModel) -> None:
        for name in type(model).model_fields:
            value = getattr(model, name)
            key = f"{prefix}{name.upper()}"
            if isinstance(value, BaseModel):
                put(key + "__", value)
            elif value is None:
                continue
            elif isinstance(value, SecretStr):
                if include_secrets:
                    env[key] = value.get_secret_value()
            elif isinstance(value, (list, dict)):
                env[key] = json.dumps(value)
            else:
                env[key] = str(value)

    put("SASSFLOW_", settings)
    return env
