"""Open a Redis connection from a URL (redis://, rediss://, unix://, redis+sentinel://), and
turn what redis-py raises into fairgate's errors (`guarded`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gate.errors import ConfigError, RedisRefused, ScriptError, Unavailable
from gate.redis_checks import refusal_reason


def connect(url: str, *, timeout_s: float, max_connections: int = 64) -> Redis:
    """A client whose commands fail within `timeout_s` instead of hanging (I7).

    When every connection is busy, a caller waits up to `timeout_s` for one instead of
    failing at once: a burst of concurrent joins must queue, not answer 503. The retry
    policy is explicit, not redis-py's (which changes between versions): a dropped
    connection (Redis restarted) is retried once, at once, and a command that timed out
    is never re-sent, so an answer costs at most about one timeout.
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
    if url.startswith("redis+sentinel://"):
        # redis+sentinel://[:password@]host:port[,host:port]/service_name[?db=N]
        parsed = urlparse(url.replace("redis+sentinel://", "http://", 1))
        service = parsed.path.strip("/")
        if not service:
            raise ConfigError("redis_url: a sentinel URL must name the service: .../mymaster")
        hosts: list[tuple[str, int]] = []
        netloc = parsed.netloc.rpartition("@")[2]
        for part in netloc.split(","):
            host, _, port = part.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"redis_url: bad sentinel address {part!r}")
            hosts.append((host.strip("[]"), int(port)))
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


@asynccontextmanager
async def guarded() -> AsyncIterator[None]:
    """Redis unreachable, loading or read-only -> `Unavailable` (the gate fails closed);
    Redis refusing service (OOM, MISCONF, BUSY, ...) -> `RedisRefused`, a 503 whose message
    is generic (Redis's own text never reaches a client); a script that refuses its
    arguments -> `ScriptError`."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, BusyLoadingError, OSError) as exc:
        raise Unavailable() from exc
    except ResponseError as exc:
        if "READONLY" in str(exc) or "LOADING" in str(exc) or "MASTERDOWN" in str(exc):
            raise Unavailable() from exc
        reason = refusal_reason(str(exc))
        if reason is not None:
            raise RedisRefused(reason) from exc
        raise ScriptError(f"Redis refused a script: {exc}") from exc
