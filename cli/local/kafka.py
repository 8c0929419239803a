"""A local Apache Kafka 4.x broker (KRaft, combined broker + controller) on loopback, or a local
cluster of several such nodes (``LocalKafkaCluster``: replication 3, ``min.insync.replicas`` 2, a
static controller quorum of every node) for broker-failure tests.

The broker jars come from Maven Central, resolved once by Maven into
``local_kafka.jar_cache_dir/<version>/lib`` (Java 17 runs them).  The data
directory is formatted once (``kafka.tools.StorageTool format --standalone``)
and kept, so a restart keeps the log.  ``LocalKafka`` is used by
``sassflow kafka start|stop|status``, the demo, the benchmarks and the test
suite's session fixture alike.  Topics are created by ``streaming.topics``.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from sassflow.processes import pid_alive, port_open, stop_pid
from sassflow.settings import LocalKafkaSettings, Settings

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>sassflow</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{version}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>2.24.3</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>2.24.3</version></dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: WARN
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.server.KafkaRaftServer
        level: INFO
"""


class BrokerError(RuntimeError):
    pass


@dataclass
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap: str
    data_dir: str
    version: str

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def ensure_jars(cfg: LocalKafkaSettings) -> Path:
    """Resolve the broker and its dependencies from Maven Central once; return the lib folder."""
    root = Path(cfg.jar_cache_dir).expanduser() / cfg.version
    lib = root / "lib"
    marker = root / ".complete"
    if marker.exists():
        return lib
    if shutil.which("mvn") is None or shutil.which("java") is None:
        raise BrokerError("Java 17 and Maven are required (Debian: apt-get install openjdk-17-jre-headless maven)")
    root.mkdir(parents=True, exist_ok=True)
    (root / "pom.xml").write_text(_POM.format(version=cfg.version))
    tmp_lib = root / "lib.tmp"
    shutil.rmtree(tmp_lib, ignore_errors=True)
    proc = subprocess.run(
        ["mvn", "-q", "-B", "-f", str(root / "pom.xml"), "dependency:copy-dependencies",
         f"-DoutputDirectory={tmp_lib}", "-DincludeScope=runtime"],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise BrokerError(f"maven could not resolve kafka_2.13:{cfg.version}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    shutil.rmtree(lib, ignore_errors=True)
    tmp_lib.rename(lib)
    marker.write_text(json.dumps(sorted(p.name for p in lib.iterdir())))
    return lib


@dataclass(frozen=True)
class Node:
    """One KRaft node: its id, ports and data directory; ``voters`` is the static controller quorum
    of a cluster (None: a single node formatted ``--standalone``)."""

    node_id: int
    port: int
    controller_port: int
    data_dir: Path
    voters: str | None = None
    cluster_id: str | None = None
    replicas: int = 1  # replication of the internal topics (and the default of new topics)


class LocalKafka:
    """Start, stop and inspect the local broker described by ``settings.local_kafka`` (or one node of
    a ``LocalKafkaCluster``)."""

    def __init__(self, settings: Settings, node: Node | None = None):
        self.cfg = settings.local_kafka
        self.node = node or Node(1, self.cfg.port, self.cfg.controller_port, Path(self.cfg.data_dir))
        self.data_dir = Path(self.node.data_dir)
        self.log_dir = self.data_dir / "log"
        self.pid_file = self.data_dir / "broker.pid"
        self.bootstrap = f"{self.cfg.host}:{self.node.port}"

    # -- files ---------------------------------------------------------------
    def _properties(self) -> str:
        c, n = self.cfg, self.node
        quorum = (f"controller.quorum.voters={n.voters}" if n.voters
                  else f"controller.quorum.bootstrap.servers={c.host}:{n.controller_port}")
        min_isr = max(1, n.replicas - 1)  # a cluster of 3 keeps acks=all writes going with one node down
        return "\n".join([
            "process.roles=broker,controller",
            f"node.id={n.node_id}",
            quorum,
            f"listeners=PLAINTEXT://{c.host}:{n.port},CONTROLLER://{c.host}:{n.controller_port}",
            f"advertised.listeners=PLAINTEXT://{c.host}:{n.port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={self.log_dir}",
            "num.partitions=4",
            "auto.create.topics.enable=true",
            f"default.replication.factor={n.replicas}",
            f"min.insync.replicas={min_isr}",
            f"offsets.topic.replication.factor={n.replicas}",
            "offsets.topic.num.partitions=8",
            f"transaction.state.log.replication.factor={n.replicas}",
            f"transaction.state.log.min.isr={min_isr}",
            f"share.coordinator.state.topic.replication.factor={n.replicas}",
            f"share.coordinator.state.topic.min.isr={min_isr}",
            "group.initial.rebalance.delay.ms=0",
            "log.retention.hours=-1",
            "message.max.bytes=10485760",
            "",
        ])

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "server.properties"
        props.write_text(self._properties())
        (self.data_dir / "log4j2.yaml").write_text(_LOG4J2)
        return props

    def _java(self, lib: Path, main: str, *args: str) -> list[str]:
        return [
            "java", f"-Xmx{self.cfg.heap}", f"-Xms{self.cfg.heap}",
            "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.yaml'}",
            "-cp", f"{lib}/*", main, *args,
        ]

    def _format_if_needed(self, lib: Path, props: Path) -> None:
        if (self.log_dir / "meta.properties").exists():
            return
        cid = self.node.cluster_id or new_cluster_id()
        quorum = [] if self.node.voters else ["--standalone"]  # static voters: every node formats alike
        proc = subprocess.run(
            self._java(lib, "kafka.tools.StorageTool", "format", *quorum, "-t", cid, "-c", str(props)),
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise BrokerError(f"formatting {self.log_dir} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")

    # -- lifecycle -------------------------------------------------------------
    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def status(self) -> BrokerStatus:
        pid = self.pid()
        running = pid is not None and port_open(self.cfg.host, self.node.port)
        return BrokerStatus(running, pid, self.bootstrap, str(self.data_dir), self.cfg.version)

    def start(self, timeout: float | None = None) -> BrokerStatus:
        proc = self.launch()
        try:
            self._wait_ready(timeout or self.cfg.start_timeout_s, proc)
        except BrokerError:
            self.stop()
            raise
        return self.status()

    def launch(self) -> subprocess.Popen | None:
        """Start the JVM without waiting for it to answer (None if it runs already)."""
        if self.pid() is not None:
            return None
        if port_open(self.cfg.host, self.node.port):
            raise BrokerError(f"port {self.node.port} is already taken by another process")
        lib = ensure_jars(self.cfg)
        props = self._write_config()
        self._format_if_needed(lib, props)
        out = open(self.data_dir / "broker.out", "ab")
        proc = subprocess.Popen(
            self._java(lib, "kafka.Kafka", str(props)),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the caller's terminal must not kill the broker mid-write
        )
        out.close()
        self.pid_file.write_text(str(proc.pid))
        return proc

    def _wait_ready(self, timeout: float, proc: subprocess.Popen | None = None) -> None:
        """Ready = the broker answers a metadata request (not just an open port)."""
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                tail = (self.data_dir / "broker.out").read_text(errors="replace")[-3000:]
                raise BrokerError(f"broker exited with code {proc.returncode}:\n{tail}")
            if port_open(self.cfg.host, self.node.port):
                try:
                    admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
                    try:
                        admin.describe_cluster()
                        return
                    finally:
                        admin.close()
                except (KafkaError, OSError) as exc:
                    last = exc
            time.sleep(0.3)
        raise BrokerError(f"broker did not answer on {self.bootstrap} within {timeout:.0f}s ({last})")

    def stop(self, timeout: float = 60.0) -> bool:
        """SIGTERM (a clean shutdown flushes the log), SIGKILL after ``timeout``. True if it was running."""
        pid = self.pid()
        self.pid_file.unlink(missing_ok=True)
        if pid is None:
            return False
        stop_pid(pid, timeout)
        deadline = time.monotonic() + 15
        while port_open(self.cfg.host, self.node.port) and time.monotonic() < deadline:
            time.sleep(0.2)
        return True

    def kill(self) -> None:
        """kill -9: no flush, no controlled shutdown (the broker-failure test)."""
        import signal

        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.05)


def new_cluster_id() -> str:
    cid = "-"
    while cid.startswith("-"):  # as Kafka's Uuid.randomUuid(): a leading '-' reads as a CLI option
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    return cid


class LocalKafkaCluster:
    """``brokers`` KRaft nodes (each broker + controller, a static quorum of all of them) on loopback:
    node k (1-based) listens on ``port + 2(k-1)`` and ``controller_port + 2(k-1)`` and keeps its data
    in ``<data_dir>/node<k>``.  Internal topics and new topics get replication ``brokers`` and
    ``min.insync.replicas`` ``brokers - 1``, so acks=all writes go on with one node down."""

    def __init__(self, settings: Settings, brokers: int = 3):
        cfg = settings.local_kafka
        root = Path(cfg.data_dir)
        root.mkdir(parents=True, exist_ok=True)
        id_file = root / "cluster.id"
        if not id_file.exists():
            id_file.write_text(new_cluster_id())
        cid = id_file.read_text().strip()
        voters = ",".join(f"{k}@{cfg.host}:{cfg.controller_port + 2 * (k - 1)}" for k in range(1, brokers + 1))
        self.nodes = [LocalKafka(settings, Node(k, cfg.port + 2 * (k - 1), cfg.controller_port + 2 * (k - 1),
                                                root / f"node{k}", voters, cid, brokers))
                      for k in range(1, brokers + 1)]
        self.bootstrap = ",".join(n.bootstrap for n in self.nodes)

    def start(self, timeout: float | None = None) -> list[BrokerStatus]:
        """Launch every node, then wait for each (a node answers once the quorum has formed)."""
        procs = [n.launch() for n in self.nodes]
        timeout = timeout or self.nodes[0].cfg.start_timeout_s
        try:
            for node, proc in zip(self.nodes, procs):
                node._wait_ready(timeout, proc)
        except BrokerError:
            self.stop()
            raise
        return [n.status() for n in self.nodes]

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
