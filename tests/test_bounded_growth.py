"""Bounded growth: a long campaign's stored Merkle subtrees and receipt index leave Redis
with the entries they cover (every receipt and proof stays servable), and the receipt
cache is bounded in bytes."""

from __future__ import annotations

import sys
from typing import Any

from gate.audit import merkle
from gate.audit.export import export_chunks
from gate.audit.format import load_public_keys
from gate.audit.receipts import BatchReceipts, ReceiptBook, batch_bytes, verify_receipt_proof
from gate.audit.store import AuditStore, segments_root
from gate.audit.verify import verify_lines
from gate.campaign import parse_spec
from gate.config import Config, default_config
from gate.room import Room
from gate.room.keys import CampaignKeys
from gate.signing import SigningKeys, load_or_create_keys
from gate.tokens import customer_digest
from tests.helpers import assert_sealed_log, create_committed, sealer_for, spec

ACTOR = "ops"
KEEP = 100


def deep_size(root: Any) -> int:
    """Bytes of every object reachable from ``root`` (each counted once)."""
    seen: set[int] = set()
    stack = [root]
    total = 0
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, type):
            continue
        seen.add(id(item))
        total += sys.getsizeof(item)
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set):
            stack.extend(item)
        elif hasattr(item, "__dict__"):
            stack.append(vars(item))
    return total


async def all_entries(store: AuditStore) -> list[bytes]:
    return [raw async for _, raw in store.entries()]


