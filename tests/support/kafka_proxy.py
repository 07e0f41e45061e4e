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

__all__ = ["END_TXN", "INVALID_PRODUCER_EPOCH", "PRODUCER_FENCED", "KafkaProxy"]

#: Kafka API key of EndTxn (a transaction's commit or abort).
END_TXN = 26
#: Its first flexible version (a tagged-fields byte after the response's correlation id).
END_TXN_FLEXIBLE = 3
#: Kafka error codes of a fenced producer.
INVALID_PRODUCER_EPOCH = 47
PRODUCER_FENCED = 90


class KafkaProxy:
    """Listens on ``port`` (0: any free one) and forwards to ``upstream``."""

    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1", port: int = 0):
        self.upstream = upstream
        self._server = socket.create_server((host, port), reuse_port=False)
        self.host, self.port = self._server.getsockname()[:2]
        self._hold: dict[int, float] = {}  # api key -> monotonic time its hold ends
        #: api key -> (monotonic time the answer hold ends, error code answered instead)
        self._answer: dict[int, tuple[float, int]] = {}
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

    def answer(self, api_key: int, seconds: float, error_code: int) -> None:
        """Forward every request of ``api_key`` that arrives in the next ``seconds`` at
        once, hold the broker's answer until they are over, then give the client
        ``error_code`` in its place (EndTxn only: its error code sits after the throttle
        time).  The broker did what was asked; the client is told it failed."""
        assert api_key == END_TXN, "only EndTxn answers are rewritten"
        with self._lock:
            self._answer[api_key] = (time.monotonic() + seconds, error_code)
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
            # correlation id -> (request's api version, when its answer goes back, error)
            rewrite: dict[int, tuple[int, float, int]] = {}
            self._start(self._requests, client, broker, rewrite)
            self._start(self._responses, broker, client, rewrite)

    def _responses(
        self,
        broker: socket.socket,
        client: socket.socket,
        rewrite: dict[int, tuple[int, float, int]],
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
                    version, until, error_code = falsified
                    if (wait := until - time.monotonic()) > 0:
                        time.sleep(wait)
                    # correlation id, [tagged fields], throttle_time_ms, error_code
                    at = 4 + (1 if version >= END_TXN_FLEXIBLE else 0) + 4
                    if version >= END_TXN_FLEXIBLE:
                        assert body[4] == 0, "tagged fields in an EndTxn answer header"
                    body = body[:at] + struct.pack(">h", error_code) + body[at + 2 :]
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
        rewrite: dict[int, tuple[int, float, int]],
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
                api_key, version, correlation_id = struct.unpack(">hhi", body[:8])
                with self._lock:
                    until = self._hold.get(api_key, 0.0)
                    answer_until, error_code = self._answer.get(api_key, (0.0, 0))
                    if answer_until > time.monotonic():
                        rewrite[correlation_id] = (version, answer_until, error_code)
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


def _read(sock: socket.socket, n: int) -> bytes | None:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)
