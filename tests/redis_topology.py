"""A replicated Redis for the failover tests: 1 primary, 2 replicas, optional 3 Sentinels,
and an optional lossy link (a TCP proxy) between the primary and replica 1.

Everything runs as real processes on free loopback ports in a temporary directory, and
`ReplicaSet.stop()` (also the context manager's exit) ends each one by its pid, even when
the start failed half-way.

    with ReplicaSet(tmp_path, sentinels=True, proxy=True) as rs:
        url = rs.sentinel_url              # redis+sentinel://127.0.0.1:p1,.../fgmaster
        rs.link.set_delay(0.7)             # replica 1 now applies writes 0.7 s late
        rs.kill_primary()                  # SIGKILL; the bytes still on the link vanish
        new = rs.wait_failover(15)         # the RedisServer the Sentinels promoted

Layout:
- the primary, and the replicas with `appendfsync everysec` (the setting that needs WAIT
  to be durable) and `repl-diskless-sync-delay 0` (a full sync starts at once);
- replica 1 replicates through the proxy (`replicaof 127.0.0.1 <proxy port>`); replica 2
  straight from the primary. `replica_priorities` chooses which one Sentinel promotes:
  the default (1, 0) makes replica 2 never promotable, so a failover promotes replica 1,
  the one behind the lossy link (the hostile case: WAIT 1 is satisfied by replica 2,
  then the lagging replica wins the election);
- 3 Sentinels, quorum 2, `down-after-milliseconds 1000`: a kill -9 of the primary is
  followed by a new primary in about 2-4 s. Each is given its run id and the others'
  (`sentinel myid`, `known-sentinel`), so they know each other at once instead of after
  a hello (every 2 s);
- `start()` returns once every replica has acknowledged a write: after a full sync the
  primary streams nothing to a replica until its first REPLCONF ACK (up to 1 s), and a
  kill before then promotes a replica without the test's writes.

Keeping the proxy in the path. Sentinel checks that each replica's `master_host` and
`master_port` are the master's address as Sentinel knows it; replica 1 reports the
proxy's port, so Sentinel "fixes" it (`+fix-slave-config` in the sentinel log, a
REPLICAOF to the primary's real port), which would silently take the lossy link out of
the path. It does so only once the replica has been known, and not down, for longer
than the master's `failover-timeout` (sentinel.c, sentinelRefreshInstanceInfo: both
`sentinelRedisInstanceNoDownFor(ri, failover_timeout)` and `now - slave_conf_change_time
> failover_timeout`), checked at each INFO refresh (every 10 s). Measured with
`failover-timeout 2000`: +fix-slave-config 10.1 s after the Sentinels started; replica 1
then replicated from the primary directly, and a failover after 0.7 s of lag on the
link lost nothing (200 of 200 keys). With `failover-timeout 60000`: the link stayed in
the path, and the promoted replica 1 had 83 of those 200 keys.
`replica-announce-ip/port` do not help (they change how the replica is announced, not
the master address it reports). So the Sentinels here run with `failover-timeout 60000`
(the default is 180000): a healthy failover does not wait on it (it bounds a promotion or
a replica's reconfiguration that stalls), and the proxy stays in the path for the first
60 s of a topology, longer than a test needs. `proxy_in_path()` says whether it still is;
a test asserts it before it kills the primary.

What the failover tests do with the link: lag (`set_delay`), and at the kill the bytes in
flight vanish (`kill_primary` blackholes and cuts it). They do not use `set_drop`: a link
that loses bytes inside a TCP stream is not a fault a real network has, and Redis's
replication cannot survive it (a replica that silently misses a chunk of whole commands
still counts later bytes in its offset, so its acknowledgements claim writes it never
applied; one that misses part of a command misreads the stream). It is there to stress a
replica's protocol handling, not as a durability scenario.

After the failover, Sentinel points the remaining replica at the new primary directly.
`restart_as_replica(server)` restarts a killed server on its port and data directory as
a replica of the current primary, as a supervisor would (its AOF's unreplicated tail is
discarded by the full sync).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from redis import Redis as SyncRedis

from gate.redis_server import RedisServer, find_binary, free_port

SERVICE = "fgmaster"


def _command(port: int, *args: str, timeout_s: float = 1.0) -> bytes:
    """One command over a raw socket, its reply unparsed (enough for INFO and the
    Sentinel queries used here; no client library state to clean up)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        sock.sendall(b"".join(parts))
        sock.settimeout(timeout_s)
        reply = b""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
            if _complete(reply):
                break
        return reply


def _complete(reply: bytes) -> bool:
    """Whether `reply` holds one whole RESP value (the shapes used here)."""
    try:
        return _parse(reply, 0)[1] == len(reply)
    except (IndexError, ValueError):
        return False


