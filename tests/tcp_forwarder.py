"""A TCP forwarder on loopback that can cut the line without closing it: a network
partition as the gate sees one between itself and Redis.

`Forwarder(target_port)` listens on a free port of 127.0.0.1 and forwards every connection
to the target. `blackhole()` stops it forwarding: connections stay open, new ones are
still accepted, but no byte moves in either direction (what has been read is held, the
rest stays in the kernel's buffers), so a client sees a half-open connection that never
answers, never a reset. `heal()` lets the bytes flow again, the held ones first (a short
partition: TCP delivers what it retransmits). Threads, so that forwarding never waits on
the test's own event loop.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from gate.redis_server import free_port

CHUNK = 65536


class Forwarder:
    def __init__(self, target_port: int, *, host: str = "127.0.0.1"):
        self.host = host
        self.target_port = target_port
        self.port = free_port()
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server((host, self.port), backlog=512)
        self._accepter = threading.Thread(target=self._accept, name="forwarder", daemon=True)
        self.accepted = 0

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> Forwarder:
        self._accepter.start()
        return self

    def blackhole(self) -> None:
        self._flowing.clear()

    def heal(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._closed = True
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in [self._listener, *sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._flowing.set()  # every waiting thread wakes, finds its socket closed, ends
        self._accepter.join(5)

    def __enter__(self) -> Forwarder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _keep(self, sock: socket.socket) -> None:
        with self._lock:
            if self._closed:
                sock.close()
                raise OSError("forwarder closed")
            self._sockets.append(sock)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            try:
                self._keep(client)
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        # During a partition the connection to Redis is not even attempted: the client's
        # own handshake and first command hang, as across a real partition.
        self._flowing.wait()
        if self._closed:
            return
        try:
            upstream = socket.create_connection((self.host, self.target_port), timeout=5)
            upstream.settimeout(None)
            self._keep(upstream)
        except OSError:
            with contextlib.suppress(OSError):
                client.close()
            return
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                self._flowing.wait()
                data = source.recv(CHUNK)
                if not data or self._closed:
                    break
                # Read just as the partition began: held, not delivered, until it heals.
                self._flowing.wait()
                if self._closed:
                    break
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
