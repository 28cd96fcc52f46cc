"""A real Redis Cluster for tests: 3 masters and 3 replicas on free loopback ports.

Each node is a `redis-server --cluster-enabled yes` child in its own directory under a
test's tmp dir, with AOF `always`; `redis-cli --cluster create` joins them. Nodes are
ended by pid (never by name). `kill_master_of(key)` sends SIGKILL to the master that
owns a key's slot and `wait_promoted()` waits (with a deadline) until a replica has
taken every slot over.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis as sync_redis
from redis.cluster import key_slot

from gate.redis_server import find_binary
from tests.helpers import GateProcess


@dataclass
class Node:
    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    command: list[str] = field(default_factory=list)

    def launch(self) -> None:
        self.process = subprocess.Popen(
            self.command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )

    def client(self) -> sync_redis.Redis:
        return sync_redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=1)


@dataclass
class Cluster:
    root: Path
    masters: int = 3
    replicas_per_master: int = 1
    node_timeout_ms: int = 1000
    nodes: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        alive = [n for n in self.nodes if n.process is not None and n.process.poll() is None]
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in alive[:3])

    def start(self, timeout_s: float = 30.0) -> None:
        binary = find_binary()
        for index in range(self.masters * (1 + self.replicas_per_master)):
            port = cluster_port()
            directory = self.root / f"node-{index}"
            directory.mkdir(parents=True)
            node = Node(port, directory)
            node.command = [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(directory),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
                "--logfile",
                str(directory / "redis.log"),
            ]
            node.launch()
            self.nodes.append(node)
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            while not _pings(node):
                if time.monotonic() > deadline:
                    raise AssertionError(f"cluster node {node.port} did not start")
                time.sleep(0.05)
        cli = Path(binary).with_name("redis-cli")
        subprocess.run(
            [
                str(cli) if cli.exists() else "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                str(self.replicas_per_master),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=timeout_s,
        )
        self.wait_healthy(timeout_s)

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        """Every slot served (cluster_state ok on each live node), each master with a
        replica in sync."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self._healthy():
                return
            if time.monotonic() > deadline:
                raise AssertionError("cluster not healthy in time: " + self._describe())
            time.sleep(0.05)

    def _healthy(self) -> bool:
        live = self.live_nodes()
        try:
            for node in live:
                with node.client() as client:
                    if not _cluster_ok(client):
                        return False
            masters = self.master_ports()
            return len(masters) == self.masters and all(
                self.replica_in_sync(port) and self.replica_acknowledges(port) for port in masters
            )
        except (sync_redis.RedisError, OSError):
            return False

    def replica_acknowledges(self, master_port: int) -> bool:
        """A write on the master is acknowledged by a replica (WAIT). After a full sync a
        master streams nothing to a replica before the replica's first REPLCONF ACK (up to
        1 s): "online" alone let a gate's first write time out waiting for a replica."""
        slots = [(first, last) for first, last, port in self._slots() if port == master_port]
        key = next(
            f"test:warm-up:{n}"
            for n in itertools.count()
            if any(first <= key_slot(f"test:warm-up:{n}".encode()) <= last for first, last in slots)
        )
        with self.node(master_port).client() as client:
            client.set(key, "1")
            return int(client.execute_command("WAIT", 1, 100)) >= 1

    def replica_in_sync(self, master_port: int) -> bool:
        node = self.node(master_port)
        with node.client() as client:
            info = client.info("replication")
        return int(info.get("connected_slaves", 0)) >= 1 and all(
            info[f"slave{i}"]["state"] == "online"
            for i in range(int(info.get("connected_slaves", 0)))
        )

    def live_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def node(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    def _slots(self) -> list[tuple[int, int, int]]:
        """(first slot, last slot, master port) as a live node sees it."""
        for node in self.live_nodes():
            try:
                with node.client() as client:
                    rows = client.execute_command("CLUSTER SLOTS")
            except (sync_redis.RedisError, OSError):
                continue
            return [(int(r[0]), int(r[1]), int(r[2][1])) for r in rows]
        raise AssertionError("no live cluster node answers")

    def master_ports(self) -> set[int]:
        return {port for _, _, port in self._slots()}

    def master_of(self, key: str) -> int:
        slot = key_slot(key.encode())
        for first, last, port in self._slots():
            if first <= slot <= last:
                return port
        raise AssertionError(f"slot {slot} is not served")

    def kill(self, port: int) -> None:
        node = self.node(port)
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)
        node.process.wait()

    def restart(self, port: int) -> None:
        """Start a killed node again on its directory (as its supervisor would): it rejoins
        from its nodes.conf, as a replica of the master that took its slots over."""
        node = self.node(port)
        node.launch()
        deadline = time.monotonic() + 10
        while not _pings(node):
            if time.monotonic() > deadline:
                raise AssertionError(f"cluster node {port} did not restart")
            time.sleep(0.05)

    def wait_promoted(self, dead_port: int, key: str, timeout_s: float = 30.0) -> int:
        """Wait until a live master serves `key`'s slot and the cluster is ok again; the
        new master's port."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                port = self.master_of(key)
                if port != dead_port and self._all_ok():
                    return port
            except (AssertionError, sync_redis.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError("no replica took over in time: " + self._describe())
            time.sleep(0.05)

    def _all_ok(self) -> bool:
        for node in self.live_nodes():
            with node.client() as client:
                if not _cluster_ok(client):
                    return False
        return True

    def _describe(self) -> str:
        for node in self.live_nodes():
            try:
                with node.client() as client:
                    return str(client.execute_command("CLUSTER NODES"))
            except (sync_redis.RedisError, OSError):
                continue
        return "no live node"

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                os.kill(node.process.pid, signal.SIGTERM)
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                node.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()


@contextlib.contextmanager
def running_cluster(root: Path) -> Iterator[Cluster]:
    """A started cluster under `root` (a module fixture's), its nodes ended on the way out."""
    started = Cluster(root)
    try:
        started.start()
        yield started
    finally:
        started.stop()


@contextlib.contextmanager
def gate_on(
    cluster: Cluster, data_dir: Path, keys_file: Path, env: dict[str, str]
) -> Iterator[GateProcess]:
    """A ready `gate serve` on the cluster with `env` on top of the defaults; stopped on
    the way out (a sync module fixture's: it waits for /readyz in its own event loop)."""
    process = GateProcess(cluster.url, data_dir, keys_file, extra_env=env)
    process.start()
    try:
        asyncio.run(process.wait_ready())
        yield process
    finally:
        process.stop()


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too; a node refuses a port
    above 55535."""
    for _ in range(200):
        port = random.randint(20_000, 45_000)
        if _bindable(port) and _bindable(port + 10_000):
            return port
    raise AssertionError("no free port pair for a cluster node")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cluster_ok(client: sync_redis.Redis) -> bool:
    info = client.execute_command("CLUSTER INFO")  # redis-py parses it into a dict
    return str(info.get("cluster_state")) == "ok"


def _pings(node: Node) -> bool:
    try:
        with node.client() as client:
            return bool(client.ping())
    except (sync_redis.RedisError, OSError):
        return False
