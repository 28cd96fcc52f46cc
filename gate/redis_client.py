"""Open a Redis connection from a URL (redis://, rediss://, unix://, redis+sentinel://,
redis+cluster://), and turn what redis-py raises into fairgate's errors (`guarded`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlparse

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
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
            service, password=password, db=db, max_connections=max_connections, **common
        )
        return master
    try:
        pool = BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout_s, **common
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
