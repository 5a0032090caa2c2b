"""A loopback TCP proxy a test puts in front of a real database server, and breaks.

``cut()`` closes every connection and refuses new ones (they are accepted and
closed at once) until ``restore()``. ``lose_next_commit_answer()`` lets the
next ``COMMIT`` through to the server, then drops the server's answer and
closes the connection: the transaction is committed, the client never knows.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._down = False
        self._lose_commit_answers = 0
        self.commit_answers_lost = 0
        self.connections_refused = 0
        self._closed = False
        threading.Thread(target=self._accept, name="tcp-proxy", daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            self._down = True
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _close(sock)

    def restore(self) -> None:
        with self._lock:
            self._down = False

    def lose_next_commit_answer(self) -> None:
        with self._lock:
            self._lose_commit_answers += 1

    def close(self) -> None:
        self._closed = True
        self.cut()
        _close(self._listener)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                down = self._down
            if down:
                self.connections_refused += 1
                _close(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets.update((client, server))
            link = _Link(self, client, server)
            threading.Thread(target=link.upstream, daemon=True).start()
            threading.Thread(target=link.downstream, daemon=True).start()

    def _take_commit_loss(self) -> bool:
        with self._lock:
            if self._lose_commit_answers and not self._down:
                self._lose_commit_answers -= 1
                self.commit_answers_lost += 1
                return True
            return False


class _Link:
    def __init__(self, proxy: TcpProxy, client: socket.socket, server: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.server = server
        self.swallowing = False

    def upstream(self) -> None:
        for data in _chunks(self.client):
            if b"COMMIT" in data.upper() and self.proxy._take_commit_loss():
                self.swallowing = True
                _send(self.server, data)
                # Give the server time to commit, then hang up on both sides.
                time.sleep(0.3)
                break
            if not _send(self.server, data):
                break
        self._close()

    def downstream(self) -> None:
        for data in _chunks(self.server):
            if self.swallowing:
                continue
            if not _send(self.client, data):
                break
        self._close()

    def _close(self) -> None:
        _close(self.client)
        _close(self.server)


def _chunks(sock: socket.socket) -> Iterator[bytes]:
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            return
        if not data:
            return
        yield data


def _send(sock: socket.socket, data: bytes) -> bool:
    try:
        sock.sendall(data)
    except OSError:
        return False
    return True


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def unused_loopback_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
