"""What a Redis Cluster needs beyond routing by key: a write and its WAIT on one
connection of the master that owns the key's slot.

`WAIT` (and `WAITAOF`) counts the replicas that have the writes made on the connection
it runs on (gate/room/durability.py). On one Redis a non-transactional pipeline keeps a
script and its WAIT on one connection. In a cluster, redis-py would send a keyless WAIT
to some default node, which has seen none of the campaign's writes (it would answer at
once, or time out for nothing): here the commands are written together on one
connection of the slot's master and their replies read back in order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    AskError,
    ConnectionError,
    RedisClusterException,
    RedisError,
    ResponseError,
)

from gate.errors import Unavailable

Command = Sequence[Any]


def is_cluster(redis: Redis) -> bool:
    return isinstance(redis, RedisCluster)


def _cluster(redis: Redis) -> RedisCluster:
    return cast(RedisCluster, redis)


async def master_of(redis: Redis, key: str | bytes) -> ClusterNode:
    """The master that serves `key`'s slot, as the client last learnt the topology."""
    cluster = _cluster(redis)
    await cluster.initialize()  # a no-op once the client knows the topology
    node = cluster.get_node_from_key(key)  # type: ignore[arg-type]
    if node is None:
        raise Unavailable()
    return node


async def one_connection(redis: Redis, key: str | bytes, commands: Sequence[Command]) -> list[Any]:
    """`commands` in order on ONE connection (so that a WAIT among them counts the writes
    before it), their replies in order, an error reply as its exception in its place.
    On one Redis: a non-transactional pipeline. In a cluster: a connection of the master
    that serves `key`'s slot (every key of the commands must be in that slot); a slot that
    moved (a failover) is `Unavailable` once the client has read the new topology, so that
    the caller's retry goes to the new master."""
    if not is_cluster(redis):
        pipe = redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(await pipe.execute(raise_on_error=False))
    cluster = _cluster(redis)
    node = await master_of(redis, key)
    connection = node.acquire_connection()
    replies: list[Any] = []
    try:
        await connection.send_packed_command(connection.pack_commands(commands))
        for _ in commands:
            try:
                replies.append(await connection.read_response(disconnect_on_error=False))
            except ResponseError as exc:
                replies.append(exc)
    except BaseException as exc:
        # The connection is out of step with its replies (or dead): never reuse it.
        await connection.disconnect()
        if isinstance(exc, ConnectionError | OSError):
            # The master may be gone: learn the topology again (as redis-py does for its
            # own commands), so that a retry finds the replica that took its slots over.
            with contextlib.suppress(RedisError, RedisClusterException, OSError):
                await cluster.nodes_manager.initialize(last_failed_node_name=node.name)
        raise
    finally:
        node.release(connection)
    if any(isinstance(reply, AskError) for reply in replies):
        # MOVED (AskError's subclass) or ASK: this node no longer serves the slot.
        await cluster.nodes_manager.initialize()
        raise Unavailable()
    return replies
