"""Open a Redis connection from a URL (redis://, rediss://, unix://, redis+sentinel://,
redis+cluster://), and turn what redis-py raises into fairgate's errors (`guarded`)."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlparse

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection
from redis.backoff import NoBackoff
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gate.errors import ConfigError, RedisRefused, ScriptError, Unavailable
from gate.redis_checks import refusal_reason

# The loop clock ticks this often while a command waits for its answer.
TICK_S = 0.01
# A tick later than this after the previous one is a stall of the event loop: the time
# beyond it is not counted against a command's timeout.
STALL_S = 0.05
# However late the loop runs, a command waits at most this many times its timeout.
LATE_LOOP_LIMIT = 10


class LoopClock:
    """Time as this process's event loop lived it, for the Redis command timeout.

    A Redis answer that arrived while the loop was starved of CPU (a busy host, a long
    burst of callbacks) waits in the socket until the loop runs again; a timer that counts
    wall time fires before the answer is read, and a late loop passes for a dead Redis
    (fail-closed 503s with Redis healthy, issue 12). This clock ticks every `TICK_S` while
    something waits on it and adds the time since the previous tick, but at most
    `TICK_S + STALL_S`: the time the loop was stalled does not count. A loop that is not
    late keeps wall time, so a hung or gone Redis still fails a command after its timeout.
    One per connection pool; it runs on the loop that uses it and stops when idle.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lived = 0.0
        self._last = 0.0
        self._waiting = 0
        self._tick: asyncio.TimerHandle | None = None

    def now(self) -> float:
        """Seconds lived so far (a count that only goes up)."""
        if self._loop is None:
            return self._lived
        return self._lived + min(max(self._loop.time() - self._last, 0.0), TICK_S + STALL_S)

    def enter(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._tick is None:
            self._lived = self.now()
            self._loop, self._last = loop, loop.time()
            self._tick = loop.call_later(TICK_S, self._on_tick)
        self._waiting += 1

    def leave(self) -> None:
        self._waiting = max(0, self._waiting - 1)

    def _on_tick(self) -> None:
        assert self._loop is not None
        self._lived = self.now()
        self._last = self._loop.time()
        self._tick = self._loop.call_later(TICK_S, self._on_tick) if self._waiting else None


class LivedTimeout:
    """`async with LivedTimeout(clock, s)`: asyncio's TimeoutError once `s` seconds have
    passed on `clock` (the time the loop was stalled not counted), or `LATE_LOOP_LIMIT` x
    `s` of wall time, whichever comes first."""

    def __init__(self, clock: LoopClock, seconds: float):
        self.clock, self.seconds = clock, seconds
        self._timeout = asyncio.timeout(None)
        self._check: asyncio.TimerHandle | None = None
        self._started = self._started_lived = 0.0

    async def __aenter__(self) -> LivedTimeout:
        loop = asyncio.get_running_loop()
        await self._timeout.__aenter__()
        self.clock.enter()
        self._started, self._started_lived = loop.time(), self.clock.now()
        self._check = loop.call_later(self.seconds, self._on_check)
        return self

    def _on_check(self) -> None:
        loop = asyncio.get_running_loop()
        lived = self.clock.now() - self._started_lived
        waited = loop.time() - self._started
        if lived >= self.seconds or waited >= LATE_LOOP_LIMIT * self.seconds:
            # Expires on the next turn of the loop: an answer that this turn has just read
            # from the socket resumes the command first, and wins.
            self._timeout.reschedule(loop.time())
        else:
            self._check = loop.call_later(self.seconds - lived, self._on_check)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        if self._check is not None:
            self._check.cancel()
        self.clock.leave()
        await self._timeout.__aexit__(exc_type, exc, traceback)
        return None


class _LivedReads:
    """A connection whose read timeout (`socket_timeout`) counts the time its event loop
    lived, not wall time (`LoopClock`): an answer that waited in the socket for a starved
    loop is read, not taken for a dead Redis. A read that does time out ends as redis-py's
    own does: the connection is dropped and redis-py's TimeoutError raised."""

    socket_timeout: float | None
    loop_clock: LoopClock

    async def read_response(
        self,
        disable_decoding: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 - redis-py's signature
        *,
        disconnect_on_error: Any = True,
        push_request: bool | None = False,
    ) -> Any:
        parent = cast(Any, super())
        if timeout is not None or not self.socket_timeout:
            return await parent.read_response(
                disable_decoding,
                timeout,
                disconnect_on_error=disconnect_on_error,
                push_request=push_request,
            )
        try:
            async with LivedTimeout(self.loop_clock, self.socket_timeout):
                # math.inf: no timer of redis-py's own. Cancelled by ours, redis-py drops
                # the connection (a late answer would otherwise reach the next command).
                return await parent.read_response(
                    disable_decoding,
                    math.inf,
                    disconnect_on_error=disconnect_on_error,
                    push_request=push_request,
                )
        except TimeoutError:
            raise RedisTimeoutError("Timeout reading from Redis") from None


class LivedConnection(_LivedReads, Connection):
    def __init__(self, *, loop_clock: LoopClock, **kwargs: Any):
        super().__init__(**kwargs)
        self.loop_clock = loop_clock


class LivedSentinelConnection(_LivedReads, SentinelManagedConnection):
    def __init__(self, *, loop_clock: LoopClock, **kwargs: Any):
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]
        self.loop_clock = loop_clock


