"""Apache Kafka as a local broker: one KRaft node (combined broker and controller) on the JVM.

The test suite and the benchmarks run on it, because what Driftline promises (exactly-once
output, no duplicates after kill -9, latency) is only worth measuring on the broker users
run.  ``driftline broker --kind kafka`` runs the same broker in the foreground.

Where it comes from: the jars named in ``data/kafka-broker-pom.xml`` (pinned versions) are
copied from Maven Central by ``mvn dependency:copy-dependencies`` into a cache directory
(``$DRIFTLINE_CACHE_DIR`` or ``$XDG_CACHE_HOME/driftline`` or ``~/.cache/driftline``),
once: the directory is keyed by the pom's digest.  Needs Java 17+ (``$JAVA_HOME`` or
``java`` on the PATH) and, for that first fetch, Maven.  Nothing falls back silently: a
missing tool or an unresolvable artifact is a one-line ``BrokerError`` naming it.

Settings fit one machine: replication factor 1 and min ISR 1 for every internal topic
(``__consumer_offsets``, ``__transaction_state``, the share-group state), a 512 MiB heap,
no initial rebalance delay, few I/O and network threads, and timed-out transactions
aborted within a second (Kafka's default checks every 10 s), so a fenced or dead
transactional producer is cleaned up while a test waits.  Storage is on disk under the log
directory (or ``data_dir``): a ``restart()`` comes back with every committed record.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path

from driftline.broker import BrokerError, BrokerProcess, free_port, port_free

__all__ = [
    "KafkaBroker",
    "java_executable",
    "kafka_libs",
    "kafka_version",
]

_POM_NAME = "kafka-broker-pom.xml"
_MAVEN_NS = {"m": "http://maven.apache.org/POM/4.0.0"}
#: The JVM must be at least this major version (Kafka 4's broker requires Java 17).
MIN_JAVA = 17
_DOWNLOADED_JAR = re.compile(r"/([^/\s]+\.jar) \(([^)]*)\)")


def _pom_bytes() -> bytes:
    return resources.files("driftline").joinpath(f"data/{_POM_NAME}").read_bytes()


def kafka_version() -> str:
    """The Apache Kafka version the pom pins (the ``kafka_2.13`` dependency)."""
    root = ET.fromstring(_pom_bytes())
    for dep in root.iterfind("m:dependencies/m:dependency", _MAVEN_NS):
        if dep.findtext("m:artifactId", namespaces=_MAVEN_NS) == "kafka_2.13":
            return dep.findtext("m:version", default="?", namespaces=_MAVEN_NS)
    raise BrokerError(f"{_POM_NAME} names no kafka_2.13 dependency")


def cache_root() -> Path:
    """Where fetched jars live between runs."""
    explicit = os.environ.get("DRIFTLINE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "driftline"


def java_executable() -> str:
    """The ``java`` to run, checked to be Java 17 or newer."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise BrokerError(
            "Java not found: the Kafka broker needs Java 17+ (apt-get install "
            "openjdk-17-jre-headless, or set JAVA_HOME); `--kind tansu` needs no Java"
        )
    try:
        result = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BrokerError(f"cannot run {java} -version: {error}") from error
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if match is None:
        raise BrokerError(f"cannot read the Java version from {java} -version")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_x" style
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise BrokerError(f"{java} is Java {major}; the Kafka broker needs Java {MIN_JAVA}+")
    return java


def _print_progress(line: str) -> None:
    print(f"driftline: {line}", file=sys.stderr, flush=True)


def kafka_libs(progress: Callable[[str], None] | None = _print_progress) -> Path:
    """The directory holding the broker's jars, fetched with Maven the first time.

    ``progress`` gets one line per artifact downloaded (None: silent).  Raises
    ``BrokerError`` naming Maven's own reason (e.g. the artifact it could not resolve).
    """
    pom = _pom_bytes()
    version = kafka_version()
    home = cache_root() / "kafka" / f"{version}-{hashlib.sha256(pom).hexdigest()[:12]}"
    libs = home / "libs"
    if (home / "complete").exists() and any(libs.glob("kafka_2.13-*.jar")):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            f"Maven (mvn) not found: it fetches Apache Kafka {version}'s jars once into "
            f"{home} (apt-get install maven)"
        )
    home.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="libs-", dir=home))
    pom_file = staging / "pom.xml"
    pom_file.write_bytes(pom)
    if progress is not None:
        progress(f"fetching Apache Kafka {version} jars with Maven into {libs} (once)")
    command = [
        mvn,
        "-B",
        "-f",
        str(pom_file),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging / 'libs'}",
    ]
    output: list[str] = []
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=staging,
    )
    assert process.stdout is not None
    for raw in process.stdout:
        line = raw.rstrip()
        output.append(line)
        # "Downloaded from central: <url>/kafka-server-4.4.0.jar (1.2 MB at 3 MB/s)"
        downloaded = _DOWNLOADED_JAR.search(line) if "Downloaded from" in line else None
        if progress is not None and downloaded is not None:
            progress(f"downloaded {downloaded.group(1)} ({downloaded.group(2)})")
    if process.wait() != 0:
        shutil.rmtree(staging, ignore_errors=True)
        errors = [line for line in output if line.startswith("[ERROR]")]
        reason = errors[0].removeprefix("[ERROR] ") if errors else "\n".join(output[-5:])
        raise BrokerError(f"Maven could not fetch Apache Kafka {version}: {reason}")
    shutil.rmtree(libs, ignore_errors=True)
    (staging / "libs").rename(libs)
    shutil.rmtree(staging, ignore_errors=True)
    (home / "complete").write_text("\n".join(sorted(p.name for p in libs.glob("*.jar"))) + "\n")
    if progress is not None:
        progress(f"Apache Kafka {version}: {len(list(libs.glob('*.jar')))} jars in {libs}")
    return libs


