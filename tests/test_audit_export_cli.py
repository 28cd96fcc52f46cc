"""`gate audit query|export|verify|dispute` against a real `gate serve` process.

Customers join, are admitted, get passes, claim and are confirmed over HTTP; the gate's
own sealer signs checkpoints; the commands run as subprocesses (`python -m gate`), and
`verify` runs offline with the keys the public listener publishes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest

from tests.helpers import (
    ADMIN_TOKEN,
    CORE_TOKEN,
    GateProcess,
    assert_clean_error,
    gate_cli,
    spec,
    wait_for,
)


@pytest.fixture
async def served(redis_url: str, keys_file: Path, tmp_path: Path) -> AsyncIterator[GateProcess]:
    env = {"GATE_SEAL_INTERVAL_MS": "100"}
    async with GateProcess(redis_url, tmp_path / "gate", keys_file, extra_env=env) as process:
        yield process


async def run_campaign(served: GateProcess, campaign: str) -> dict[str, Any]:
    """Three customers: alice claims and is confirmed, bob is admitted, carol waits."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    s = spec(campaign, reservation_ttl_s=60)
    s["quota"] = {"unit": "KRW", "total": "30000000", "min": "1000000", "max": "10000000"}
    async with aiohttp.ClientSession() as http:
        r = await http.post(served.admin_url + "/admin/campaigns", json=s, headers=admin)
        assert r.status == 201, await r.text()
        tickets = {}
        for name in ("alice", "bob"):
            r = await http.post(f"{served.url}/q/{campaign}/join", headers={"X-Customer-Id": name})
            assert r.status == 201
            tickets[name] = (await r.json())["ticket"]
        status: dict[str, Any] = {}

        async def admitted() -> bool:
            r = await http.get(
                f"{served.url}/q/{campaign}/status",
                params={"ticket": tickets["alice"]},
                headers={"X-Customer-Id": "alice"},
            )
            status.update(await r.json())
            return bool(status.get("state") == "admitted")

        await wait_for(admitted, 10, "alice admitted")
        r = await http.post(
            f"{served.url}/q/{campaign}/claim",
            json={"amount": "7000000"},
            headers={"X-Gate-Pass": status["pass"], "X-Customer-Id": "alice"},
        )
        assert r.status == 201, await r.text()
        rid = (await r.json())["reservation"]
        r = await http.post(
            f"{served.core_url}/q/{campaign}/reservations/{rid}/confirm",
            headers={"Authorization": f"Bearer {CORE_TOKEN}"},
        )
        assert r.status == 200
        r = await http.post(f"{served.url}/q/{campaign}/join", headers={"X-Customer-Id": "carol"})
        assert r.status == 201

        async def sealed() -> bool:
            stats = await (
                await http.get(
                    f"{served.admin_url}/admin/campaigns/{campaign}/stats", headers=admin
                )
            ).json()
            cps = await (
                await http.get(
                    f"{served.admin_url}/admin/campaigns/{campaign}/checkpoints", headers=admin
                )
            ).json()
            return (
                bool(cps["checkpoints"])
                and (cps["checkpoints"][-1]["size"] == stats["audit_entries"])
                and stats["admitted"] == 3
            )

        await wait_for(sealed, 15, "everyone admitted and the log sealed")
        keys = await (await http.get(served.url + "/.well-known/fairgate/keys")).json()
        receipt = await (
            await http.get(
                f"{served.url}/q/{campaign}/receipt/1",
                params={"ticket": tickets["alice"]},
                headers={"X-Customer-Id": "alice"},
            )
        ).json()
    return {"keys": keys, "receipt": receipt}