class LivedBlockingPool(BlockingConnectionPool):
    """Waits for a free connection as long as the loop lived `timeout` (`LoopClock`): a
    burst of requests on a starved loop queues instead of answering 503."""

    def __init__(self, *, loop_clock: LoopClock, **kwargs: Any):
        kwargs.setdefault("connection_class", LivedConnection)
        super().__init__(loop_clock=loop_clock, **kwargs)
        self.loop_clock = loop_clock

    async def get_connection(self, *args: Any, **options: Any) -> Any:
        loop = asyncio.get_running_loop()
        self.loop_clock.enter()
        try:
            started, started_lived = loop.time(), self.loop_clock.now()
            while True:
                try:
                    return await super().get_connection(*args, **options)  # type: ignore[no-untyped-call]
                except RedisConnectionError as exc:
                    if "No connection available" not in str(exc):
                        raise
                    lived = self.loop_clock.now() - started_lived
                    waited = loop.time() - started
                    timeout = self.timeout or 0.0
                    if lived >= timeout or waited >= LATE_LOOP_LIMIT * timeout:
                        raise
        finally:
            self.loop_clock.leave()


def redis_address(url: str) -> str:
    """Where `url` points, for a log line: host:port (the default port filled in), the
    socket's path, or the Sentinels and their service; never a password."""
    parsed = urlparse(url)
    if parsed.scheme == "unix":
        return parsed.path
    hosts = parsed.netloc.rpartition("@")[2]
    default = 26379 if parsed.scheme == "redis+sentinel" else 6379
    named = ",".join(
        host if re.search(r":\d+$", host) else f"{host}:{default}"
        for host in hosts.split(",")
        if host
    )
    if parsed.scheme == "redis+sentinel":
        return f"{named}/{parsed.path.strip('/')}"
    return named


def connect(
    url: str,
    *,
    timeout_s: float,
    max_connections: int = 64,
    on_connect: Callable[[AbstractConnection], Awaitable[None]] | None = None,
) -> Redis:
    """A client whose commands fail within `timeout_s` instead of hanging (I7).

    When every connection is busy, a caller waits up to `timeout_s` for one instead of
    failing at once: a burst of concurrent joins must queue, not answer 503. The retry
    policy is explicit, not redis-py's (which changes between versions): a dropped
    connection (Redis restarted) is retried once, at once, and a command that timed out
    is never re-sent, so an answer costs at most about one timeout. `on_connect`, when
    given, replaces redis-py's handshake on every new connection (it must call
    `connection.on_connect()`): the failover check (gate.failover) asks who the primary is.
    """
    common: dict[str, Any] = {
        "socket_timeout": timeout_s,
        # Not capped below `timeout_s`: an event loop that is busy for a moment (a burst
        # of requests) would otherwise fail healthy connects and answer 503 needlessly.
        "socket_connect_timeout": timeout_s,
        "decode_responses": False,
        "health_check_interval": 0,
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    }
    if on_connect is not None:
        common["redis_connect_func"] = on_connect
    if url.startswith("redis+cluster://"):
        return _cluster(
            url, timeout_s=timeout_s, max_connections=max_connections, on_connect=on_connect
        )
    if url.startswith("redis+sentinel://"):
        # redis+sentinel://[:password@]host:port[,host:port]/service_name[?db=N]
        parsed = urlparse(url.replace("redis+sentinel://", "http://", 1))
        service = parsed.path.strip("/")
        if not service:
            raise ConfigError("redis_url: a sentinel URL must name the service: .../mymaster")
        hosts = _addresses(parsed.netloc, "sentinel")
        password = unquote(parsed.password) if parsed.password else None
        db = int(parse_qs(parsed.query).get("db", ["0"])[0])
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            hosts, socket_timeout=timeout_s, socket_connect_timeout=min(timeout_s, 0.25)
        )
        master: Redis = sentinel.master_for(
            service,
            password=password,
            db=db,
            max_connections=max_connections,
            connection_class=LivedSentinelConnection,
            loop_clock=LoopClock(),
            **common,
        )
        return master
    try:
        pool = LivedBlockingPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            loop_clock=LoopClock(),
            **common,
        )
        return Redis.from_pool(pool)
    except ValueError as exc:
        raise ConfigError(f"redis_url: {exc}") from None


def _addresses(netloc: str, kind: str) -> list[tuple[str, int]]:
    hosts: list[tuple[str, int]] = []
    for part in netloc.rpartition("@")[2].split(","):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"redis_url: bad {kind} address {part!r}")
        hosts.append((host.strip("[]"), int(port)))
    return hosts


