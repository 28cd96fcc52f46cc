"""Where a campaign's audit entries live: sealed segment files on disk, then Redis.

Redis holds the log as the list ``fg:{c}:audit``. Once entries are sealed (covered by a
checkpoint) the sealer may move the oldest of them to write-once segment files under
``<data_dir>/audit/<campaign>.<seed hash prefix>/`` and trim them from the list; meta field
``audit_trimmed`` counts the entries trimmed, so entry ``i`` sits at list position
``i - audit_trimmed - 1``. `AuditStore.entries` reads both, in index order, each index
exactly once.

A segment file is ``seg-<first>-<last>.fgs`` (12-digit indexes): the magic line
``FGSEG1\\n`` then, per entry, a 4-byte big-endian length and the entry's msgpack bytes,
exactly as Redis stored them. It is written to a temporary name, fsynced, renamed and
the directory fsynced before Redis is trimmed, so a crash leaves either no file or a
complete one. The segments directory must be shared by every gate process that may
seal the campaign (one host's data dir, or a shared volume).

The stored Merkle subtrees (``fg:{c}:mnodes``) of the moved entries move with them, so
Redis holds only those of the newest entries: ``nodes-<first>-<last>.fgn`` (written the
same way, before the fields are deleted from Redis) holds every stored subtree whose
last entry lies in ``first..last``: the magic line ``FGNOD1\\n`` then, per subtree, its
level (1 byte), its index (8 bytes, big-endian) and its 32-byte hash. The receipt index
of the moved join entries (``fg:{c}:rjoin``, ``fg:{c}:rsig``) moves the same way to
``receipts-<first>-<last>-<smallest first seq>.fgr``: the magic line ``FGRCP1\\n`` then
one JSON line ``[entry, first seq, "kid:sig"]`` per join entry, by first seq.
Only the newest signed checkpoints stay in ``fg:{c}:checkpoints`` (meta field
``checkpoints_trimmed`` counts the others): the older ones are in
``checkpoints-<first size>-<last size>.fgc``, the magic line ``FGCKP1\\n`` then each
checkpoint's JSON exactly as Redis held it, one a line.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import struct
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from gate.audit import merkle
from gate.audit.format import decode_entry
from gate.config import Config
from gate.redis_client import guarded
from gate.room.keys import CampaignKeys

MAGIC = b"FGSEG1\n"
SEGMENT_MAX_ENTRIES = 65536
READ_CHUNK = 1000
# The sealer stores every complete perfect subtree of at least 2**NODE_MIN_LEVEL entries
# (about one 32-byte hash per 128 entries), enough to build any proof from few leaves.
NODE_MIN_LEVEL = 8
_SEGMENT_RE = re.compile(r"^seg-(\d{12})-(\d{12})\.fgs$")
NODES_MAGIC = b"FGNOD1\n"
_NODES_RE = re.compile(r"^nodes-(\d{12})-(\d{12})\.fgn$")
_NODE_RECORD = struct.Struct(">BQ32s")
RECEIPTS_MAGIC = b"FGRCP1\n"
_RECEIPTS_RE = re.compile(r"^receipts-(\d{12})-(\d{12})-(\d{12})\.fgr$")
CHECKPOINTS_MAGIC = b"FGCKP1\n"
_CHECKPOINTS_RE = re.compile(r"^checkpoints-(\d{12})-(\d{12})\.fgc$")


class AuditGapError(RuntimeError):
    """An entry the log should hold is in neither Redis nor a segment file."""


def segments_root(config: Config) -> Path:
    """The directory under which each campaign's segment files live."""
    return config.data_dir / "audit"


def segment_directories(root: Path, campaign: str) -> list[Path]:
    """Every directory of segment files a campaign of this id has had on this disk (one per
    seed commitment, as `AuditStore.bounds` names them)."""
    if not root.is_dir():
        return []
    name = re.compile(re.escape(campaign) + r"\.[0-9a-f]{16}")
    return sorted(path for path in root.iterdir() if name.fullmatch(path.name) and path.is_dir())


