"""Durable acknowledgements: a write is answered only once it is as durable as configured
(`redis_wait_replicas` replicas have it, with WAIT; or, with `redis_wait_aof` on Redis
7.2+, the primary's AOF and that many replicas' AOFs have it fsynced, with WAITAOF).

Why the script and the WAIT travel together, on one connection. Redis's WAIT (and
WAITAOF) counts the replicas that have reached *the calling connection's* replication
offset, the offset right after that connection's last command that was propagated. A
WAIT sent on another connection of the pool covers that connection's old writes, not
ours (a connection that never wrote has offset 0, which every replica has: WAIT answers
at once). So `call` sends one non-transactional pipeline [EVALSHA, INCR mark, WAIT] on
one connection.

Why the INCR. A script may answer without writing: a retried join answers the ticket
an earlier call wrote (created:false), a claim replayed by its idempotency key, a pass
already logged, a confirm repeated. Its EVALSHA propagates nothing, so the connection's
offset stays where it was, perhaps before the write it is now acknowledging (made by
another connection, another gate process). The INCR of the campaign's mark key
(fg:{c}:mark, in the campaign's slot) always propagates, so the connection's offset
becomes the primary's offset at that moment, which is after every write made before it
by any connection, the replayed one included: WAIT then covers them all. A script whose
acknowledged answer always writes may go without the mark (`mark=None`).

When fewer replicas than wanted acknowledge within `redis_wait_timeout_ms`, the write
stays in Redis but the answer depends on `redis_replica_loss`: "hold" answers 503 +
Retry-After (a retry replays the write and waits again), "continue" answers normally,
counts it (fairgate_durability_degraded_total) and logs one WARNING line per 10 s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from gate.config import Config
from gate.errors import Unavailable
from gate.redis_client import guarded
from gate.redis_nodes import Command, one_connection
from gate.room.scripts import ScriptArg, Scripts

log = logging.getLogger("gate")

LOG_INTERVAL_S = 10.0
HOLD = "hold"
CONTINUE = "continue"
# WAITAOF came with Redis 7.2.
WAITAOF_SINCE = (7, 2)


class Durability:
    """What one gate process waits for before it answers, and what it saw."""

    def __init__(
        self,
        replicas: int = 0,
        timeout_ms: int = 200,
        *,
        aof: bool = False,
        replica_loss: str = HOLD,
    ):
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        self.aof = aof
        self.replica_loss = replica_loss
        # WAITAOF only once `probe` saw a Redis that has it (and an AOF to fsync).
        self.use_waitaof = False
        self.numlocal = 0
        # By what fell short: "answer" (an acknowledgement) or "seal" (a sealing round).
        self.degraded_by: dict[str, int] = {}  # went on with fewer copies (continue)
        self.held_by: dict[str, int] = {}  # answered 503 / sealed nothing instead (hold)
        self._logged_at = -LOG_INTERVAL_S
        self._unlogged = 0
        self._last_acked = 0

    @classmethod
    def from_config(cls, config: Config) -> Durability:
        return cls(
            config.redis_wait_replicas,
            config.redis_wait_timeout_ms,
            aof=config.redis_wait_aof,
            replica_loss=config.redis_replica_loss,
        )

    @property
    def degraded(self) -> int:
        return sum(self.degraded_by.values())

    @property
    def held(self) -> int:
        return sum(self.held_by.values())

    @property
    def active(self) -> bool:
        """Whether an answer waits for anything (nothing configured: no extra work)."""
        return self.replicas > 0 or self.use_waitaof

    async def probe(self, redis: Redis) -> None:
        """With `redis_wait_aof`: WAITAOF where the server has it (Redis 7.2+), else WAIT,
        said once here, at start."""
        if not self.aof:
            return
        async with guarded():
            server = await redis.info("server")
            persistence = await redis.info("persistence")
        version = str(server.get("redis_version", "0"))
        parts = tuple(int(p) if p.isdigit() else 0 for p in version.split(".")[:2])
        if parts < WAITAOF_SINCE:
            self.use_waitaof = False
            log.warning(
                "event=durability_mode mode=wait replicas=%d reason=redis_%s_has_no_waitaof",
                self.replicas,
                version,
            )
            return
        self.use_waitaof = True
        # WAITAOF refuses numlocal 1 on a primary without AOF (which the sanity check
        # reports anyway); the replicas' fsync is still waited for.
        self.numlocal = 1 if str(persistence.get("aof_enabled", "0")) == "1" else 0
        log.info(
            "event=durability_mode mode=waitaof numlocal=%d replicas=%d",
            self.numlocal,
            self.replicas,
        )

    # -- the one-connection call -----------------------------------------------------

    async def run(
        self,
        redis: Redis,
        scripts: Scripts,
        name: str,
        keys: Sequence[str],
        args: Sequence[ScriptArg],
        *,
        mark: str | None,
    ) -> tuple[Any, bool]:
        """Script `name`, then (the mark and) the wait, on one connection: the script's
        reply and whether enough copies acknowledged. No policy applied here."""
        script = scripts[name]
        for attempt in (1, 2):
            commands: list[Command] = [("EVALSHA", script.sha, len(keys), *keys, *args)]
            if mark is not None:
                commands.append(("INCR", mark))
            commands.append(self._wait_command())
            async with guarded():
                # one pipeline; in a cluster, one connection of the keys' master
                results = await one_connection(redis, keys[0], commands)
            if isinstance(results[0], NoScriptError) and attempt == 1:
                # After a restart or a failover the script cache is empty: the pipeline ran
                # no script (the WAIT that followed it acknowledges nothing): load, again.
                async with guarded():
                    await redis.script_load(script.source)
                continue
            break
        for result in results:
            if isinstance(result, Exception):
                if isinstance(result, ResponseError) and "unknown command" in str(result).lower():
                    # WAITAOF on a server that lacks it (a failover to an older Redis)
                    self.use_waitaof = False
                    log.warning("event=durability_mode mode=wait reason=waitaof_unknown")
                    raise Unavailable()
                async with guarded():
                    raise result
        return results[0], self._enough(results[-1])

    async def call(
        self,
        redis: Redis,
        scripts: Scripts,
        name: str,
        keys: Sequence[str],
        args: Sequence[ScriptArg],
        *,
        mark: str | None,
    ) -> Any:
        """`run`, then the operator's choice when too few copies acknowledged: hold
        raises `Unavailable` (503 + Retry-After), continue counts and answers."""
        reply, enough = await self.run(redis, scripts, name, keys, args, mark=mark)
        if not enough:
            self.fell_short(what="answer", call=name)
        return reply

    async def mark(self, redis: Redis, mark: str) -> None:
        """Wait until everything written so far (by any connection) is as durable as
        configured: the mark's INCR and the wait on one connection. For the multi-step
        flows, whose last step may have been another process's."""
        if not self.active:
            return
        async with guarded():
            results = await one_connection(redis, mark, [("INCR", mark), self._wait_command()])
            for result in results:
                if isinstance(result, Exception):
                    raise result
        if not self._enough(results[-1]):
            self.fell_short(what="answer", call="flow")

    def fell_short(self, *, what: str, call: str) -> None:
        """Too few copies acknowledged `call`: `Unavailable` (503) under hold; counted
        and answered under continue. `what` is "answer" or "seal" (the metric's label).
        One log line per 10 s either way, with the count since the last."""
        holding = self.replica_loss == HOLD
        counts = self.held_by if holding else self.degraded_by
        counts[what] = counts.get(what, 0) + 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_INTERVAL_S:
            log.warning(
                "event=%s wanted=%d acked=%d call=%s count=%d",
                "durability_held" if holding else "durability_degraded",
                self.replicas,
                self._last_acked,
                call,
                self._unlogged,
            )
            self._logged_at = now
            self._unlogged = 0
        if holding:
            raise Unavailable(
                "the write is not yet on enough replicas; retry",
                retry_after_s=max(1, -(-self.timeout_ms // 1000)),
            )

    def _wait_command(self) -> Command:
        if self.use_waitaof:
            return ("WAITAOF", self.numlocal, self.replicas, self.timeout_ms)
        return ("WAIT", self.replicas, self.timeout_ms)

    def _enough(self, acked: Any) -> bool:
        if isinstance(acked, list):  # WAITAOF: [local fsyncs, replica fsyncs]
            local, replicas = int(acked[0]), int(acked[1])
            self._last_acked = replicas
            return local >= self.numlocal and replicas >= self.replicas
        self._last_acked = int(acked)
        return self._last_acked >= self.replicas