class FairgateCluster(RedisCluster):
    """redis-py's cluster client, retrying only what is safe to send twice: a command that
    never reached a node (connection refused or dropped: the node died, the client learns
    the new topology and tries once more) or that the cluster refused whole (CLUSTERDOWN,
    a slot not covered while a replica takes over). A command that timed out may have run
    and is never re-sent, as with the other URLs."""

    ERRORS_ALLOW_RETRY = (  # type: ignore[assignment]  # a narrower tuple, on purpose
        RedisConnectionError,
        ClusterDownError,
        SlotNotCoveredError,
    )


class RecheckedConnection(Connection):
    """A cluster connection that runs its connect check again before its next command when
    asked to (`recheck`). The client asks any node for the topology, replicas included,
    and keeps that connection in the node's pool; a replica's is let through (it takes no
    write), but the replica may be promoted while the connection waits in the pool. Such a
    connection is reconnected, so checked again (gate.failover.PrimaryIdentity), before it
    carries anything else; the others cost nothing more."""

    recheck = False

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        if self.recheck:
            self.recheck = False
            await self.disconnect()
        await super().send_packed_command(command, check_health)


def _cluster(
    url: str,
    *,
    timeout_s: float,
    max_connections: int,
    on_connect: Callable[[AbstractConnection], Awaitable[None]] | None = None,
) -> Redis:
    """redis+cluster://[[user]:password@]host:port[,host:port...] (the startup nodes: any
    of them tells the client the whole topology). The client is typed as `Redis`: it
    answers every command fairgate sends by key; the few that need one node or all masters
    (WAIT, CONFIG GET, INFO) go through gate.redis_nodes."""
    parsed = urlparse(url.replace("redis+cluster://", "http://", 1))
    if parsed.path.strip("/") not in ("", "0"):
        raise ConfigError("redis_url: a cluster has database 0 only (no /N after the nodes)")
    nodes = [ClusterNode(host, port) for host, port in _addresses(parsed.netloc, "cluster")]
    cluster = FairgateCluster(
        startup_nodes=nodes,
        username=unquote(parsed.username) if parsed.username else None,
        password=unquote(parsed.password) if parsed.password else None,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        decode_responses=False,
        health_check_interval=0,
        # One retry, at once, after the topology is read again (a master just died or
        # moved a slot); then the error reaches guarded() and the gate answers 503.
        retry=Retry(NoBackoff(), 1),
        # Per node, and a full node fails at once (MaxConnectionsError -> 503) instead of
        # queueing as the standalone pool does: room for a burst.
        max_connections=max(max_connections, 32),
        require_full_coverage=True,
    )
    if on_connect is not None:
        # RedisCluster takes no connect hook: every node's connections are made from the
        # nodes manager's kwargs (nodes found later) or the node's own copy (the startup
        # nodes, made already); connections are opened lazily, so this is in time.
        cluster.nodes_manager.connection_kwargs["redis_connect_func"] = on_connect
        cluster.nodes_manager.connection_kwargs["connection_class"] = RecheckedConnection
        for node in cluster.nodes_manager.startup_nodes.values():
            node.connection_kwargs["redis_connect_func"] = on_connect
            node.connection_class = RecheckedConnection
    return cast(Redis, cluster)


class NotReconciled(RedisError):
    """A new connection to a Redis Cluster master this process has not reconciled with
    (gate.failover). Not a connection error on purpose: redis-py's cluster client answers
    one by closing every connection of the client and retrying after 0.25 s, which would
    cut the other campaigns' commands in flight; this one fails only its own command."""


@asynccontextmanager
async def guarded() -> AsyncIterator[None]:
    """Redis unreachable, loading or read-only -> `Unavailable` (the gate fails closed);
    Redis refusing service (OOM, MISCONF, BUSY, ...) -> `RedisRefused`, a 503 whose message
    is generic (Redis's own text never reaches a client); a script that refuses its
    arguments -> `ScriptError`."""
    try:
        yield
    except NotReconciled as exc:
        raise Unavailable() from exc
    except (RedisConnectionError, RedisTimeoutError, BusyLoadingError, OSError) as exc:
        raise Unavailable() from exc
    except RuntimeError as exc:
        # uvloop refuses a write on a transport that Redis closed a moment before (a primary
        # killed mid-handshake in a failover): the connection is gone, as a ConnectionError
        # would say (redis-py has already dropped it). Seen as 500s in the failover test.
        if "handler is closed" not in str(exc):
            raise
        raise Unavailable() from exc
    except (ClusterDownError, SlotNotCoveredError) as exc:
        # A cluster failing a master over (CLUSTERDOWN, a slot not covered): unreachable
        # for now.
        raise Unavailable() from exc
    except RedisClusterException as exc:
        if "cannot be connected" not in str(exc):  # a bug (a command cluster mode bars)
            raise
        raise Unavailable() from exc  # no startup node would tell the topology
    except ResponseError as exc:
        if "READONLY" in str(exc) or "LOADING" in str(exc) or "MASTERDOWN" in str(exc):
            raise Unavailable() from exc
        reason = refusal_reason(str(exc))
        if reason is not None:
            raise RedisRefused(reason) from exc
        raise ScriptError(f"Redis refused a script: {exc}") from exc
