"""Is this Redis safe to keep a queue in, and is it refusing commands right now?

At start and every `INTERVAL_S` the gate reads Redis's `maxmemory-policy`, `appendonly`
and `appendfsync` (through `CONFIG GET`, or `INFO` where CONFIG is renamed or disabled).
An evicting policy silently deletes a campaign's keys, and so acknowledged tickets; AOF
off, or an fsync weaker than `always` with no replica to wait for, loses acknowledged
writes on a crash. Either is a `problem`: `/readyz` answers 503 naming it, joins and
claims answer 503, and one log line names the setting (again when it changes).

While running, a Redis refusal (OOM at `maxmemory` under noeviction, MISCONF when its disk
is full, BUSY, NOREPLICAS, ...) reaches the client as a plain 503 with Retry-After; here it
is counted per reason, logged at most once per `LOG_INTERVAL_S`, and `/readyz` says 503
for `RECENT_S` after the last one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from gate.redis_nodes import is_cluster

log = logging.getLogger("gate")

INTERVAL_S = 5.0
LOG_INTERVAL_S = 10.0
RECENT_S = 5.0
EVICTION_SAFE = "noeviction"


@dataclass(frozen=True)
class RedisSettings:
    """What Redis says of itself; None where it would not say."""

    maxmemory_policy: str | None
    appendonly: str | None
    appendfsync: str | None


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None if value is None else str(value)


async def read_settings(redis: Redis) -> RedisSettings:
    """CONFIG GET, else INFO (which tells the policy and whether AOF is on, not the fsync)."""
    try:
        got = {}
        for name in ("maxmemory-policy", "appendonly", "appendfsync"):
            reply = await redis.config_get(name)
            got.update({_text(k): _text(v) for k, v in reply.items()})
        return RedisSettings(
            got.get("maxmemory-policy"), got.get("appendonly"), got.get("appendfsync")
        )
    except RedisError as exc:
        if not _is_refusal_of_config(exc):
            raise
    info = await redis.info("memory")
    persistence = await redis.info("persistence")
    aof = persistence.get("aof_enabled")
    return RedisSettings(
        _text(info.get("maxmemory_policy")),
        None if aof is None else ("yes" if str(aof) == "1" else "no"),
        None,
    )


async def read_all_settings(redis: Redis) -> dict[str, RedisSettings]:
    """Each master's settings by node name (host:port) in a cluster, where each master
    holds campaigns of its own; {"": settings} on one Redis."""
    if not is_cluster(redis):
        return {"": await read_settings(redis)}
    masters = {"target_nodes": RedisCluster.PRIMARIES}
    try:
        got: dict[str, dict[str | None, str | None]] = {}
        for name in ("maxmemory-policy", "appendonly", "appendfsync"):
            replies: Any = await redis.config_get(name, **masters)  # by node, in a cluster
            for node, reply in replies.items():
                got.setdefault(node, {}).update({_text(k): _text(v) for k, v in reply.items()})
        return {
            node: RedisSettings(
                values.get("maxmemory-policy"), values.get("appendonly"), values.get("appendfsync")
            )
            for node, values in got.items()
        }
    except RedisError as exc:
        if not _is_refusal_of_config(exc):
            raise
    memory = await redis.info("memory", **masters)
    persistence = await redis.info("persistence", **masters)
    out: dict[str, RedisSettings] = {}
    for node, info in memory.items():
        aof = persistence.get(node, {}).get("aof_enabled")
        out[node] = RedisSettings(
            _text(info.get("maxmemory_policy")),
            None if aof is None else ("yes" if str(aof) == "1" else "no"),
            None,
        )
    return out


def _is_refusal_of_config(exc: RedisError) -> bool:
    text = str(exc).lower()
    return "unknown command" in text or "noperm" in text or "no permissions" in text


def problems(settings: RedisSettings, *, wait_replicas: int) -> list[str]:
    """Each setting that loses acknowledged state, as `name=value (why)`; [] when none."""
    found: list[str] = []
    policy = settings.maxmemory_policy
    if policy is not None and policy != EVICTION_SAFE:
        found.append(f"maxmemory-policy={policy} (Redis would evict queue keys; set noeviction)")
    if settings.appendonly == "no":
        found.append("appendonly=no (a Redis restart loses acknowledged writes; set yes)")
    elif settings.appendfsync not in (None, "always") and wait_replicas <= 0:
        found.append(
            f"appendfsync={settings.appendfsync} with redis_wait_replicas=0 (a crash loses "
            "the last acknowledged writes; set appendfsync always or wait for a replica)"
        )
    return found


def refusal_reason(message: str) -> str | None:
    """The reason a Redis error reply is a refusal of service, not a script's answer."""
    for marker, reason in _REFUSALS:
        if marker in message:
            return reason
    return None


_REFUSALS = (
    ("command not allowed when used memory", "oom"),  # redis-py drops the "OOM " prefix
    ("MISCONF", "misconf"),
    ("BUSY", "busy"),
    ("NOREPLICAS", "noreplicas"),
    ("CLUSTERDOWN", "clusterdown"),
    ("TRYAGAIN", "tryagain"),
    ("NOPERM", "noperm"),
    ("no permissions to", "noperm"),  # redis-py drops the "NOPERM " prefix too
)


class RedisSanity:
    """The current settings problem and the recent refusals of one gate process."""

    def __init__(self, redis: Redis, *, wait_replicas: int, check_persistence: bool = True):
        self.redis = redis
        self.wait_replicas = wait_replicas
        self.check_persistence = check_persistence
        self.problem: str | None = None
        self.checked = False
        self.refusals: dict[str, int] = {}
        self.last_refusal: tuple[str, float] | None = None
        self._logged_at = -LOG_INTERVAL_S
        self._unlogged = 0

    async def check(self) -> None:
        found: list[str] = []
        for node, settings in (await read_all_settings(self.redis)).items():
            here = problems(settings, wait_replicas=self.wait_replicas)
            if not self.check_persistence:
                here = [p for p in here if p.startswith("maxmemory-policy")]
            found += [f"{node} {p}" if node else p for p in here]
        problem = "; ".join(found) or None
        if problem != self.problem:
            if problem is not None:
                log.error("event=redis_unsafe setting=%s", problem)
            elif self.checked:
                log.warning("event=redis_safe_again")
        self.problem = problem
        self.checked = True

    async def run(self) -> None:
        while True:
            # Redis out: the cache's refresh already fails the gate closed.
            with contextlib.suppress(RedisError, OSError):
                await self.check()
            await asyncio.sleep(INTERVAL_S)

    def refused(self, reason: str) -> None:
        """Count a refusal; log at most one line per LOG_INTERVAL_S, with how many."""
        now = time.monotonic()
        self.refusals[reason] = self.refusals.get(reason, 0) + 1
        self.last_refusal = (reason, now)
        self._unlogged += 1
        if now - self._logged_at >= LOG_INTERVAL_S:
            log.warning("event=redis_refused reason=%s count=%d", reason, self._unlogged)
            self._logged_at = now
            self._unlogged = 0

    def not_ready(self) -> str | None:
        """Why this gate should not be sent traffic now, or None."""
        if self.problem is not None:
            return "redis_unsafe"
        if self.last_refusal is not None and time.monotonic() - self.last_refusal[1] < RECENT_S:
            return f"redis_refused_{self.last_refusal[0]}"
        return None
