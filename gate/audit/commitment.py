"""A campaign's commitment, published before anyone may join (issue 13).

Entry 1 of a campaign's log, `admin-create`, holds its rules (the spec as given, with
`opens_at`) and the commitments to its seeds (`h`, the ballot's; `hq`, the pre-queue's).
The campaign is created with ``commit_pending`` set, so joins are refused (503
``campaign_not_published``) until the checkpoint that covers entry 1 is published:

- without witnesses, the first signed checkpoint publishes it (checkpoint_add.lua); the
  admin API's create seals it at once and answers 201 with it (`publish`);
- with witnesses (``witness_keys``), the quorum's cosignatures do
  (gate/audit/cosignatures.py): the campaign can open only once K of N witnesses hold it.

`gate audit verify` checks the order from the log alone: a checkpoint that covers entry 1
and not the first join (`late_commitment` otherwise; docs/audit-format.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

from gate.audit.sealer import Sealer
from gate.audit.store import AuditStore
from gate.campaign import load_stored_spec
from gate.room import Room

# The entry a campaign's commitment is: the first of its log.
COMMITMENT_ENTRY = 1


async def publish(room: Room, sealer: Sealer, store: AuditStore, timeout_s: float) -> bool:
    """Seal the new campaign's entry 1 now (this process's sealer takes the lease, or the
    holder seals within its interval) until the commitment is published, or `timeout_s`
    passes; True once published. With witnesses required the sealer only signs: once the
    checkpoint is there the answer is False at once (the witnesses publish it when they
    cosign; joins wait until then)."""
    campaign = store.campaign
    deadline = time.monotonic() + timeout_s
    while True:
        if not await room.commitment_pending(campaign):
            return True
        if not sealer.publishes and await store.latest_checkpoint():
            return False
        if time.monotonic() >= deadline:
            return False
        await sealer.step(campaign, force=True)
        if not await room.commitment_pending(campaign):
            return True
        await asyncio.sleep(0.02)


async def view(store: AuditStore, meta: dict[str, str]) -> dict[str, Any]:
    """What a campaign committed to at creation, and the checkpoint that covers it."""
    return {
        "entry": COMMITMENT_ENTRY,
        "spec_sha256": hashlib.sha256(meta["spec"].encode()).hexdigest(),
        "opens_at": load_stored_spec(meta["spec"]).to_json()["opens_at"],
        "seed_hash": meta["seed_hash"],
        "pq_seed_hash": meta["pq_seed_hash"],
        "checkpoint": await store.first_checkpoint(),
        "published": "commit_pending" not in meta,
    }
