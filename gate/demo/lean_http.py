"""A lean HTTP/1.1 client for the demo's crowd: keep-alive connections, nothing else.

A crowd of a million simulated customers on a small machine is limited by what each of
its requests costs the crowd itself: aiohttp's client spent ~1 ms of CPU a request here
(its session, cookie and header machinery, a task per response). This client writes
pre-built request bytes on a pooled keep-alive connection and reads back the status line,
the headers and a body of `Content-Length` bytes (or chunked); no cookies, no redirects, no
decompression, which the gate and the simulated core never need. One request at a time
per connection (no pipelining: the gate answers each request in order anyway, and a slow
answer would hold up those behind it).

Errors: `OSError` (refused, reset, closed before the answer) and `TimeoutError` (no
complete answer within `timeout_s`); the connection is then dropped, never reused.
"""

from __future__ import annotations

import asyncio
import collections
from typing import NamedTuple, cast


class Response(NamedTuple):
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request in flight on it at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[Response] | None = None
        self.closed = False
        self.head: tuple[int, dict[str, str], int] | None = None  # status, headers, length

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionResetError("the connection closed before the answer"))

    def _fail(self, exc: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.waiter = None

    def send(self, data: bytes) -> asyncio.Future[Response]:
        assert self.transport is not None and self.waiter is None
        self.waiter = asyncio.get_running_loop().create_future()
        self.buffer.clear()
        self.head = None
        self.transport.write(data)
        return self.waiter

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None:
            return
        buffer = self.buffer
        if self.head is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = buffer[:end].decode("latin-1").split("\r\n")
            try:
                status = int(lines[0][9:12])
            except ValueError:
                self._fail(ConnectionError(f"not an HTTP answer: {lines[0][:40]!r}"))
                self.abort()
                return
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = -1 if "chunked" in headers.get("transfer-encoding", "") else (
                int(headers.get("content-length", "0"))
            )  # fmt: skip
            self.head = (status, headers, length)
            del buffer[: end + 4]
        status, headers, length = self.head
        if length >= 0:
            if len(buffer) < length:
                return
            body = bytes(buffer[:length])
        else:
            decoded = _dechunk(buffer)
            if decoded is None:
                return
            body = decoded
        waiter, self.waiter = self.waiter, None
        if headers.get("connection", "").lower() == "close":
            self.closed = True
        if not waiter.done():
            waiter.set_result(Response(status, headers, body))


def _dechunk(buffer: bytearray) -> bytes | None:
    """A chunked body, or None while its last chunk has not arrived."""
    out = bytearray()
    at = 0
    while True:
        end = buffer.find(b"\r\n", at)
        if end < 0:
            return None
        size = int(bytes(buffer[at:end]).split(b";")[0], 16)
        if size == 0:
            return bytes(out) if buffer.find(b"\r\n", end + 2) >= 0 else None
        if len(buffer) < end + 2 + size + 2:
            return None
        out += buffer[end + 2 : end + 2 + size]
        at = end + 2 + size + 2


class Pool:
    """At most `limit` keep-alive connections to one host; a request waits its turn for
    one (as a customer's click waits behind the others on a busy page), then has
    `timeout_s` for its answer."""

    def __init__(self, host: str, port: int, limit: int, timeout_s: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.limit = max(1, limit)
        self.timeout_s = timeout_s
        self.idle: list[_Connection] = []
        self.open = 0
        self.waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()
        self.host_line = f"Host: {host}:{port}\r\n".encode()
        self.requests = 0

    @classmethod
    def for_url(cls, url: str, limit: int, timeout_s: float = 30.0) -> Pool:
        """`http://HOST:PORT` (no path, no TLS: the demo's processes on loopback)."""
        rest = url.removeprefix("http://").rstrip("/")
        host, _, port = rest.partition(":")
        return cls(host, int(port or 80), limit, timeout_s)

    async def _acquire(self) -> _Connection:
        while True:
            while self.idle:
                connection = self.idle.pop()
                if not connection.closed:
                    return connection
                self.open -= 1
            if self.open < self.limit:
                self.open += 1
                try:
                    _transport, connection = await asyncio.get_running_loop().create_connection(
                        _Connection, self.host, self.port
                    )
                except BaseException:
                    self._gone()
                    raise
                return connection
            waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            try:
                handed = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    # handed a connection while being cancelled: pass it on
                    given = waiter.result()
                    if given is not None:
                        self._release(given)
                    else:
                        self._wake()
                raise
            if handed is not None:
                return handed
            # None: a connection closed, one may be opened again

    def _wake(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _release(self, connection: _Connection) -> None:
        if connection.closed:
            connection.abort()
            self._gone()
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self.idle.append(connection)

    def _gone(self) -> None:
        self.open -= 1
        self._wake()

    async def request(
        self, method: str, target: str, headers: bytes = b"", body: bytes | None = None
    ) -> Response:
        """`headers`: ready lines, each ending in CRLF (`Name: value\\r\\n`)."""
        head = f"{method} {target} HTTP/1.1\r\n".encode() + self.host_line + headers
        if body is not None:
            data = b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)
        else:
            data = head + b"\r\n"
        connection = await self._acquire()
        self.requests += 1
        future = connection.send(data)
        timer = asyncio.get_running_loop().call_later(self.timeout_s, _time_out, connection, future)
        try:
            response = await future
        except BaseException:
            connection.abort()
            self._gone()
            raise
        finally:
            timer.cancel()
        self._release(connection)
        return response

    async def close(self) -> None:
        for connection in self.idle:
            connection.abort()
        self.idle.clear()


def _time_out(connection: _Connection, future: asyncio.Future[Response]) -> None:
    if not future.done():
        future.set_exception(TimeoutError("no answer in time"))
    connection.abort()


class AiohttpPool:
    """The same interface over aiohttp's client: the reference the lean client is checked
    against (tests/test_demo_lean_crowd.py, bench), one session per host."""

    def __init__(self, url: str, limit: int, timeout_s: float = 30.0) -> None:
        import aiohttp

        self.url = url.rstrip("/")
        self.requests = 0
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(1, limit)),
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_s),
        )
        self._errors = (aiohttp.ClientError,)

    async def request(
        self, method: str, target: str, headers: bytes = b"", body: bytes | None = None
    ) -> Response:
        lines = headers.decode().split("\r\n")
        named = dict(line.split(": ", 1) for line in lines if line)
        self.requests += 1
        try:
            async with self.session.request(
                method, self.url + target, headers=named, data=body
            ) as r:
                data = await r.read()
                return Response(r.status, {k.lower(): v for k, v in r.headers.items()}, data)
        except self._errors as exc:
            raise ConnectionError(str(exc)) from exc

    async def close(self) -> None:
        await self.session.close()
