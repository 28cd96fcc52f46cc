"""A ballot customer holds a signed receipt of their subscription (issue 13).

What was found: with the signing key, an operator who changes a subscription amount by a
step that moves no allotment, and signs every checkpoint again, gets a log that verifies:
every other entry agrees with it. The customer now holds the evidence: the subscribe
answer carries a receipt signed over (campaign, seq, t, digest, amount, entry), and
`gate audit verify --receipt` refuses a log whose entry says otherwise (`altered`), or
that lacks it (`missing_receipt`).

Through the gate's own HTTP API, a real Redis and the real sealer; the tampered export is
what an insider with the key can publish.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gate.audit.format import load_public_keys
from gate.audit.receipts import verify_subscription_receipt
from gate.audit.report import VerificationFailed
from gate.audit.verify import verify_lines
from gate.service import Gate
from gate.signing import SigningKeys
from tests.helpers import Export, admitted, amount_spec, as_customer, wait_sealed
from tests.test_replay_rules import entries_of, resign, rewrite

C = "sub-receipt"
STEP = 10_000


def verify(export: Export, keys: SigningKeys, **options: Any) -> Any:
    return verify_lines(export.lines(), keys.public_keys(), keys_from="published", **options)


async def test_a_changed_subscription_is_caught_by_the_customers_receipt(
    gate: Gate, admin: Any, public: Any, keys: SigningKeys
) -> None:
    r = await admin.post("/admin/campaigns", json={**amount_spec(C), "policy": "ballot"})
    assert r.status == 201, await r.text()
    answers: dict[str, dict[str, Any]] = {}
    for who, amount in (("ann", 3_000_000), ("ben", 5_000_000), ("cy", 2_000_000)):
        _, pass_token = await admitted(public, C, who)
        r = await public.post(
            f"/q/{C}/claim",
            json={"amount": str(amount)},
            headers={**as_customer(who), "X-Gate-Pass": pass_token},
        )
        assert r.status == 201, await r.text()
        answers[who] = await r.json()
        again = await public.post(
            f"/q/{C}/claim",
            json={"amount": str(amount)},
            headers={**as_customer(who), "X-Gate-Pass": pass_token},
        )
        assert again.status == 200, await again.text()
        # a retried subscribe gets the same receipt
        assert (await again.json())["receipt"] == answers[who]["receipt"]
    receipt = answers["ben"]["receipt"]
    assert receipt["type"] == "subscription" and receipt["amount"] == "5000000"
    assert verify_subscription_receipt(receipt, load_public_keys(keys.public_keys()))
    forged = {**receipt, "amount": "5010000"}
    assert not verify_subscription_receipt(forged, load_public_keys(keys.public_keys()))

    await wait_sealed(gate, C)
    r = await admin.get(f"/admin/campaigns/{C}/audit/export")
    clean = Export.parse(await r.text())
    held = [(f"{who}.json", answer) for who, answer in answers.items()]
    report = verify(clean, keys, receipts=held)
    assert len(report.receipts) == 3 and "subscription" in report.receipts[1]

    # The insider with the key: ben's subscription one step lower (no allotment yet to
    # disagree with it), every checkpoint signed again. Alone, it verifies.
    tampered = copy.deepcopy(clean)
    entries = entries_of(tampered)
    (position,) = [
        p for p, e in enumerate(entries) if e[b"k"] == b"subscribe" and e[b"m"] == b"5000000"
    ]
    entries[position][b"m"] = str(5_000_000 - STEP).encode()
    rewrite(tampered, entries, [])
    resign(tampered, keys)
    assert verify(tampered, keys).entries == len(clean.entries)
    with pytest.raises(VerificationFailed) as failed:
        verify(tampered, keys, receipts=held)
    assert failed.value.failure.kind == "altered", failed.value.failure
    assert failed.value.failure.receipt == "ben.json"
    assert "subscription" in failed.value.failure.message

    # Cut back before ben's subscription: his receipt names an entry the log lacks.
    cut = copy.deepcopy(clean)
    cut.entries = cut.entries[:position]
    cut.checkpoints = [cp for cp in cut.checkpoints if cp["size"] <= position]
    with pytest.raises(VerificationFailed) as failed:
        verify(cut, keys, receipts=held[1:2], require_sealed=False)
    assert failed.value.failure.kind == "missing_receipt", failed.value.failure