def _parse(data: bytes, at: int) -> tuple[object, int]:
    end = data.index(b"\r\n", at)
    kind, head = data[at : at + 1], data[at + 1 : end]
    at = end + 2
    if kind in (b"+", b"-", b":"):
        return head.decode(), at
    if kind == b"$":
        n = int(head)
        if n < 0:
            return None, at
        if len(data) < at + n + 2:
            raise IndexError
        return data[at : at + n].decode(), at + n + 2
    if kind == b"*":
        n = int(head)
        items: list[object] = []
        for _ in range(max(n, 0)):
            item, at = _parse(data, at)
            items.append(item)
        return (items if n >= 0 else None), at
    raise ValueError(kind)


def command(port: int, *args: str, timeout_s: float = 1.0) -> object:
    """Send one command to the server on `port`; its parsed reply (errors as '-...' text)."""
    reply = _command(port, *args, timeout_s=timeout_s)
    return _parse(reply, 0)[0]


def info(port: int, section: str = "replication") -> dict[str, str]:
    text = command(port, "INFO", section)
    assert isinstance(text, str), text
    return dict(
        line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#")
    )


class LossyLink:
    """A TCP proxy on its own thread and event loop (so a busy test loop does not slow the
    link) between a replica and its primary. Bytes from the primary (the replication
    stream) can be delayed, dropped in part, or dropped whole (blackhole); `cut()` closes
    every connection and discards what is in flight, as a machine that dies does."""

    def __init__(self, upstream_port: int, *, port: int | None = None, seed: int = 11):
        self.upstream_port = upstream_port
        self.port = port or free_port()
        self.delay_s = 0.0
        self.drop_fraction = 0.0
        self.blackholed = False
        self.bytes_forwarded = 0
        self.bytes_dropped = 0
        self._random = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.base_events.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lossy-link-{self.port}")

    # -- control, from any thread ----------------------------------------------------

    def set_delay(self, seconds: float) -> None:
        """Replication bytes reach the replica `seconds` late (order kept)."""
        self.delay_s = seconds

    def set_drop(self, fraction: float) -> None:
        """Drop each chunk of replication bytes with this probability. A replica that
        misses bytes misreads the stream: it breaks the link (protocol error) and
        resyncs, or applies a garbled command; a stress mode, not a model of TCP."""
        self.drop_fraction = fraction

    def blackhole(self, on: bool = True) -> None:
        """Every byte in both directions vanishes; the connections stay open."""
        self.blackholed = on

    def heal(self) -> None:
        self.delay_s, self.drop_fraction, self.blackholed = 0.0, 0.0, False

    def cut(self) -> None:
        """Close every connection now; bytes in flight are lost."""
        if self._loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._close_all(), self._loop)
            with contextlib.suppress(Exception):
                future.result(5)

    # -- lifetime --------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("the lossy link did not start")

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self.cut()

        async def close_server() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close_server(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", self.port)
        )
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                pending = asyncio.all_tasks(self._loop)
                for task in pending:
                    task.cancel()
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    async def _close_all(self) -> None:
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        pumps = [
            asyncio.ensure_future(self._pump(up_reader, writer, from_primary=True)),
            asyncio.ensure_future(self._pump(reader, up_writer, from_primary=False)),
        ]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for pump in pumps:
            pump.cancel()
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.transport.abort()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, from_primary: bool
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                item = await queue.get()
                if item is None:
                    return
                due, data = item
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if writer.is_closing():
                    return
                writer.write(data)
                await writer.drain()
                self.bytes_forwarded += len(data)

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if self.blackholed or (
                    from_primary
                    and self.drop_fraction > 0
                    and self._random.random() < self.drop_fraction
                ):
                    self.bytes_dropped += len(data)
                    continue
                delay = self.delay_s if from_primary else 0.0
                queue.put_nowait((time.monotonic() + delay, data))
        finally:
            queue.put_nowait(None)
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(sender, 30)