@dataclass(frozen=True)
class Segment:
    first: int
    last: int
    path: Path


def node_field(level: int, index: int) -> str:
    return f"{level}:{index}"


def parse_node_field(field: bytes | str) -> tuple[int, int] | None:
    text = field.decode() if isinstance(field, bytes) else field
    level, sep, index = text.partition(":")
    if not (sep and level.isdigit() and index.isdigit()):
        return None
    return int(level), int(index)


def node_last_entry(level: int, index: int) -> int:
    """The index of the last entry (1-based) a stored subtree covers."""
    return (index + 1) << level


def _write_nodes(
    directory: Path, first: int, last: int, nodes: dict[tuple[int, int], bytes]
) -> Path:
    path = directory / f"nodes-{first:012d}-{last:012d}.fgn"
    body = bytearray(NODES_MAGIC)
    for (level, index), value in sorted(nodes.items()):
        body += _NODE_RECORD.pack(level, index, value)
    _write_file(directory, path, bytes(body))
    return path


def _parse_nodes(data: bytes, path: Path) -> dict[tuple[int, int], bytes]:
    if not data.startswith(NODES_MAGIC) or (len(data) - len(NODES_MAGIC)) % _NODE_RECORD.size:
        raise AuditGapError(f"{path}: not a complete subtree file")
    return {
        (level, index): value
        for level, index, value in _NODE_RECORD.iter_unpack(data[len(NODES_MAGIC) :])
    }


def entry_index(raw: bytes) -> int:
    return int(decode_entry(raw)["i"])


def _parse_segment(data: bytes, segment: Segment) -> list[bytes]:
    if not data.startswith(MAGIC):
        raise AuditGapError(f"{segment.path}: not a segment file")
    out: list[bytes] = []
    pos = len(MAGIC)
    while pos < len(data):
        if pos + 4 > len(data):
            raise AuditGapError(f"{segment.path}: truncated")
        (length,) = struct.unpack_from(">I", data, pos)
        pos += 4
        if pos + length > len(data):
            raise AuditGapError(f"{segment.path}: truncated")
        out.append(data[pos : pos + length])
        pos += length
    if len(out) != segment.last - segment.first + 1:
        raise AuditGapError(f"{segment.path}: holds {len(out)} entries, its name says otherwise")
    return out


def _write_segment(directory: Path, first: int, entries: list[bytes]) -> Segment:
    last = first + len(entries) - 1
    path = directory / f"seg-{first:012d}-{last:012d}.fgs"
    body = bytearray(MAGIC)
    for raw in entries:
        body += struct.pack(">I", len(raw))
        body += raw
    _write_file(directory, path, bytes(body))
    return Segment(first, last, path)


def _write_file(directory: Path, path: Path, body: bytes) -> None:
    """Temporary name, fsync, rename, fsync the directory: all of it or nothing."""
    tmp = directory / f".{path.name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        # A full disk: the part written would hold the space a retry needs.
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse_receipts(data: bytes, path: Path) -> list[tuple[int, int, str]]:
    if not data.startswith(RECEIPTS_MAGIC):
        raise AuditGapError(f"{path}: not a receipts file")
    out: list[tuple[int, int, str]] = []
    for line in data[len(RECEIPTS_MAGIC) :].splitlines():
        entry, first_seq, signature = json.loads(line)
        out.append((int(entry), int(first_seq), str(signature)))
    return out


