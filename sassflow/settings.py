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
    finetune_epochs: int = 4
    batch_size: int = 1024
    pretrain_batch_size: int = 512  # stage 1: views per step (whole users); chosen on validation recall
    learning_rate: float = 2e-3
    temperature: float = 0.1
    global_loss_weight: float = 0.3
    global_dropout: float = 0.1
    quality_tolerance: float = 0.02
    seed: int = 0
    torch_threads: int = 1  # small matmuls gain nothing from intra-op threads; scale out with torchrun
    log_q_correction: bool = True
    # How long a promotion (the gate's compare-and-promote, a publish) waits for another one to
    # finish before giving up: a gate re-scores the champion, so it must cover the slowest gate.
    promotion_lock_timeout_s: float = Field(3600.0, gt=0)


MIN_ADMIN_TOKEN_CHARS = 32


class ServingSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
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
    ann_index: Literal["hnsw", "ivf"] = "ivf"  # above exact_index_max_items; IVF builds faster than HNSW at 1M items (`bench ann`)
    batch_max_requests: int = 256  # POST /recommend/batch size limit
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
               ("serving", "bundle_dir", "bundles"), ("airflow", "home", "airflow"))


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
    serving: ServingSettings = ServingSettings()
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
