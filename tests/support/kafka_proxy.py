"""A TCP proxy in front of a Kafka broker that can hold back one kind of request.

Why: some faults depend on *when* a request reaches the broker, e.g. a transaction's
commit (EndTxn) arriving after the broker aborted the transaction for its timeout.
Freezing the broker (SIGSTOP) hits that moment only by chance; holding the request in a
proxy hits it every time.  The broker must advertise the proxy's address
(``advertised.listeners``) so that every client connection goes through it.

Frames are forwarded unchanged, in order; a held request delays its connection's later
requests too (as a slow network would), never reorders them.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable

__all__ = ["END_TXN", "KafkaProxy"]

#: Kafka API key of EndTxn (a transaction's commit or abort).
END_TXN = 26


class KafkaProxy:
    """Listens on ``port`` (0: any free one) and forwards to ``upstream``."""

    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1", port: int = 0):
        self.upstream = upstream
        self._server = socket.create_server((host, port), reuse_port=False)
        self.host, self.port = self._server.getsockname()[:2]
        self._hold: dict[int, float] = {}  # api key -> monotonic time its hold ends
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
            self._start(self._requests, client, broker)
            self._start(self._pipe, broker, client)

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            self._shut(source, sink)

    def _requests(self, client: socket.socket, broker: socket.socket) -> None:
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
                (api_key,) = struct.unpack(">h", body[:2])
                with self._lock:
                    until = self._hold.get(api_key, 0.0)
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