class AuditStore:
    """Read a campaign's log (segments, then Redis); write segments for the sealer."""

    def __init__(self, redis: Redis, campaign: str, segments_dir: Path | None):
        self.redis = redis
        self.campaign = campaign
        self.keys = CampaignKeys(campaign)
        self.segments_dir = segments_dir
        # Resolved from the campaign's seed commitment (see `bounds`): a campaign id
        # created again after its Redis data was lost never sees the old one's files.
        self.directory: Path | None = None
        self._trimmed_hint = 0

    # -- segments --------------------------------------------------------------------

    async def segments(self) -> list[Segment]:
        if self.directory is None:
            await self.bounds()
        if self.directory is None or not self.directory.is_dir():
            return []
        found: list[Segment] = []
        for name in os.listdir(self.directory):
            match = _SEGMENT_RE.fullmatch(name)
            if match:
                found.append(Segment(int(match[1]), int(match[2]), self.directory / name))
        found.sort(key=lambda s: s.first)
        return found

    def _segment_for(self, index: int, segments: list[Segment]) -> Segment:
        for segment in segments:
            if segment.first <= index <= segment.last:
                return segment
        raise AuditGapError(
            f"campaign {self.campaign}: entry {index} was moved out of Redis but no segment "
            f"file in {self.directory} holds it"
        )

    async def _read_segment(self, segment: Segment) -> list[bytes]:
        data = await asyncio.to_thread(segment.path.read_bytes)
        return _parse_segment(data, segment)

    async def write_segments(self, first: int, entries: list[bytes]) -> list[Segment]:
        """Write entries ``first, first+1, ...`` as complete, fsynced segment files."""
        if self.directory is None:
            await self.bounds()
        if self.directory is None:
            raise RuntimeError("no segments directory configured")
        directory = self.directory
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        written: list[Segment] = []
        for offset in range(0, len(entries), SEGMENT_MAX_ENTRIES):
            part = entries[offset : offset + SEGMENT_MAX_ENTRIES]
            written.append(await asyncio.to_thread(_write_segment, directory, first + offset, part))
        return written

    # -- stored subtrees of moved entries ---------------------------------------------

    async def node_files(self) -> list[tuple[int, int, Path]]:
        """The subtree files, as (first entry, last entry, path)."""
        if self.directory is None:
            await self.bounds()
        if self.directory is None or not self.directory.is_dir():
            return []
        found: list[tuple[int, int, Path]] = []
        for name in os.listdir(self.directory):
            match = _NODES_RE.fullmatch(name)
            if match:
                found.append((int(match[1]), int(match[2]), self.directory / name))
        return sorted(found)

    async def archive_nodes(self, first: int, last: int) -> list[str]:
        """Write every subtree stored in Redis whose last entry is at most ``last`` to
        ``nodes-<first>-<last>.fgn`` (fsynced); returns their Redis fields, for
        `drop_nodes` once the entries are trimmed. Redis holds only the subtrees of the
        entries it still holds (plus a few levels above), so reading it whole is cheap;
        a field left behind by a crash before `drop_nodes` goes into this file too."""
        if self.directory is None:
            await self.bounds()
        if self.directory is None:
            raise RuntimeError("no segments directory configured")
        async with guarded():
            fields = await self.redis.hkeys(self.keys.merkle_nodes)
        chosen: list[tuple[tuple[int, int], bytes | str]] = []
        for field in fields:
            node = parse_node_field(field)
            if node is not None and node_last_entry(*node) <= last:
                chosen.append((node, field))
        if not chosen:
            return []
        async with guarded():
            values = await self.redis.hmget(self.keys.merkle_nodes, [f for _, f in chosen])
        nodes: dict[tuple[int, int], bytes] = {}
        for (node, _), value in zip(chosen, values, strict=True):
            if isinstance(value, bytes) and len(value) == merkle.HASH_SIZE:
                nodes[node] = value
        directory = self.directory
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(_write_nodes, directory, first, last, nodes)
        return [node_field(*node) for node in nodes]

    async def drop_nodes(self, fields: Sequence[str]) -> None:
        """Delete subtrees from Redis that `archive_nodes` has written to a file."""
        for offset in range(0, len(fields), READ_CHUNK):
            async with guarded():
                await self.redis.hdel(self.keys.merkle_nodes, *fields[offset : offset + READ_CHUNK])

    async def _archived_nodes(
        self, wanted: Sequence[tuple[int, int]]
    ) -> dict[tuple[int, int], bytes]:
        """Stored subtrees from the files of the entries they end in."""
        files = await self.node_files()
        out: dict[tuple[int, int], bytes] = {}
        for first, last, path in files:
            if not any(first <= node_last_entry(*node) <= last for node in wanted):
                continue
            data = await asyncio.to_thread(path.read_bytes)
            found = _parse_nodes(data, path)
            out.update((node, found[node]) for node in wanted if node in found)
        return out

    # -- receipt index of moved join entries -----------------------------------------

    async def archive_receipt_index(self, first: int, last: int) -> list[str]:
        """Write the receipt index of the join entries up to ``last`` (``fg:{c}:rjoin``
        and ``fg:{c}:rsig``: entry, its first seq, "kid:sig") to
        ``receipts-<first>-<last>-<smallest first seq>.fgr``, fsynced; returns the
        entries written, for `drop_receipt_index` once the entries are trimmed. An entry
        not yet signed stays in Redis."""
        if self.directory is None:
            await self.bounds()
        if self.directory is None:
            raise RuntimeError("no segments directory configured")
        async with guarded():
            indexed = await self.redis.zrange(self.keys.join_entries, 0, -1, withscores=True)
        chosen: list[tuple[int, int]] = []
        for item in indexed:
            member, score = item[0], item[1]
            if isinstance(member, bytes) and member.isdigit() and int(member) <= last:
                chosen.append((int(member), int(score)))
        if not chosen:
            return []
        async with guarded():
            signatures = await self.redis.hmget(
                self.keys.receipt_signatures, [str(entry) for entry, _ in chosen]
            )
        records = [
            (entry, first_seq, signature.decode())
            for (entry, first_seq), signature in zip(chosen, signatures, strict=True)
            if isinstance(signature, bytes)
        ]
        if not records:
            return []
        records.sort(key=lambda record: record[1])
        lines = b"".join(
            json.dumps(list(record), separators=(",", ":")).encode() + b"\n" for record in records
        )
        path = self.directory / f"receipts-{first:012d}-{last:012d}-{records[0][1]:012d}.fgr"
        directory = self.directory
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(_write_file, directory, path, RECEIPTS_MAGIC + lines)
        return [str(entry) for entry, _, _ in records]

    async def drop_receipt_index(self, entries: Sequence[str]) -> None:
        """Delete receipt index records from Redis that are in a receipts file."""
        for offset in range(0, len(entries), READ_CHUNK):
            part = entries[offset : offset + READ_CHUNK]
            async with guarded():
                pipe = self.redis.pipeline(transaction=True)
                pipe.zrem(self.keys.join_entries, *part)
                pipe.hdel(self.keys.receipt_signatures, *part)
                await pipe.execute()

    async def batch_signatures(self) -> dict[int, str]:
        """Every join entry's recorded batch signature, "kid:sig" by entry index: the ones
        moved to receipts files, then the ones in Redis (``fg:{c}:rsig``, read a chunk at a
        time). For the export (docs/audit-format.md, "Batch signatures")."""
        out: dict[int, str] = {}
        if self.directory is None:
            await self.bounds()
        if self.directory is not None and self.directory.is_dir():
            for name in sorted(os.listdir(self.directory)):
                if _RECEIPTS_RE.fullmatch(name):
                    path = self.directory / name
                    data = await asyncio.to_thread(path.read_bytes)
                    for entry, _, signature in _parse_receipts(data, path):
                        out.setdefault(entry, signature)
        cursor = 0
        while True:
            async with guarded():
                cursor, found = await self.redis.hscan(
                    self.keys.receipt_signatures, cursor, count=READ_CHUNK
                )
            pairs = found.items() if isinstance(found, dict) else []
            for field, value in pairs:
                if isinstance(field, bytes) and field.isdigit() and isinstance(value, bytes):
                    out.setdefault(int(field), value.decode())
            if not cursor:
                return out

    async def archived_receipt_index(self, seqs: Sequence[int]) -> dict[int, tuple[int, str]]:
        """For each seq, the moved join entry with the largest first seq not above it, and
        its "kid:sig" (the caller checks the seq is in that batch)."""
        if self.directory is None:
            await self.bounds()
        if self.directory is None or not self.directory.is_dir() or not seqs:
            return {}
        files: list[tuple[int, Path]] = []
        for name in os.listdir(self.directory):
            match = _RECEIPTS_RE.fullmatch(name)
            if match:
                files.append((int(match[3]), self.directory / name))
        files.sort(reverse=True)
        out: dict[int, tuple[int, str]] = {}
        parsed: dict[Path, list[tuple[int, int, str]]] = {}
        for seq in seqs:
            # The batch is in the newest file starting at or below it; a second file
            # covers a copy a predecessor wrote before it could trim.
            best: tuple[int, int, str] | None = None
            for _, path in [f for f in files if f[0] <= seq][:2]:
                if path not in parsed:
                    parsed[path] = _parse_receipts(await asyncio.to_thread(path.read_bytes), path)
                for entry, first_seq, signature in parsed[path]:
                    if first_seq <= seq and (best is None or first_seq > best[1]):
                        best = (entry, first_seq, signature)
            if best is not None:
                out[seq] = (best[0], best[2])
        return out

    # -- Redis -----------------------------------------------------------------------

    async def bounds(self) -> tuple[int, int]:
        """(entries trimmed from Redis into segments, entries in the log), read together."""
        async with guarded():
            trimmed, size, seed_hash = await self.redis.hmget(
                self.keys.meta, ["audit_trimmed", "audit_n", "seed_hash"]
            )
        if self.segments_dir is not None and self.directory is None:
            tag = seed_hash.decode()[:16] if isinstance(seed_hash, bytes) else "unsealed"
            self.directory = self.segments_dir / f"{self.campaign}.{tag}"
        return int(trimmed or 0), int(size or 0)

    async def _redis_chunk(self, first: int, count: int, trimmed: int) -> tuple[int, list[bytes]]:
        """Entries from index ``first`` (at most ``count``), read in one transaction with
        the trim offset so positions are exact; returns (trimmed, entries)."""
        start = first - trimmed - 1
        async with guarded():
            pipe = self.redis.pipeline(transaction=True)
            pipe.hget(self.keys.meta, "audit_trimmed")
            pipe.lrange(self.keys.audit, start, start + count - 1)
            now_trimmed, raw = await pipe.execute()
        return int(now_trimmed or 0), [r for r in raw if isinstance(r, bytes)]

    async def entries(
        self, start: int = 1, stop: int | None = None
    ) -> AsyncIterator[tuple[int, bytes]]:
        """Yield ``(index, raw msgpack bytes)`` for indexes ``start..stop`` (inclusive; to
        the end of the log when ``stop`` is None), in order, each exactly once."""
        trimmed, size = await self.bounds()
        last = size if stop is None else min(stop, size)
        index = max(start, 1)
        segments: list[Segment] | None = None
        while index <= last:
            if index <= trimmed:
                if segments is None:
                    segments = await self.segments()
                segment = self._segment_for(index, segments)
                for offset, raw in enumerate(await self._read_segment(segment)):
                    i = segment.first + offset
                    if index <= i <= min(last, trimmed):
                        yield i, raw
                index = min(segment.last, last, trimmed) + 1
                continue
            count = min(READ_CHUNK, last - index + 1)
            now_trimmed, chunk = await self._redis_chunk(index, count, trimmed)
            if now_trimmed != trimmed:
                # The sealer moved entries meanwhile: positions shifted; read again.
                trimmed = now_trimmed
                segments = None
                continue
            if not chunk:
                raise AuditGapError(f"campaign {self.campaign}: entry {index} is missing")
            for i, raw in enumerate(chunk, start=index):
                if i in (index, index + len(chunk) - 1) and entry_index(raw) != i:
                    raise AuditGapError(
                        f"campaign {self.campaign}: list position of entry {i} holds "
                        f"entry {entry_index(raw)}"
                    )
            for i, raw in enumerate(chunk, start=index):
                yield i, raw
            index += len(chunk)

    async def entries_at(self, indexes: Sequence[int]) -> dict[int, bytes]:
        """Scattered entries by index (those the log does not hold are left out), read
        in one transaction with the trim offset (segments for moved ones)."""
        wanted = sorted({i for i in indexes if i >= 1})
        out: dict[int, bytes] = {}
        if not wanted:
            return out
        for _ in range(3):
            guess = self._trimmed_hint
            in_redis = [i for i in wanted if i > guess]
            async with guarded():
                pipe = self.redis.pipeline(transaction=True)
                pipe.hget(self.keys.meta, "audit_trimmed")
                for i in in_redis:
                    pipe.lindex(self.keys.audit, i - guess - 1)
                trimmed_raw, *values = await pipe.execute()
            self._trimmed_hint = int(trimmed_raw or 0)
            if self._trimmed_hint != guess:
                continue
            for i, raw in zip(in_redis, values, strict=True):
                if isinstance(raw, bytes) and entry_index(raw) == i:
                    out[i] = raw
            break
        moved = [i for i in wanted if i <= self._trimmed_hint]
        if moved:
            async for i, raw in self._from_segments(moved):
                out[i] = raw
        return out

    async def _from_segments(self, indexes: list[int]) -> AsyncIterator[tuple[int, bytes]]:
        segments = await self.segments()
        by_segment: dict[Path, tuple[Segment, list[int]]] = {}
        for i in indexes:
            segment = self._segment_for(i, segments)
            by_segment.setdefault(segment.path, (segment, []))[1].append(i)
        for segment, members in by_segment.values():
            records = await self._read_segment(segment)
            for i in members:
                yield i, records[i - segment.first]

    async def entry(self, index: int) -> bytes | None:
        async for i, raw in self.entries(index, index):
            if i == index:
                return raw
        return None

    def iter_segment_entries(self, segment: Segment) -> Iterator[tuple[int, bytes]]:
        """Synchronous read of one segment (offline tools)."""
        for offset, raw in enumerate(_parse_segment(segment.path.read_bytes(), segment)):
            yield segment.first + offset, raw

    # -- proofs ----------------------------------------------------------------------

    async def subtree_hashes(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        """MTH of each 0-based leaf range, from the sealer's stored subtrees (see
        ``fg:{c}:mnodes``) plus the few leaves they do not cover: an inclusion or
        consistency proof reads a few hundred entries, not the whole log."""
        wanted = sorted(
            {node for lo, hi in ranges for node in merkle.stored_subtrees(lo, hi, NODE_MIN_LEVEL)}
        )
        stored: dict[tuple[int, int], bytes] = {}
        if wanted:
            async with guarded():
                values = await self.redis.hmget(
                    self.keys.merkle_nodes, [node_field(level, i) for level, i in wanted]
                )
            for node, value in zip(wanted, values, strict=True):
                if isinstance(value, bytes) and len(value) == merkle.HASH_SIZE:
                    stored[node] = value
            absent = [node for node in wanted if node not in stored]
            if absent:
                trimmed, _ = await self.bounds()
                moved = [node for node in absent if node_last_entry(*node) <= trimmed]
                if moved:
                    stored.update(await self._archived_nodes(moved))

        def has(level: int, index: int) -> bool:
            return (level, index) in stored

        needed = sorted(
            {
                i
                for lo, hi in ranges
                for a, b in merkle.leaves_needed(lo, hi, has)
                for i in range(a, b)
            }
        )
        leaves: dict[int, bytes] = {}
        runs: list[tuple[int, int]] = []
        for i in needed:
            if runs and runs[-1][1] == i:
                runs[-1] = (runs[-1][0], i + 1)
            else:
                runs.append((i, i + 1))
        for a, b in runs:
            async for index, raw in self.entries(a + 1, b):
                leaves[index - 1] = merkle.leaf_hash(raw)
        missing = [i for i in needed if i not in leaves]
        if missing:
            raise AuditGapError(f"campaign {self.campaign}: entry {missing[0] + 1} is missing")
        return [
            merkle.range_hash(lo, hi, leaves.__getitem__, lambda lv, ix: stored.get((lv, ix)))
            for lo, hi in ranges
        ]

    async def inclusion_proof(self, leaf_index: int, size: int) -> list[bytes]:
        """RFC 6962 audit path of leaf ``leaf_index`` (entry ``leaf_index + 1``)."""
        return await self.subtree_hashes(merkle.inclusion_ranges(leaf_index, size))

    async def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        return await self.subtree_hashes(merkle.consistency_ranges(old_size, new_size))

    async def root(self, size: int) -> bytes:
        if size == 0:
            return merkle.EMPTY_ROOT
        return (await self.subtree_hashes([(0, size)]))[0]

    # -- checkpoints -----------------------------------------------------------------

    async def checkpoints(self) -> list[dict[str, Any]]:
        """Every published checkpoint, in size order (as signed; see checkpoints.py): the
        older ones from the checkpoints files, the newest from Redis."""
        async with guarded():
            pipe = self.redis.pipeline(transaction=True)
            pipe.hget(self.keys.meta, "checkpoints_trimmed")
            pipe.lrange(self.keys.checkpoints, 0, -1)
            trimmed_raw, raw = await pipe.execute()
        in_redis = [json.loads(item) for item in raw]
        trimmed = int(trimmed_raw or 0)
        if not trimmed:
            return in_redis
        # Files written after the read above hold only checkpoints Redis still had then.
        first_size = in_redis[0]["size"] if in_redis else None
        older = {
            checkpoint["size"]: checkpoint
            for checkpoint in await self._archived_checkpoints()
            if first_size is None or checkpoint["size"] < first_size
        }
        if len(older) != trimmed:
            raise AuditGapError(
                f"campaign {self.campaign}: {trimmed} checkpoints moved out of Redis, "
                f"{len(older)} found in {self.directory}"
            )
        return [older[size] for size in sorted(older)] + in_redis

    async def _archived_checkpoints(self) -> list[dict[str, Any]]:
        if self.directory is None:
            await self.bounds()
        if self.directory is None or not self.directory.is_dir():
            return []
        out: list[dict[str, Any]] = []
        for name in sorted(os.listdir(self.directory)):
            if _CHECKPOINTS_RE.fullmatch(name):
                data = await asyncio.to_thread((self.directory / name).read_bytes)
                if not data.startswith(CHECKPOINTS_MAGIC):
                    raise AuditGapError(f"{self.directory / name}: not a checkpoints file")
                out.extend(json.loads(line) for line in data[len(CHECKPOINTS_MAGIC) :].splitlines())
        return out

    async def archive_checkpoints(self, raw: Sequence[bytes]) -> None:
        """Write the oldest checkpoints, as Redis holds them, to a fsynced file."""
        if self.directory is None:
            await self.bounds()
        if self.directory is None:
            raise RuntimeError("no segments directory configured")
        sizes = [json.loads(item)["size"] for item in raw]
        path = self.directory / f"checkpoints-{sizes[0]:012d}-{sizes[-1]:012d}.fgc"
        body = CHECKPOINTS_MAGIC + b"".join(item.rstrip(b"\n") + b"\n" for item in raw)
        directory = self.directory
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(_write_file, directory, path, body)

    async def first_checkpoint(self) -> dict[str, Any] | None:
        """The campaign's first checkpoint: the one that covers its commitment (entry 1,
        gate/audit/commitment.py); from Redis while none moved to a file."""
        async with guarded():
            pipe = self.redis.pipeline(transaction=True)
            pipe.hget(self.keys.meta, "checkpoints_trimmed")
            pipe.lindex(self.keys.checkpoints, 0)
            trimmed, raw = await pipe.execute()
        if not int(trimmed or 0):
            return json.loads(raw) if raw else None
        archived = await self._archived_checkpoints()
        return min(archived, key=lambda checkpoint: int(checkpoint["size"])) if archived else None

    async def latest_checkpoint(self) -> dict[str, Any] | None:
        async with guarded():
            raw = await self.redis.lindex(self.keys.checkpoints, -1)
        return json.loads(raw) if raw else None