class SentinelServer:
    """`redis-server FILE --sentinel` on a free port, monitoring `SERVICE`."""

    def __init__(
        self,
        data_dir: Path,
        primary_port: int,
        *,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 60000,
        quorum: int = 2,
    ):
        self.data_dir = data_dir
        self.port = free_port()
        # A run id of its own, known before it starts: the others are told of it in
        # their config instead of waiting for its hello (every 2 s) to find it.
        self.run_id = secrets.token_hex(20)
        self.peers: list[SentinelServer] = []
        self.primary_port = primary_port
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.quorum = quorum
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "sentinel.log"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "sentinel.conf"
        conf.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    "bind 127.0.0.1",
                    "daemonize no",
                    f"dir {self.data_dir.resolve()}",
                    f"logfile {self.log_path.resolve()}",
                    f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} {self.quorum}",
                    f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}",
                    f"sentinel failover-timeout {SERVICE} {self.failover_timeout_ms}",
                    f"sentinel parallel-syncs {SERVICE} 1",
                    f"sentinel myid {self.run_id}",
                    *(
                        f"sentinel known-sentinel {SERVICE} 127.0.0.1 {peer.port} {peer.run_id}"
                        for peer in self.peers
                    ),
                    "",
                ]
            )
        )
        self.process = subprocess.Popen(
            [find_binary(), str(conf), "--sentinel"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ask(self, *args: str) -> object:
        return command(self.port, "SENTINEL", *args)

    def master_address(self) -> tuple[str, int] | None:
        try:
            reply = self.ask("get-master-addr-by-name", SERVICE)
        except OSError:
            return None
        if not isinstance(reply, list) or len(reply) != 2:
            return None
        return str(reply[0]), int(str(reply[1]))

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None


def wait_until(predicate: object, timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    """Poll `predicate()` (exceptions count as false) until true or the deadline."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, AssertionError, ValueError, IndexError) as exc:
            last = exc
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last error: {last})")


class ReplicaSet:
    """1 primary + 2 replicas (+ 3 Sentinels, + a lossy link to replica 1): see the module
    docstring. Start with `start()` or `with`; `stop()` ends every process by its pid."""

    def __init__(
        self,
        base_dir: Path,
        *,
        sentinels: bool = True,
        proxy: bool = True,
        replica_priorities: tuple[int, int] = (1, 0),
        appendfsync: str = "everysec",
        failover_timeout_ms: int = 60000,
        down_after_ms: int = 1000,
    ):
        self.base_dir = Path(base_dir)
        self.appendfsync = appendfsync
        common = ("--repl-diskless-sync-delay", "0")
        self.primary = RedisServer(self.base_dir / "primary", appendfsync=appendfsync, extra=common)
        self.link: LossyLink | None = LossyLink(self.primary.port) if proxy else None
        via = self.link.port if self.link is not None else self.primary.port
        self.replicas = [
            RedisServer(
                self.base_dir / f"replica{n}",
                appendfsync=appendfsync,
                extra=(
                    *common,
                    "--replicaof",
                    "127.0.0.1",
                    str(upstream),
                    "--replica-priority",
                    str(priority),
                ),
            )
            for n, (upstream, priority) in enumerate(
                ((via, replica_priorities[0]), (self.primary.port, replica_priorities[1])), 1
            )
        ]
        self.servers = [self.primary, *self.replicas]  # every Redis ever started here
        self.sentinels = (
            [
                SentinelServer(
                    self.base_dir / f"sentinel{n}",
                    self.primary.port,
                    down_after_ms=down_after_ms,
                    failover_timeout_ms=failover_timeout_ms,
                )
                for n in (1, 2, 3)
            ]
            if sentinels
            else []
        )
        for sentinel in self.sentinels:
            sentinel.peers = [other for other in self.sentinels if other is not sentinel]
        self.killed: list[RedisServer] = []

    # -- addresses ---------------------------------------------------------------------

    @property
    def sentinel_url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}"

    @property
    def replica1(self) -> RedisServer:
        """The replica behind the lossy link (or the first replica, without one)."""
        return self.servers[1]

    # -- lifetime ----------------------------------------------------------------------

    def start(self, timeout_s: float = 20.0) -> None:
        try:
            self.primary.start()
            if self.link is not None:
                self.link.start()
            for replica in self.replicas:
                replica.start()
            wait_until(self._replicating, timeout_s, "both replicas in sync with the primary")
            self._streaming(timeout_s)
            for sentinel in self.sentinels:
                sentinel.start()
            if self.sentinels:
                wait_until(self._sentinels_agree, timeout_s, "3 Sentinels that know it all")
        except BaseException:
            self.stop()
            raise

    def _replicating(self) -> bool:
        primary = info(self.primary.port)
        if primary.get("connected_slaves") != str(len(self.replicas)):
            return False
        return all(info(r.port).get("master_link_status") == "up" for r in self.replicas)

    def _streaming(self, timeout_s: float) -> None:
        """Every replica acknowledges a write: after a full sync the primary sends a
        replica nothing until its first REPLCONF ACK (up to a second later), and a kill
        before then would promote a replica that has none of the test's writes."""
        client = SyncRedis(host="127.0.0.1", port=self.primary.port)
        try:
            client.set("topology:streaming", "1")
            client.delete("topology:streaming")
            acknowledged = client.wait(len(self.replicas), int(timeout_s * 1000))
        finally:
            client.close()
        assert acknowledged == len(self.replicas), f"{acknowledged} replicas acknowledged"

    def _sentinels_agree(self) -> bool:
        """Each Sentinel sees the primary, both replicas and the 2 other Sentinels: a kill
        of the primary can then be agreed (quorum) and a leader elected."""
        for sentinel in self.sentinels:
            if sentinel.master_address() != ("127.0.0.1", self.primary.port):
                return False
            replicas = sentinel.ask("replicas", SERVICE)
            others = sentinel.ask("sentinels", SERVICE)
            if not isinstance(replicas, list) or len(replicas) != len(self.replicas):
                return False
            if not isinstance(others, list) or len(others) != len(self.sentinels) - 1:
                return False
        return True

    def stop(self) -> None:
        """End every process started here, by pid; never raises."""
        for sentinel in self.sentinels:
            with contextlib.suppress(Exception):
                sentinel.stop()
        if self.link is not None:
            with contextlib.suppress(Exception):
                self.link.stop()
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop()

    def __enter__(self) -> ReplicaSet:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- faults ------------------------------------------------------------------------

    def proxy_in_path(self) -> bool:
        """Replica 1 still replicates from the primary through the lossy link."""
        if self.link is None:
            return False
        found = info(self.replica1.port)
        return found.get("master_port") == str(self.link.port)

    def replica_offsets(self) -> dict[int, int]:
        """Each live replica's replication offset, by port (and the primary's, as 'port')."""
        offsets: dict[int, int] = {}
        for server in self.servers:
            if server.alive():
                with contextlib.suppress(OSError):
                    found = info(server.port)
                    key = "master_repl_offset"
                    offsets[server.port] = int(found.get(key, "0"))
        return offsets

    def kill_primary(self) -> RedisServer:
        """SIGKILL the current primary. Bytes still on the lossy link vanish with it (a dead
        machine's unsent buffers are never delivered)."""
        victim = self.primary
        if self.link is not None and self.link.upstream_port == victim.port:
            self.link.blackhole()
        victim.kill()
        if self.link is not None and self.link.upstream_port == victim.port:
            self.link.cut()
        self.killed.append(victim)
        return victim

    def current_master_port(self) -> int | None:
        """The primary's port as a majority of the Sentinels name it (None without one)."""
        votes: dict[int, int] = {}
        for sentinel in self.sentinels:
            if sentinel.alive():
                address = sentinel.master_address()
                if address is not None:
                    votes[address[1]] = votes.get(address[1], 0) + 1
        for port, count in votes.items():
            if count * 2 > len(self.sentinels):
                return port
        return None

    def wait_failover(self, timeout_s: float = 20.0) -> RedisServer:
        """Until a majority of the Sentinels name a new primary that answers as a master;
        that server, now `.primary` (the other live ones are `.replicas`)."""
        old = self.primary.port
        found: list[RedisServer] = []

        def promoted() -> bool:
            port = self.current_master_port()
            if port is None or port == old:
                return False
            server = next(s for s in self.servers if s.port == port)
            if info(port).get("role") != "master":
                return False
            found.append(server)
            return True

        wait_until(promoted, timeout_s, "a new primary named by the Sentinels")
        self.primary = found[-1]
        self.replicas = [s for s in self.servers if s is not self.primary and s.alive()]
        return self.primary

    def restart_as_replica(self, server: RedisServer, timeout_s: float = 20.0) -> RedisServer:
        """Start a killed server again on its port and data dir, as a replica of the
        current primary (as a supervisor would); waits until its link is up."""
        restarted = RedisServer(
            server.data_dir,
            port=server.port,
            appendfsync=self.appendfsync,
            extra=(
                "--repl-diskless-sync-delay",
                "0",
                "--replicaof",
                "127.0.0.1",
                str(self.primary.port),
            ),
        )
        self.servers = [restarted if s is server else s for s in self.servers]
        restarted.start()

        def linked() -> bool:
            return info(restarted.port).get("master_link_status") == "up"

        wait_until(linked, timeout_s, "the restarted server replicating")
        self.replicas = [s for s in self.servers if s is not self.primary and s.alive()]
        return restarted

    def sentinel_log(self) -> str:
        """Every Sentinel's log, for an assertion's message."""
        return "\n".join(
            f"--- sentinel {s.port}\n{s.log_path.read_text()[-3000:]}"
            for s in self.sentinels
            if s.log_path.exists()
        )


@contextlib.contextmanager
def replica_set(base_dir: Path, **options: object) -> Iterator[ReplicaSet]:
    """`ReplicaSet(base_dir, **options)`, started, and stopped however the block ends."""
    topology = ReplicaSet(base_dir, **options)  # type: ignore[arg-type]
    topology.start()
    try:
        yield topology
    finally:
        topology.stop()