async def test_a_long_campaign_keeps_the_stored_subtrees_in_redis_bounded(
    room: Room, config: Config
) -> None:
    """Old code: every subtree of >= 256 entries stays in fg:{c}:mnodes, and every join
    batch in fg:{c}:rsig and fg:{c}:rjoin, for ever (7,000 joins: 50 subtrees and 7,000
    index records, growing with the log); now at most one subtree per level and the
    index of the newest entries only, and receipts and proofs over moved entries (read
    from the nodes-*.fgn and receipts-*.fgr files) are unchanged."""
    keys = load_or_create_keys(config.keys_path, create=False)
    c = "longrun"
    k = CampaignKeys(c)
    await room.create(parse_spec(spec(c)), ACTOR)
    sealer = sealer_for(room, config, keep_in_redis=KEEP)
    store = AuditStore(room.redis, c, segments_root(config))
    sizes: list[tuple[int, int]] = []
    joined = 0
    for _ in range(14):
        for _ in range(500):
            await room.join(c, [customer_digest(keys, c, f"c{joined}")])
            joined += 1
        while await sealer.step(c, force=True):
            pass
        _, size = await store.bounds()
        sizes.append((size, int(await room.redis.hlen(k.merkle_nodes))))
    size = sizes[-1][0]
    assert size >= 7000
    trimmed, _ = await store.bounds()
    assert trimmed >= size - KEEP - KEEP // 4 - 1
    # The window Redis keeps is under 256 entries: at most one subtree per level
    # straddles it, however long the campaign.
    for at, nodes in sizes:
        assert nodes <= max(at.bit_length() - 8, 0), sizes
    window = KEEP + KEEP // 4 + 1
    assert int(await room.redis.llen(k.audit)) <= window
    # One join entry per batch here: the receipt index keeps only the window's.
    assert int(await room.redis.hlen(k.receipt_signatures)) <= window
    assert int(await room.redis.zcard(k.join_entries)) <= window
    print(f"\n{size} entries; mnodes fields in Redis per 500 joins: {[n for _, n in sizes]}")

    entries = await all_entries(store)
    assert len(entries) == size
    leaves = [merkle.leaf_hash(raw) for raw in entries]
    for index in [0, 1, 255, 256, 3000, size // 2, size - 300, size - 1]:
        assert await store.inclusion_proof(index, size) == merkle.inclusion_proof(leaves, index)
    for old in [1, 256, 4096, size - 150]:
        want = merkle.consistency_proof(leaves, old)
        assert await store.consistency_proof(old, size) == want
    assert await store.root(size) == merkle.root(leaves)

    # Early customers' receipts and their inclusion proofs still verify offline, each
    # for its own customer, from a process with nothing cached.
    book = ReceiptBook(room.redis, keys, segments_root(config), scripts=room.scripts)
    public_keys = load_public_keys(keys.public_keys())
    for seq in [1, 2, 257, 3500, size - 500, joined]:
        answer = await book.receipt_with_proof(c, seq)
        assert answer is not None and answer["inclusion"] is not None, seq
        assert verify_receipt_proof(answer, public_keys), seq
        assert answer["receipt"]["seq"] == seq
        assert answer["receipt"]["digest"] == customer_digest(keys, c, f"c{seq - 1}").hex()
    found = await ReceiptBook(room.redis, keys, segments_root(config)).receipts_for(
        c, list(range(1, joined + 1))
    )
    assert sorted(found) == list(range(1, joined + 1))
    assert await book.receipt(c, joined + 1) is None
    await sealer.close()


async def test_a_proof_uses_the_moved_subtrees_not_every_leaf(room: Room, config: Config) -> None:
    """A proof over moved entries reads the subtree files, not every moved entry."""
    keys = load_or_create_keys(config.keys_path, create=False)
    c = "fewleaves"
    await room.create(parse_spec(spec(c)), ACTOR)
    sealer = sealer_for(room, config, keep_in_redis=KEEP)
    for n in range(2100):
        await room.join(c, [customer_digest(keys, c, f"f{n}")])
    while await sealer.step(c, force=True):
        pass
    store = AuditStore(room.redis, c, segments_root(config))
    _, size = await store.bounds()
    assert await store.node_files()
    read: list[tuple[int, int | None]] = []
    original = store.entries

    def counting(start: int = 1, stop: int | None = None) -> Any:
        read.append((start, stop))
        return original(start, stop)

    store.entries = counting  # type: ignore[method-assign]
    await store.inclusion_proof(5, size)
    leaves_read = sum((stop or size) - start + 1 for start, stop in read)
    assert leaves_read < 600, read
    await sealer.close()


def test_a_cached_batch_never_holds_more_than_its_estimate(keys: SigningKeys) -> None:
    digest = bytes(range(16))
    for pairs in [
        1,
        2,
        3,
        7,
        11,
        22,
        43,
        64,
        100,
        171,
        342,
        513,
        683,
        1000,
        1366,
        2731,
        4096,
        5462,
    ]:
        batch = BatchReceipts(
            "bound", 1, 1, [(n + 1, digest[:15] + bytes([n % 256])) for n in range(pairs)]
        )
        batch.signature = batch.sign(keys)
        for position in range(pairs):  # builds every path, as the join answer does
            batch.receipt(position, *batch.signature)
        batch.position_of(1)
        assert deep_size(batch) <= batch_bytes(pairs), pairs
        assert batch.size_bytes == batch_bytes(pairs)


async def test_the_receipt_cache_stays_within_its_byte_budget(
    room: Room, config: Config, keys: SigningKeys
) -> None:
    """Old code: counted in pairs (100,000), ~100 MiB per process; now bytes, default
    16 MiB, least recently used out first."""
    assert default_config().receipt_cache_bytes == 16 * 1024 * 1024
    book = ReceiptBook(room.redis, keys, None, scripts=room.scripts)
    assert book.cache_bytes == 16 * 1024 * 1024
    digest = bytes(16)
    pairs = 1000
    for entry in range(1, 121):
        created = [((entry - 1) * pairs + n + 1, digest) for n in range(pairs)]
        book.sign_batch("budget", entry, 1, created)
        assert book.cached_bytes <= book.cache_bytes
    measured = deep_size(list(book._cache.values()))
    print(f"\nreceipt cache after 120,000 receipts: {measured / 2**20:.1f} MiB measured")
    assert measured <= book.cache_bytes
    assert book.cached_bytes == sum(b.size_bytes for b in book._cache.values())

    small = ReceiptBook(room.redis, keys, None, scripts=room.scripts, cache_bytes=100_000)
    for entry in range(1, 30):
        small.sign_batch("small", entry, 1, [(entry * 10 + n, digest) for n in range(10)])
        assert small.cached_bytes <= 100_000
    # Least recently used out first: a batch read again stays.
    kept = next(iter(small._cache))
    small._cache.move_to_end(kept)
    small.sign_batch("small", 99, 1, [(990 + n, digest) for n in range(10)])
    assert kept in small._cache
    # A batch larger than the whole budget is answered but not kept.
    receipts, _ = small.sign_batch("small", 100, 1, [(2000 + n, digest) for n in range(1000)])
    assert len(receipts) == 1000 and ("small", 100) not in small._cache


async def test_receipts_are_served_with_no_cache_at_all(room: Room, config: Config) -> None:
    keys = load_or_create_keys(config.keys_path, create=False)
    c = "nocache"
    await room.create(parse_spec(spec(c)), ACTOR)
    for n in range(30):
        await room.join(c, [customer_digest(keys, c, f"n{n}")])
    sealer = sealer_for(room, config)
    while await sealer.step(c, force=True):
        pass
    book = ReceiptBook(room.redis, keys, segments_root(config), scripts=room.scripts, cache_bytes=0)
    found = await book.receipts_for(c, list(range(1, 31)))
    assert sorted(found) == list(range(1, 31))
    assert book.cached_bytes == 0 and not book._cache
    answer = await book.receipt_with_proof(c, 7)
    assert answer is not None
    assert verify_receipt_proof(answer, load_public_keys(keys.public_keys()))
    await sealer.close()


async def test_the_checkpoint_list_in_redis_is_bounded_and_the_export_has_every_one(
    room: Room, config: Config
) -> None:
    """Old code: one checkpoint per sealing round in fg:{c}:checkpoints for ever (300
    rounds: 300 items); now at most the newest `checkpoints_in_redis` (+ a quarter) stay,
    the others in a checkpoints file, and the export still holds every one, in order."""
    keys = load_or_create_keys(config.keys_path, create=False)
    c = "manyrounds"
    k = CampaignKeys(c)
    await create_committed(room, keys, parse_spec(spec(c)), ACTOR)
    sealer = sealer_for(room, config, keep_in_redis=KEEP)
    sealer.checkpoints_in_redis = 20
    longest = 0
    for n in range(300):
        await room.join(c, [customer_digest(keys, c, f"m{n}")])
        assert await sealer.step(c, force=True)
        longest = max(longest, int(await room.redis.llen(k.checkpoints)))
    assert longest <= 20 + 20 // 4
    store = AuditStore(room.redis, c, segments_root(config))
    checkpoints = await store.checkpoints()
    # One per round: the first covers the campaign's creation and the first join.
    # the commitment's (size 1, signed before anyone joined), then one per round
    assert [cp["size"] for cp in checkpoints] == list(range(1, 302))
    entries = await all_entries(store)
    assert_sealed_log(entries, checkpoints, keys.public_keys())
    public = keys.public_keys()
    lines = b"".join([chunk async for chunk in export_chunks(store, public)]).splitlines()
    report = verify_lines(lines, public, require_sealed=True)
    assert report.checkpoints == 301
    latest = await store.latest_checkpoint()
    assert latest is not None and latest["size"] == 301
    await sealer.close()


async def test_only_the_lease_holder_drops_checkpoints(room: Room, config: Config) -> None:
    keys = load_or_create_keys(config.keys_path, create=False)
    c = "fencedtrim"
    k = CampaignKeys(c)
    await room.create(parse_spec(spec(c)), ACTOR)
    sealer = sealer_for(room, config)
    for n in range(5):
        await room.join(c, [customer_digest(keys, c, f"t{n}")])
        assert await sealer.step(c, force=True)
    fence = int(await room.redis.get(k.sealer_fence) or 0)
    keys_ = [k.sealer_fence, k.checkpoints, k.meta]

    async def trim(*args: int) -> list[Any]:
        reply = await room.scripts.call(room.redis, "checkpoint_trim", keys_, list(args))
        return [x.decode() if isinstance(x, bytes) else x for x in reply]

    assert await trim(fence + 1, 0, 2) == [0, "fenced"]
    assert await trim(fence, 3, 2) == [0, "moved"]
    assert await trim(fence, 0, 5) == [0, "not_growing"]  # the latest always stays
    assert await trim(fence, 0, 0) == [0, "not_growing"]
    assert int(await room.redis.llen(k.checkpoints)) == 5
    assert await trim(fence, 0, 2) == [1, 2]
    assert int(await room.redis.llen(k.checkpoints)) == 3
    assert await room.redis.hget(k.meta, "checkpoints_trimmed") == b"2"
    await sealer.close()
