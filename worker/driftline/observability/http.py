"""Tiny HTTP side-car for ``/metrics``, ``/healthz``, ``/readyz`` and ``POST /alerts``.

Why a hand-rolled server instead of ``prometheus_client.start_http_server``: the worker also
needs liveness and readiness endpoints with its own logic, a server that can be stopped
cleanly (tests start and stop many), and port 0 so parallel tests never collide.

* ``/healthz`` (liveness) only asks "is the main loop still turning?". It deliberately does
  not look at the broker or the model: restarting a worker because Kafka is down does not
  fix Kafka, it only adds rebalances.  One exception: an exactly-once worker whose batches
  abort again and again (5 in a row without a commit) turns its loop without progress, and
  says so (``"status": "abort_loop"``, 503).
* ``/readyz`` (readiness) asks "is this worker doing useful work?": partitions assigned,
  model loaded, broker reachable. The body names the failing conditions so an operator does
  not have to read logs to learn why.
* ``POST /alerts`` (when the server is given an :class:`AlertIntake`) takes Alertmanager's
  webhook notifications: validated and queued here, handled by the worker's poll loop (see
  :mod:`driftline.observability.alerts`).  The body is read only up to a size limit, and any
  failure is an HTTP error for that request, never an exception in the worker.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from driftline.config import DEFAULT_METRICS_PORT
from driftline.observability.alerts import MAX_BODY_BYTES, AlertIntake

__all__ = ["DEFAULT_MAX_HEARTBEAT_AGE", "HealthServer", "HealthState", "PortInUse"]

log = logging.getLogger(__name__)

DEFAULT_MAX_HEARTBEAT_AGE = 30.0


@dataclass
class HealthState:
    """What the worker tells the health endpoints; safe to update from any thread.

    Heartbeat age uses ``time.monotonic`` so wall-clock steps (NTP, manual changes) neither kill
    nor resurrect a worker. The heartbeat starts at construction time, which gives a fresh
    worker one ``max_age`` of grace to enter its loop before liveness fails.

    ``broker_ok`` starts optimistic: librdkafka reports broker trouble through ``error_cb``
    (e.g. ``_ALL_BROKERS_DOWN``) but has no "broker is up" event, and a non-empty assignment
    already proves the group coordinator was reached. The worker flips it to False from the
    error callback and back to True after the next successful poll or commit.

    ``require_assignment=False`` is for deployments with more workers than partitions,
    where an idle standby is healthy and should not be reported unready forever.
    """

    require_assignment: bool = True
    assigned_partitions: int = 0
    model_loaded: bool = False
    broker_ok: bool = True
    model_reason: str | None = "model not loaded yet"
    broker_reason: str | None = None
    assignment_reason: str | None = None
    #: Set while assigned partitions' state is being restored from the changelog.
    restoring_reason: str | None = None
    #: Monotonic start of the batch being produced/committed, None between batches.
    batch_started: float | None = None
    #: A batch stuck longer than this (a broker that stopped answering) makes it unready.
    max_batch_seconds: float = 10.0
    #: Exactly-once transactions aborted since the last committed batch.  A worker that
    #: aborts and rewinds again and again turns its loop (the heartbeat is fresh) but
    #: makes no progress: from ``max_aborts_in_a_row`` on, liveness fails.
    aborts_in_a_row: int = 0
    max_aborts_in_a_row: int = 5
    last_beat: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def beat(self) -> None:
        """Call once per main-loop iteration, including idle polls."""
        with self._lock:
            self.last_beat = time.monotonic()

    def begin_batch(self) -> None:
        with self._lock:
            self.batch_started = time.monotonic()

    def end_batch(self) -> None:
        with self._lock:
            self.batch_started = None

    def note_abort(self) -> None:
        """A batch's transaction was aborted (the worker rewinds)."""
        with self._lock:
            self.aborts_in_a_row += 1

    def note_commit(self) -> None:
        """A batch was committed: whatever aborted before, the worker progresses."""
        with self._lock:
            self.aborts_in_a_row = 0

    def set_restoring(self, reason: str | None) -> None:
        """Not ready while ``reason`` is set: state of assigned partitions is being restored."""
        with self._lock:
            self.restoring_reason = reason

    def set_assigned(self, n: int, reason: str | None = None) -> None:
        """Record the current assignment size (call from on_assign / on_revoke / on_lost)."""
        with self._lock:
            self.assigned_partitions = int(n)
            self.assignment_reason = reason

    def set_model_loaded(self, loaded: bool, reason: str | None = None) -> None:
        """``reason`` explains a failure (e.g. "sha256 mismatch") and shows in /readyz."""
        with self._lock:
            self.model_loaded = bool(loaded)
            self.model_reason = None if loaded else (reason or "model not loaded")

    def set_broker_ok(self, ok: bool, reason: str | None = None) -> None:
        """Fed from ``error_cb`` (False) and from successful polls or commits (True)."""
        with self._lock:
            self.broker_ok = bool(ok)
            self.broker_reason = None if ok else (reason or "broker unreachable")

    def heartbeat_age(self) -> float:
        """Seconds since the last :meth:`beat`."""
        with self._lock:
            last = self.last_beat
        return max(0.0, time.monotonic() - last)

    def liveness(self, max_age: float) -> tuple[bool, dict[str, Any]]:
        """``(alive, body)`` for ``/healthz``."""
        age = self.heartbeat_age()
        with self._lock:
            aborts = self.aborts_in_a_row
        looping = aborts >= self.max_aborts_in_a_row
        ok = age <= max_age and not looping
        status = "ok" if ok else ("stale" if age > max_age else "abort_loop")
        return ok, {
            "status": status,
            "heartbeat_age_seconds": round(age, 3),
            "max_age_seconds": max_age,
            "aborts_in_a_row": aborts,
        }

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """``(ready, body)`` for ``/readyz``; ``failing`` maps each failed check to why."""
        with self._lock:
            assigned = self.assigned_partitions
            checks = {
                "partitions_assigned": (
                    assigned > 0 or not self.require_assignment,
                    self.assignment_reason or "no partitions assigned",
                ),
                "model_loaded": (self.model_loaded, self.model_reason or "model not loaded"),
                "broker_reachable": (self.broker_ok, self.broker_reason or "broker unreachable"),
                "state_restored": (self.restoring_reason is None, self.restoring_reason or ""),
                "batch_progressing": (
                    self.batch_started is None
                    or time.monotonic() - self.batch_started <= self.max_batch_seconds,
                    f"a batch has been in flight for more than {self.max_batch_seconds:g} s "
                    "(broker not answering?)",
                ),
            }
        failing = {name: why for name, (ok, why) in checks.items() if not ok}
        return not failing, {
            "status": "ready" if not failing else "not_ready",
            "assigned_partitions": assigned,
            "checks": {name: ok for name, (ok, _) in checks.items()},
            "failing": failing,
        }


