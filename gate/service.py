"""The per-process gate: the pieces every listener shares, and their lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from gate.admission import Admitter
from gate.arrivals import Arrivals
from gate.audit.receipts import ReceiptBook
from gate.audit.sealer import Sealer, SealerCollector
from gate.audit.store import AuditStore, segments_root
from gate.batcher import JoinBatcher
from gate.cache import CampaignCache
from gate.claim_batcher import ClaimBatcher
from gate.cluster_failover import ClusterFailoverWatch
from gate.config import Config
from gate.controller import ControllerCollector, RateController
from gate.errors import ConfigError, Unavailable
from gate.failover import FailoverCollector, FailoverWatch, PrimaryIdentity, config_is_cluster
from gate.health import CallbackHealth
from gate.marks import Marks
from gate.metrics import Metrics
from gate.overload import Shedder
from gate.pass_cache import PassCache
from gate.redis_checks import RedisSanity
from gate.redis_client import connect, redis_address
from gate.room import Room
from gate.room.durability import Durability
from gate.room.scripts import Scripts
from gate.seeds import Seeds
from gate.signing import SigningKeys, load_or_create_keys
from gate.tokens import TokenSigner

log = logging.getLogger("gate")

# An unreachable Redis at start is said at once, naming its address, then at most this often.
UNREACHABLE_LOG_S = 10.0


class Gate:
    def __init__(self, config: Config, keys: SigningKeys):
        if not config.redis_url:
            raise ConfigError("redis_url: no Redis to connect to")
        self.config = config
        self.keys = keys
        self.signer = TokenSigner(keys)
        # Every new connection asks who the primary is: none carries a write to a new
        # primary before this process has reconciled with it (gate/failover.py).
        self.primary = PrimaryIdentity()
        self.marks = Marks()
        self.redis = connect(
            config.redis_url,
            timeout_s=config.redis_timeout_ms / 1000,
            on_connect=self.primary.check_connection,
        )
        self.scripts = Scripts()
        # What every acknowledgement waits for (gate/room/durability.py); one per process, so
        # the rooms and the sealer count into the same metrics.
        self.durability = Durability.from_config(config)
        # The campaigns' seeds come from the signing key file (gate/seeds.py): every
        # process of every host derives the same ones.
        self.seeds = Seeds.from_keys(keys)
        self.room = Room(
            self.redis,
            self.scripts,
            durability=self.durability,
            seeds=self.seeds,
        )
        # The cache (whose refresh is the gate's proof that Redis answers) and the
        # admission loop get their own connections: a burst of customer requests queueing
        # for the shared pool must not pass for a Redis outage and fail every pass closed.
        self.control_redis = connect(
            config.redis_url,
            timeout_s=config.redis_timeout_ms / 1000,
            max_connections=4,
            on_connect=self.primary.check_connection,
        )
        self.control_room = Room(
            self.control_redis,
            self.scripts,
            durability=self.durability,
            seeds=self.seeds,
        )
        self.cache = CampaignCache(
            self.control_room,
            refresh_interval_s=config.refresh_interval_ms / 1000,
            stale_after_s=config.stale_after_ms / 1000,
            redis_address=redis_address(config.redis_url),
        )
        # The passes this process issued: an admitted customer's polls run pass.lua once.
        self.passes = PassCache()
        for room in (self.room, self.control_room):
            room.on_change += [self.passes.changed, self.cache.forget_missing]
        self.receipts = ReceiptBook(
            self.redis,
            keys,
            segments_root(config),
            scripts=self.scripts,
            cache_bytes=config.receipt_cache_bytes,
        )
        self.batcher = JoinBatcher(
            self.room,
            window_s=config.join_batch_window_ms / 1000,
            max_batch=config.join_batch_max,
            receipts=self.receipts,
        )
        # Claims too: one script call per campaign and tick (the join batch's settings).
        self.claims = ClaimBatcher(
            self.room,
            window_s=config.join_batch_window_ms / 1000,
            max_batch=config.join_batch_max,
        )
        self.sealer = Sealer.from_config(
            config, self.scripts, keys, segments_root(config), durability=self.durability
        )
        self.admitter = Admitter(
            self.control_room, self.cache, interval_s=config.admit_interval_ms / 1000
        )
        # The door to the core: a pass's first use at /gate/auth, metered (issue 12).
        self.arrivals = Arrivals(self.room)
        # Graceful overload: waiting-room work shed while the event loop runs late.
        self.shedder = Shedder(config.shed_lag_ms)
        self.in_flight: dict[str, int] = {}  # requests under way, per listener
        # The adaptive rate (gate/controller.py): one process per campaign drives it, on
        # the control connection; every process counts its callbacks for it.
        self.controller = RateController(self.control_room, self.cache, self.control_redis)
        self.callback_health = CallbackHealth(self.control_redis, self.cache)
        # Refuses traffic on an evicting or non-durable Redis, and counts Redis's refusals.
        self.sanity = RedisSanity(
            self.control_redis,
            wait_replicas=config.redis_wait_replicas,
            check_persistence=config.redis_check_persistence,
        )
        self.metrics = Metrics(
            self.cache,
            self.admitter,
            self.sanity,
            self.durability,
            room=self.control_room,
            enabled=config.metrics,
        )
        if config.metrics:
            self.scripts.observe = self.metrics.redis_call
        self.metrics.registry.register(SealerCollector(self.sealer))
        self.metrics.registry.register(ControllerCollector(self.controller))
        # Its own connection, not subject to the identity check it serves.
        watch = ClusterFailoverWatch if config_is_cluster(config) else FailoverWatch
        self.failover = watch(
            connect(config.redis_url, timeout_s=config.redis_timeout_ms / 1000, max_connections=2),
            self.scripts,
            self.marks,
            self.primary,
            segments_root(config),
        )
        self.room.marks = self.marks
        if isinstance(self.failover, ClusterFailoverWatch):
            # One campaign's master reconciled: the cache and admission leave it alone and
            # stay fresh for the others (on one primary, everything waits).
            self.cache.skip = self.failover.is_reconciling
        self.failover.forget = [
            self.receipts.forget,
            self.sealer.book.forget,
            self.passes.changed,
        ]
        self.failover.room = Room(
            self.failover.redis,
            self.scripts,
            wait_replicas=config.redis_wait_replicas,
            wait_timeout_ms=config.redis_wait_timeout_ms,
            seeds=self.seeds,
        )
        self.metrics.registry.register(FailoverCollector(self.failover))
        self.scripts_loaded = False
        self._tasks: list[asyncio.Task[None]] = []

    async def _load_scripts(self) -> None:
        failures, logged_at = 0, -UNREACHABLE_LOG_S
        while not self.scripts_loaded:
            try:
                await self.scripts.load_all(self.redis)
                await self.durability.probe(self.redis)  # WAITAOF or WAIT, said once
                if self.durability.use_waitaof and self.durability.numlocal:
                    # Each answer waits for the primary's own AOF fsync: `appendfsync
                    # everysec` is then as safe as `always` for the settings check.
                    self.sanity.wait_replicas = max(self.sanity.wait_replicas, 1)
                self.scripts_loaded = True
            except Unavailable:
                await asyncio.sleep(0.2)
            except Exception as exc:  # redis-py raises several kinds while Redis starts
                failures += 1
                if time.monotonic() - logged_at >= UNREACHABLE_LOG_S:
                    logged_at = time.monotonic()
                    log.warning(
                        "event=redis_unreachable redis=%s component=scripts error=%s tries=%d "
                        "retry_s=0.2 next_log_s=%.0f",
                        redis_address(self.config.redis_url),
                        exc.__class__.__name__,
                        failures,
                        UNREACHABLE_LOG_S,
                    )
                await asyncio.sleep(0.2)

    async def start(self, *, background: bool = True) -> None:
        self._tasks.append(asyncio.create_task(self._load_scripts()))
        if background:
            self._tasks.append(asyncio.create_task(self.sanity.run()))
            self._tasks.append(asyncio.create_task(self.cache.run()))
            self._tasks.append(asyncio.create_task(self.admitter.run()))
            self._tasks.append(asyncio.create_task(self.controller.run()))
            self._tasks.append(asyncio.create_task(self.callback_health.run()))
            self._tasks.append(asyncio.create_task(self.sealer.run()))
            self._tasks.append(asyncio.create_task(self.failover.run()))
            self._tasks.append(asyncio.create_task(self.metrics.run()))
            if self.config.shed_lag_ms:
                self._tasks.append(asyncio.create_task(self.shedder.run()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            # On Python 3.11, asyncio.wait_for (which redis-py uses for every command when
            # socket_timeout is set) can swallow a cancellation (CPython gh-86296): the
            # loop then goes on as if nothing happened. Cancel again until the task is
            # done, or the process never exits on SIGTERM.
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.batcher.close()
        await self.claims.close()
        await self.sealer.close()
        await self.redis.aclose()
        await self.control_redis.aclose()
        await self.failover.redis.aclose()

    def refuse_writes_if_unsafe(
        self, campaign: str | None = None, *, allocates: bool = True
    ) -> None:
        """A join or claim on an evicting or non-durable Redis would be acknowledged and
        then lost: answer 503 instead (the operator fixes the setting; see /readyz). While
        a new primary is reconciled, and for a campaign held after a failover, 503 too."""
        self.failover.refuse(campaign, allocates=allocates)
        if self.sanity.problem is not None:
            raise Unavailable()

    async def wait_ready(self, timeout_s: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not (self.scripts_loaded and self.cache.fresh()):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("the gate did not become ready (is Redis reachable?)")
            await asyncio.sleep(0.01)


def store_for(gate: Gate, campaign: str) -> AuditStore:
    """The campaign's log as this gate process sees it (segment files, then Redis)."""
    return AuditStore(gate.redis, campaign, segments_root(gate.config))


def load_keys(config: Config) -> SigningKeys:
    """The signing keys and the digest keys the configuration names. Neither set: both
    files in data_dir, created when absent. signing_keys set: digest_keys must be set too
    (or the signing key file hold the digest key, the form of before): a digest key made
    up by one process would not be the other processes' or hosts'."""
    return load_or_create_keys(
        config.keys_path,
        create=config.signing_keys is None,
        digest_path=config.digest_keys_path,
        create_digest=config.digest_keys is None and config.signing_keys is None,
        digest_required=config.digest_keys is not None,
    )


def make_gate(config: Config) -> Gate:
    return Gate(config, load_keys(config))


@contextlib.asynccontextmanager
async def running_gate(config: Config, *, background: bool = True) -> AsyncIterator[Gate]:
    gate = make_gate(config)
    await gate.start(background=background)
    try:
        yield gate
    finally:
        await gate.stop()