def _cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (Kafka's Uuid
    text form; one starting with '-' would read as a command-line flag, so never that)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not text.startswith("-"):
            return text


_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = STDOUT
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
logger.broker.name = kafka.server.BrokerServer
logger.broker.level = INFO
"""


class KafkaBroker(BrokerProcess):
    """One Apache Kafka node in KRaft mode (broker and controller in one JVM).

    ``sasl_users`` (name -> password) adds a SASL_PLAINTEXT listener with the PLAIN
    mechanism on a port of its own (``sasl_bootstrap``), beside the plain one: a stand-in
    for a secured cluster.  ``properties`` override or extend the generated
    ``server.properties``.  ``data_dir`` keeps the storage there (formatted on first use);
    without it, storage lives under the log directory.
    """

    stop_timeout = 20.0

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_dir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 90.0,
        die_with_parent: bool = True,
        data_dir: str | os.PathLike[str] | None = None,
        heap: str = "512m",
        properties: Mapping[str, str] | None = None,
        sasl_users: Mapping[str, str] | None = None,
        progress: Callable[[str], None] | None = _print_progress,
    ) -> None:
        super().__init__(port, host, log_dir, startup_timeout, die_with_parent)
        self.version = kafka_version()
        self.kind = f"Apache Kafka {self.version}"
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._heap = heap
        self._properties = dict(properties or {})
        self._sasl_users = dict(sasl_users or {})
        self._progress = progress
        self.controller_port = 0
        self.sasl_port = 0
        self._java: str | None = None
        self._libs: Path | None = None

    @property
    def sasl_bootstrap(self) -> str:
        """``host:port`` of the SASL_PLAINTEXT listener (needs ``sasl_users``)."""
        if not self._sasl_users:
            raise BrokerError("this broker has no SASL listener (pass sasl_users)")
        return f"{self.host}:{self.sasl_port}"

    @property
    def data_dir(self) -> Path:
        assert self._log_dir is not None
        return self._data_dir or self._log_dir / "data"

    def _prepare(self) -> None:
        assert self._log_dir is not None
        if self._java is None:
            self._java = java_executable()
        if self._libs is None:
            self._libs = kafka_libs(self._progress)
        # Keep the controller's (and SASL) port across restarts when still free.
        if not self.controller_port or not port_free(self.host, self.controller_port):
            self.controller_port = free_port(self.host)
        if self._sasl_users and (not self.sasl_port or not port_free(self.host, self.sasl_port)):
            self.sasl_port = free_port(self.host)
        config = self._log_dir / "server.properties"
        config.write_text(self._server_properties())
        (self._log_dir / "log4j2.properties").write_text(_LOG4J2)
        if not (self.data_dir / "meta.properties").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._format(config)

    def _server_properties(self) -> str:
        host, port, cport = self.host, self.port, self.controller_port
        listeners = [f"PLAINTEXT://{host}:{port}", f"CONTROLLER://{host}:{cport}"]
        advertised = [f"PLAINTEXT://{host}:{port}"]
        props: dict[str, str] = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{host}:{cport}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": (
                "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT"
            ),
            "log.dirs": str(self.data_dir),
            # One machine: every internal topic lives on the one broker.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "8",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "num.partitions": "1",
            "group.initial.rebalance.delay.ms": "0",
            # Abort a transaction whose producer went silent soon after its timeout.
            "transaction.abort.timed.out.transaction.cleanup.interval.ms": "1000",
            "num.network.threads": "2",
            "num.io.threads": "4",
        }
        if self._sasl_users:
            listeners.append(f"SASL_PLAINTEXT://{host}:{self.sasl_port}")
            advertised.append(f"SASL_PLAINTEXT://{host}:{self.sasl_port}")
            users = " ".join(f'user_{name}="{secret}"' for name, secret in self._sasl_users.items())
            props["sasl.enabled.mechanisms"] = "PLAIN"
            props["listener.name.sasl_plaintext.plain.sasl.jaas.config"] = (
                "org.apache.kafka.common.security.plain.PlainLoginModule required " + users + ";"
            )
        props["listeners"] = ",".join(listeners)
        props["advertised.listeners"] = ",".join(advertised)
        props.update(self._properties)
        return "".join(f"{key}={value}\n" for key, value in props.items())

    def _java_command(self, main: str, *args: str, heap: str | None = None) -> list[str]:
        assert self._java is not None and self._libs is not None and self._log_dir is not None
        memory = [f"-Xms{heap}", f"-Xmx{heap}"] if heap else []
        return [
            self._java,
            *memory,
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self._log_dir / 'log4j2.properties'}",
            "-cp",
            str(self._libs / "*"),
            main,
            *args,
        ]

    def _format(self, config: Path) -> None:
        command = self._java_command(
            "kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(config)
        )
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=120, check=False
            )
        except subprocess.TimeoutExpired as error:
            raise BrokerError(f"formatting Kafka storage in {self.data_dir} timed out") from error
        if result.returncode != 0:
            tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
            raise BrokerError(f"formatting Kafka storage failed: {' / '.join(tail)}")

    def _command(self) -> list[str]:
        assert self._log_dir is not None
        return self._java_command(
            "kafka.Kafka", str(self._log_dir / "server.properties"), heap=self._heap
        )

    def __enter__(self) -> KafkaBroker:
        self.start()
        return self