async def test_audit_commands_against_a_real_gate(served: GateProcess, tmp_path: Path) -> None:
    env = {"GATE_ADMIN_URL": served.admin_url, "GATE_ADMIN_TOKEN": ADMIN_TOKEN}
    facts = await run_campaign(served, "cli1")
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps(facts["keys"]))
    receipt_file = tmp_path / "receipt.json"
    receipt_file.write_text(json.dumps(facts["receipt"]))

    # export: to stdout and to a file, the same bytes
    exported = await gate_cli("audit", "export", "cli1", env=env)
    assert exported.code == 0, exported
    log_file = tmp_path / "log.jsonl"
    written = await gate_cli("audit", "export", "cli1", "--out", str(log_file), env=env)
    assert written.code == 0, written
    assert log_file.read_text() == exported.out
    assert json.loads(exported.out.splitlines()[0])["type"] == "header"

    # verify offline with the published keys and the receipt
    verified = await gate_cli(
        "audit",
        "verify",
        str(log_file),
        "--keys",
        str(keys_file),
        "--sealed",
        "--receipt",
        str(receipt_file),
    )
    assert verified.code == 0, verified
    assert "campaign cli1: OK" in verified.out and "customers: 3 tickets" in verified.out
    assert "receipt seq 1: signed by" in verified.out and "sealed" in verified.out
    assert "claims: 1; confirmed 1 for 7000000 KRW" in verified.out

    # a tampered entry: exit 1, the entry named
    lines = log_file.read_text().splitlines()
    position = next(
        n
        for n, line in enumerate(lines)
        if '"entry"' in line
        and msgpack.unpackb(base64.b64decode(json.loads(line)["raw"]), raw=True)[b"k"] == b"claim"
    )
    entry_line = json.loads(lines[position])
    entry = msgpack.unpackb(base64.b64decode(entry_line["raw"]), raw=True)
    entry[b"m"] = b"9000000"
    entry_line["raw"] = base64.b64encode(msgpack.packb(entry, use_bin_type=False)).decode()
    lines[position] = json.dumps(entry_line)
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join(lines) + "\n")
    failed = await gate_cli("audit", "verify", str(tampered), "--keys", str(keys_file))
    message = assert_clean_error(failed, "verify_failed", exit_code=1)
    assert f"entry {entry_line['i']}" in message and "checkpoint #" in message
    assert failed.out.startswith("FAILED ")

    # a tampered receipt: exit 1, the receipt named
    receipt = json.loads(receipt_file.read_text())
    receipt["receipt"]["seq"] = 2
    bad_receipt = tmp_path / "bad-receipt.json"
    bad_receipt.write_text(json.dumps(receipt))
    failed = await gate_cli(
        "audit", "verify", str(log_file), "--keys", str(keys_file), "--receipt", str(bad_receipt)
    )
    assert f"receipt {bad_receipt}" in assert_clean_error(failed, "verify_failed", exit_code=1)

    # query by customer, and by seq
    queried = await gate_cli("audit", "query", "cli1", "--customer", "alice", env=env)
    assert queried.code == 0, queried
    body = json.loads(queried.out)
    assert body["customer"]["seq"] == 1
    assert [e["k"] for e in body["entries"]] == ["join", "admit", "pass", "claim", "confirm"]
    by_seq = await gate_cli("audit", "query", "cli1", "--from-seq", "3", "--to-seq", "3", env=env)
    assert by_seq.code == 0 and {e["k"] for e in json.loads(by_seq.out)["entries"]} == {
        "join",
        "admit",
    }
    bad = await gate_cli("audit", "query", "cli1", "--since", "yesterday", env=env)
    assert "since:" in assert_clean_error(bad, "bad_query")

    # the dispute account, its proofs checked with the published keys
    dispute = await gate_cli(
        "audit", "dispute", "cli1", "--customer", "alice", "--keys", str(keys_file), env=env
    )
    assert dispute.code == 0, dispute
    for phrase in (
        "Seq 1, given at",
        "Admitted at",
        "Received a pass at",
        "Claimed 7000000 KRW",
        "confirmed at",
        "[ok] join receipt (seq 1)",
    ):
        assert phrase in dispute.out, (phrase, dispute.out)
    assert "FAILED" not in dispute.out
    carol = await gate_cli("audit", "dispute", "cli1", "--customer", "carol", env=env)
    assert carol.code == 0 and "Seq 3" in carol.out and "Never fetched a pass" in carol.out


async def test_audit_command_errors(served: GateProcess, tmp_path: Path) -> None:
    env = {"GATE_ADMIN_URL": served.admin_url, "GATE_ADMIN_TOKEN": ADMIN_TOKEN}
    assert_clean_error(await gate_cli("audit", "export", "nope", env=env), "unknown_campaign")
    assert_clean_error(
        await gate_cli("audit", "dispute", "nope", "--customer", "a", env=env), "unknown_campaign"
    )
    assert_clean_error(await gate_cli("audit", "query", "nope", env=env), "unknown_campaign")
    no_token = await gate_cli("audit", "export", "x", env={"GATE_ADMIN_URL": served.admin_url})
    assert_clean_error(no_token, "no_admin_token")
    missing = await gate_cli("audit", "verify", str(tmp_path / "absent.jsonl"))
    assert_clean_error(missing, "bad_file")
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("not json\n")
    assert "line 1" in assert_clean_error(
        await gate_cli("audit", "verify", str(garbage)), "verify_failed", 1
    )
    keys = tmp_path / "keys.json"
    keys.write_text("{}")
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"type": "header", "format": "fairgate-audit/1", "campaign": "x"}))
    bad_keys = await gate_cli("audit", "verify", str(log), "--keys", str(keys))
    assert "keys file" in assert_clean_error(bad_keys, "bad_keys")
    no_keys = await gate_cli("audit", "verify", str(log))  # the header has none either
    assert "public keys" in assert_clean_error(no_keys, "verify_failed", 1)
    unreachable = await gate_cli(
        "audit",
        "export",
        "x",
        env={"GATE_ADMIN_URL": "http://127.0.0.1:9", "GATE_ADMIN_TOKEN": "t"},
    )
    assert_clean_error(unreachable, "unreachable")
