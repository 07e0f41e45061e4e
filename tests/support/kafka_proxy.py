"""A TCP proxy in front of a Kafka broker that can hold back one kind of request, or
hold back and falsify the broker's answer to it.

Why: some faults depend on *when* a request reaches the broker, e.g. a transaction's
commit (EndTxn) arriving after the broker aborted the transaction for its timeout.
Freezing the broker (SIGSTOP) hits that moment only by chance; holding the request in a
proxy hits it every time (``hold``).  The opposite case, a commit the broker made whose
client was told it failed, is an answer lost or wrong on the way back: ``answer`` lets
the request through at once and hands the client, late, the given error instead of the
broker's answer.  The broker must advertise the proxy's address (``advertised.listeners``)
so that every client connection goes through it.

Frames are forwarded in order; a held request (or answer) delays its connection's later
ones too (as a slow network would), never reorders them.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "END_TXN",
    "INVALID_PRODUCER_EPOCH",
    "INVALID_RECORD",
    "PRODUCE",
    "PRODUCER_FENCED",
    "KafkaProxy",
]

#: Kafka API keys: Produce, and EndTxn (a transaction's commit or abort).
PRODUCE = 0
END_TXN = 26
#: Each one's first flexible version (a tagged-fields byte after the answer's
#: correlation id, compact arrays and strings).
FLEXIBLE_FROM = {PRODUCE: 9, END_TXN: 3}
#: Kafka error codes: a fenced producer; a record batch the broker refused.
INVALID_PRODUCER_EPOCH = 47
PRODUCER_FENCED = 90
INVALID_RECORD = 87


@dataclass
class _Answer:
    """Which answers of one API are falsified, and how."""

    until: float  # requests arriving before then (monotonic)
    error_code: int
    hold: bool  # held until ``until`` before going back
    client_id: str | None  # only requests of this client id (None: any)
    left: int | None  # how many more (None: no limit)


class KafkaProxy:
    """Listens on ``port`` (0: any free one) and forwards to ``upstream``."""

    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1", port: int = 0):
        self.upstream = upstream
        self._server = socket.create_server((host, port), reuse_port=False)
        self.host, self.port = self._server.getsockname()[:2]
        self._hold: dict[int, float] = {}  # api key -> monotonic time its hold ends
        self._answer: dict[int, _Answer] = {}
        self.answered = threading.Event()  # set once a falsified answer went back
        self._lock = threading.Lock()
        self.held = threading.Event()  # set once a request was held back
        self.released = threading.Event()  # set once a held request went on
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._start(self._accept)

    def hold(self, api_key: int, seconds: float) -> None:
        """Hold every request of ``api_key`` (any connection) that arrives in the next
        ``seconds`` until they are over: a client that gives up on one and retries on
        another connection is held too."""
        with self._lock:
            self._hold[api_key] = time.monotonic() + seconds
        self.held.clear()
        self.released.clear()

    def answer(
        self,
        api_key: int,
        seconds: float,
        error_code: int,
        *,
        hold: bool = True,
        client_id: str | None = None,
        count: int | None = None,
    ) -> None:
        """Forward every request of ``api_key`` (EndTxn or Produce) that arrives in the
        next ``seconds`` at once, and give the client ``error_code`` in place of the
        broker's (Produce: the first partition's).  ``hold``: the answer is held until
        those seconds are over.  ``client_id``: only that client's requests; ``count``:
        only that many.  The broker did what was asked; the client is told it failed."""
        assert api_key in FLEXIBLE_FROM, "only EndTxn and Produce answers are rewritten"
        with self._lock:
            self._answer[api_key] = _Answer(
                time.monotonic() + seconds, error_code, hold, client_id, count
            )
        self.held.clear()
        self.answered.clear()

    def close(self) -> None:
        self._closed.set()
        for sock in [self._server, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> KafkaProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                broker = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            self._sockets += [client, broker]
            # correlation id -> (api key, request's api version, the falsified answer)
            rewrite: dict[int, tuple[int, int, _Answer]] = {}
            self._start(self._requests, client, broker, rewrite)
            self._start(self._responses, broker, client, rewrite)

    def _responses(
        self,
        broker: socket.socket,
        client: socket.socket,
        rewrite: dict[int, tuple[int, int, _Answer]],
    ) -> None:
        """Broker to client, frame by frame (size-prefixed; the correlation id first)."""
        try:
            while True:
                header = _read(broker, 4)
                if header is None:
                    return
                (size,) = struct.unpack(">i", header)
                body = _read(broker, size)
                if body is None:
                    return
                (correlation_id,) = struct.unpack(">i", body[:4])
                with self._lock:
                    falsified = rewrite.pop(correlation_id, None)
                if falsified is not None:
                    api_key, version, answer = falsified
                    if answer.hold and (wait := answer.until - time.monotonic()) > 0:
                        time.sleep(wait)
                    at = _error_code_at(api_key, version, body)
                    body = body[:at] + struct.pack(">h", answer.error_code) + body[at + 2 :]
                    self.answered.set()
                client.sendall(header + body)
        except OSError:
            pass
        finally:
            self._shut(broker, client)

    def _requests(
        self,
        client: socket.socket,
        broker: socket.socket,
        rewrite: dict[int, tuple[int, int, _Answer]],
    ) -> None:
        """Client to broker, frame by frame (size-prefixed; the API key comes first)."""
        try:
            while True:
                header = _read(client, 4)
                if header is None:
                    return
                (size,) = struct.unpack(">i", header)
                body = _read(client, size)
                if body is None:
                    return
                api_key, version, correlation_id, id_size = struct.unpack(">hhih", body[:10])
                client_id = body[10 : 10 + id_size].decode() if id_size >= 0 else None
                with self._lock:
                    until = self._hold.get(api_key, 0.0)
                    answer = self._answer.get(api_key)
                    if (
                        answer is not None
                        and answer.until > time.monotonic()
                        and answer.client_id in (None, client_id)
                        and answer.left != 0
                    ):
                        rewrite[correlation_id] = (api_key, version, answer)
                        if answer.left is not None:
                            answer.left -= 1
                        self.held.set()
                if (wait := until - time.monotonic()) > 0:
                    self.held.set()
                    time.sleep(wait)
                    self.released.set()
                broker.sendall(header + body)
        except OSError:
            pass
        finally:
            self._shut(client, broker)

    @staticmethod
    def _shut(*sockets: socket.socket) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _error_code_at(api_key: int, version: int, body: bytes) -> int:
    """Where an EndTxn answer's error code is, or a Produce answer's first partition's.

    Both start with the correlation id, then (flexible versions) a tagged-fields byte.
    EndTxn: throttle time, error code.  Produce: responses (array of topics: name, or
    from v13 a topic id; each an array of partitions: index, error code, ...).
    """
    flexible = version >= FLEXIBLE_FROM[api_key]
    if flexible:
        assert body[4] == 0, "tagged fields in an answer header"
    at = 4 + (1 if flexible else 0)
    if api_key == END_TXN:
        return at + 4
    _, at = _uvarint(body, at) if flexible else (0, at + 4)  # topics
    if version >= 13:
        at += 16  # topic id
    elif flexible:
        size, at = _uvarint(body, at)
        at += size - 1
    else:
        (size,) = struct.unpack(">h", body[at : at + 2])
        at += 2 + size
    _, at = _uvarint(body, at) if flexible else (0, at + 4)  # partitions
    return at + 4  # past the partition index


def _uvarint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _read(sock: socket.socket, n: int) -> bytes | None:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)
