"""Open a Redis connection from a URL: redis://, rediss://, unix:// or redis+sentinel://."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

from gate.errors import ConfigError


def connect(url: str, *, timeout_s: float, max_connections: int = 64) -> Redis:
    """A client whose commands fail within `timeout_s` instead of hanging (I7)."""
    common: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": min(timeout_s, 0.25),
        "decode_responses": False,
        "health_check_interval": 0,
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
        return Redis.from_url(url, max_connections=max_connections, **common)
    except ValueError as exc:
        raise ConfigError(f"redis_url: {exc}") from None