class MetricsSource(Protocol):
    """What ``/metrics`` serves: a registry (the worker's, ``driftline quality``'s)."""

    registry: CollectorRegistry


class PortInUse(OSError):
    """The HTTP port is taken by another process (``str()`` names host and port)."""

    def __str__(self) -> str:
        return str(self.strerror)


class _Server(ThreadingHTTPServer):
    """Carries the shared objects to the handler; request threads never block shutdown."""

    daemon_threads = True
    metrics: MetricsSource
    health: HealthState
    max_heartbeat_age: float
    alerts: AlertIntake | None


class _V6Server(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "driftline"
    timeout = 10  # a stuck scraper must not pin a thread forever

    def do_GET(self) -> None:
        self._dispatch(send_body=True)

    def do_HEAD(self) -> None:
        self._dispatch(send_body=False)

    def _dispatch(self, *, send_body: bool) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            if path == "/metrics":
                body = generate_latest(self.server.metrics.registry)
                self._send(HTTPStatus.OK, body, CONTENT_TYPE_LATEST, send_body)
            elif path == "/healthz":
                ok, doc = self.server.health.liveness(self.server.max_heartbeat_age)
                self._send_json(ok, doc, send_body)
            elif path == "/readyz":
                ok, doc = self.server.health.readiness()
                self._send_json(ok, doc, send_body)
            elif path == "/alerts" and self.server.alerts is not None:
                body = b"POST Alertmanager webhook notifications here\n"
                self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
                self.send_header("Allow", "POST")
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if send_body:
                    self.wfile.write(body)
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain", send_body)
        except Exception:  # a broken collector must not kill the server thread
            log.exception("health server failed to serve %s", path)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, b"error\n", "text/plain", send_body)

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        alerts = self.server.alerts
        if path != "/alerts" or alerts is None:
            self.close_connection = True  # the body, if any, is left unread
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain", True)
            return
        try:
            status, doc = self._receive_alerts(alerts)
        except OSError as error:  # the client went away or stalled mid-body: nobody to answer
            log.warning("/alerts: reading the request failed: %s", error)
            self.close_connection = True
            return
        except Exception:  # a bug here must cost one request, not the server thread
            log.exception("/alerts failed")
            status, doc = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"}
        self._send_status_json(status, doc)

    def _receive_alerts(self, alerts: AlertIntake) -> tuple[HTTPStatus, dict[str, Any]]:
        """Read the body (Content-Length, at most MAX_BODY_BYTES) and hand it to the intake."""
        if not alerts.authorized(self.headers.get("Authorization")):
            self.close_connection = True  # the body is left unread
            return alerts.refuse(HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token")
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            self.close_connection = True
            return alerts.refuse(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
        try:
            length = int(length_header)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            return alerts.refuse(HTTPStatus.BAD_REQUEST, "invalid Content-Length")
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            return alerts.refuse(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes"
            )
        body = self.rfile.read(length)
        if len(body) < length:
            raise ConnectionError(f"body ended after {len(body)} of {length} bytes")
        return alerts.submit(body)

    def _send_json(self, ok: bool, doc: dict[str, Any], send_body: bool) -> None:
        status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
        body = json.dumps(doc, sort_keys=True).encode() + b"\n"
        self._send(status, body, "application/json", send_body)

    def _send_status_json(self, status: HTTPStatus, doc: dict[str, Any]) -> None:
        body = json.dumps(doc, sort_keys=True).encode() + b"\n"
        extra = {"WWW-Authenticate": "Bearer"} if status == HTTPStatus.UNAUTHORIZED else {}
        self._send(status, body, "application/json", True, extra)

    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        ctype: str,
        send_body: bool,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request stderr lines (scrapes every few seconds would flood logs)."""
        log.debug("%s - " + format, self.address_string(), *args)


class HealthServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` from a daemon thread, and
    ``POST /alerts`` into ``alerts`` when one is given (404 otherwise).

    ``port=0`` picks a free port; read the real one from :attr:`port` after :meth:`start`.
    Usable as a context manager (start on enter, stop on exit).
    """

    def __init__(
        self,
        metrics: MetricsSource,
        host: str = "127.0.0.1",
        port: int = DEFAULT_METRICS_PORT,
        health: HealthState | None = None,
        *,
        max_heartbeat_age: float = DEFAULT_MAX_HEARTBEAT_AGE,
        alerts: AlertIntake | None = None,
    ) -> None:
        self.metrics = metrics
        self.host = host
        self.health = health if health is not None else HealthState()
        self.max_heartbeat_age = float(max_heartbeat_age)
        self.alerts = alerts
        self._requested_port = int(port)
        self._bound_port: int | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        """The bound port once started (resolves port 0; kept after stop), else the requested."""
        return self._bound_port if self._bound_port is not None else self._requested_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> HealthServer:
        """Bind and serve; binding errors (port in use) raise here, in the caller."""
        with self._lock:
            if self._server is not None:
                return self
            cls = _V6Server if ":" in self.host else _Server
            try:
                server = cls((self.host, self._requested_port), _Handler)
            except OSError as error:
                if error.errno != errno.EADDRINUSE:
                    raise
                raise PortInUse(
                    error.errno, f"port {self._requested_port} on {self.host} is already in use"
                ) from error
            server.metrics = self.metrics
            server.health = self.health
            server.max_heartbeat_age = self.max_heartbeat_age
            server.alerts = self.alerts
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.1},
                name=f"driftline-http:{server.server_address[1]}",
                daemon=True,
            )
            thread.start()
            self._server, self._thread = server, thread
            self._bound_port = int(server.server_address[1])
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, close the socket and join the thread; safe to call twice."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout)

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
