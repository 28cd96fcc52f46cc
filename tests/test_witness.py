"""Witnessed checkpoints against real processes: a `gate serve`, and `gate witness` as its
own subprocess (`python -m gate witness run --once`), as a regulator would run it.

- A witness cosigns a campaign's checkpoints across two sealing rounds (the second only
  after the consistency proof from the first checked); with two witnesses and a quorum of
  2 the checkpoint is published once both cosigned (note headers, the witnessed JSON,
  the fairgate_checkpoint_witnessed_size metric).
- A forked log (the same campaign on a second gate and Redis, same signing key, other
  customers) shown to the witness is refused: exit 3, the two signed heads written as
  evidence (both verify under the gate's key), and it never cosigns that campaign again.
- Every bad input to the new endpoints is a clear 4xx.

Before this change the endpoints were 404 and `gate witness` an unknown command (exit 2).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from gate.redis_server import RedisServer
from tests.helpers import (
    ADMIN_TOKEN,
    GateProcess,
    Result,
    assert_clean_error,
    gate_cli,
    spec,
    wait_for,
)

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
WELL_KNOWN = "/.well-known/fairgate"


async def keygen(directory: Path, name: str) -> tuple[Path, str]:
    path = directory / f"{name.replace('/', '_')}.key"
    result = await gate_cli("witness", "keygen", "--out", str(path), "--name", name)
    assert result.code == 0, result
    return path, result.out.strip()


async def witness(key: Path, state: Path, gate: GateProcess, campaign: str) -> Result:
    return await gate_cli(
        "witness", "run", "--key", str(key), "--state", str(state), "--gate", gate.url,
        "--campaign", campaign, "--once",
    )  # fmt: skip


async def join(http: aiohttp.ClientSession, gate: GateProcess, campaign: str, who: str) -> str:
    r = await http.post(f"{gate.url}/q/{campaign}/join", headers={"X-Customer-Id": who})
    assert r.status == 201, await r.text()
    ticket: str = (await r.json())["ticket"]
    return ticket


async def create(
    http: aiohttp.ClientSession,
    gate: GateProcess,
    campaign: str,
    publish_with: Sequence[tuple[Path, Path]] = (),
) -> dict[str, Any]:
    """Create the campaign; where the gate requires witnesses, the witnesses (key, state)
    in `publish_with` cosign its commitment checkpoint, so that joins may come."""
    r = await http.post(gate.admin_url + "/admin/campaigns", json=spec(campaign), headers=ADMIN)
    assert r.status == 201, await r.text()
    created: dict[str, Any] = await r.json()
    for key, state in publish_with:
        result = await witness(key, state, gate, campaign)
        assert result.code == 0, result
    return created


async def sealed_note(http: aiohttp.ClientSession, gate: GateProcess, campaign: str) -> str:
    """The checkpoint note once everyone who joined is admitted (the log is quiet then:
    nobody polls, no pass expires within the test) and the sealer sealed every entry."""
    note: dict[str, str] = {}

    async def all_sealed() -> bool:
        stats = await (
            await http.get(f"{gate.admin_url}/admin/campaigns/{campaign}/stats", headers=ADMIN)
        ).json()
        r = await http.get(f"{gate.url}{WELL_KNOWN}/checkpoint/{campaign}")
        if r.status != 200:
            return False
        note["text"] = await r.text()
        quiet = stats["admitted"] == stats["joined"]
        return quiet and note["text"].split("\n")[1] == str(stats["audit_entries"])

    await wait_for(all_sealed, 15, f"{campaign} sealed", interval_s=0.05)
    return note["text"]


def note_size(text: str) -> int:
    return int(text.split("\n")[1])


@pytest.fixture
async def witnesses(tmp_path: Path) -> list[tuple[Path, str]]:
    return [await keygen(tmp_path, f"witness.test/w{i}") for i in (1, 2)]


@pytest.fixture
async def served(
    redis_url: str, keys_file: Path, tmp_path: Path, witnesses: list[tuple[Path, str]]
) -> AsyncIterator[GateProcess]:
    env = {
        "GATE_SEAL_INTERVAL_MS": "100",
        "GATE_WITNESS_KEYS": ",".join(vkey for _, vkey in witnesses),
        "GATE_WITNESS_QUORUM": "2",
        "GATE_CHECKPOINT_ORIGIN": "fairgate.bank.test",
    }
    async with GateProcess(redis_url, tmp_path / "gate", keys_file, extra_env=env) as process:
        yield process


async def test_a_witness_cosigns_two_sealing_rounds_and_two_of_two_publish(
    served: GateProcess, witnesses: list[tuple[Path, str]], tmp_path: Path
) -> None:
    (key1, vkey1), (key2, vkey2) = witnesses
    assert re.fullmatch(r"witness\.test/w1\+[0-9a-f]{8}\+[A-Za-z0-9+/]{44}", vkey1)
    async with aiohttp.ClientSession() as http:
        r = await http.get(f"{served.url}{WELL_KNOWN}/checkpoint/wit")
        assert r.status == 404, await r.text()  # no campaign, no checkpoint
        # The commitment (entry 1: the rules and the seed commitments) is signed at once,
        # but with witnesses required nobody may join before K of N cosigned it.
        state1, state2 = tmp_path / "w1-state", tmp_path / "w2-state"
        created = await create(http, served, "wit")
        assert created["commitment"]["checkpoint"]["size"] == 1
        assert created["commitment"]["published"] is False
        r = await http.post(f"{served.url}/q/wit/join", headers={"X-Customer-Id": "early"})
        assert r.status == 503 and r.headers["Retry-After"] == "1", await r.text()
        assert (await r.json())["error"]["code"] == "campaign_not_published"
        assert (await witness(key1, state1, served, "wit")).code == 0  # 1 of 2: not yet
        r = await http.post(f"{served.url}/q/wit/join", headers={"X-Customer-Id": "early"})
        assert r.status == 503, await r.text()
        assert (await witness(key2, state2, served, "wit")).code == 0  # 2 of 2: published
        tickets = {who: await join(http, served, "wit", who) for who in ("alice", "bob")}
        first = await sealed_note(http, served, "wit")
        assert first.startswith("fairgate.bank.test/wit\n")
        assert "\n\n— fairgate.bank.test/wit " in first

        result = await witness(key1, state1, served, "wit")
        assert result.code == 0, result
        line = json.loads(result.out.splitlines()[-1])
        assert line["outcome"] == "cosigned" and line["size"] == note_size(first)
        assert line["cosigned_by"] == ["witness.test/w1"] and line["published"] is False
        held = json.loads((state1 / "wit.json").read_text())
        assert held["size"] == note_size(first)

        r = await http.get(f"{served.url}{WELL_KNOWN}/checkpoint/wit")
        text = await r.text()
        assert r.headers["Fairgate-Published"] == "no"
        assert r.headers["Fairgate-Witness-Quorum"] == "2 of 2"
        assert "— witness.test/w1 " in text and text.startswith(first.split("\n\n")[0])

        # The second round: more entries, a bigger checkpoint, consistency from the first.
        for who in ("carol", "dave", "erin"):
            await join(http, served, "wit", who)
        second = await sealed_note(http, served, "wit")
        assert note_size(second) > note_size(first)
        result = await witness(key1, state1, served, "wit")
        assert result.code == 0, result
        line = json.loads(result.out.splitlines()[-1])
        assert (line["outcome"], line["size"]) == ("cosigned", note_size(second))
        assert json.loads((state1 / "wit.json").read_text())["size"] == note_size(second)

        result = await witness(key2, state2, served, "wit")
        assert result.code == 0, result
        line = json.loads(result.out.splitlines()[-1])
        assert line["published"] is True and line["witnessed_size"] == note_size(second)

        r = await http.get(f"{served.url}{WELL_KNOWN}/checkpoint/wit")
        published = await r.text()
        assert r.headers["Fairgate-Published"] == "yes"
        assert r.headers["Fairgate-Witnessed-Size"] == str(note_size(second))
        status = await (await http.get(f"{served.url}{WELL_KNOWN}/witnessed/wit")).json()
        assert status["cosigned_by"] == ["witness.test/w1", "witness.test/w2"]
        assert status["published"] is True and status["witness_keys"] == [vkey1, vkey2]
        admin_view = await (
            await http.get(f"{served.admin_url}/admin/campaigns/wit/checkpoints", headers=ADMIN)
        ).json()
        assert admin_view["witnessing"] == {
            "size": note_size(second),
            "cosigned_by": ["witness.test/w1", "witness.test/w2"],
            "quorum": 2,
            "witnesses": 2,
            "published": True,
            "witnessed_size": note_size(second),
        }
        metrics = await (await http.get(f"{served.url}/metrics")).text()
        assert f'fairgate_checkpoint_witnessed_size{{campaign="wit"}} {note_size(second)}.0' in (
            metrics
        )
        keys = await (await http.get(f"{served.url}{WELL_KNOWN}/keys")).json()
        r = await http.get(
            f"{served.url}/q/wit/receipt/1",
            params={"ticket": tickets["alice"]},
            headers={"X-Customer-Id": "alice"},
        )
        receipt = await r.json()
        assert r.status == 200, receipt
        r = await http.get(f"{served.admin_url}/admin/campaigns/wit/audit/export", headers=ADMIN)
        export = [json.loads(line) for line in (await r.text()).splitlines()]

    # The export carries each cosigned checkpoint's note with its cosignatures.
    exported = {x["size"]: x.get("note") for x in export if x["type"] == "checkpoint"}
    assert exported[note_size(second)] == published
    assert (
        exported[note_size(first)] is not None
        and "— witness.test/w2" not in (exported[note_size(first)])
    )
    assert exported[1] is not None and "— witness.test/w2" in exported[1]  # the commitment
    assert all(note is None for size, note in exported.items() if 1 < size < note_size(first))

    # What an outsider holds checks out with the published keys and the witnesses' vkeys.
    from gate.audit.format import load_public_keys
    from gate.audit.note import (
        ED25519_COSIGNATURE,
        open_note,
        parse_note,
        parse_vkey,
        verify_checkpoint_note,
    )

    checkpoint, opened = verify_checkpoint_note(published, load_public_keys(keys), "wit")
    assert checkpoint.size == note_size(second)
    cosigners = open_note(parse_note(published), [parse_vkey(vkey1), parse_vkey(vkey2)])
    assert sorted(s.name for _, s in cosigners.by(ED25519_COSIGNATURE)) == [
        "witness.test/w1",
        "witness.test/w2",
    ]
    assert opened.verified

    # Alice's receipt carries the published checkpoint, tied to the one her inclusion
    # proof is against by a consistency proof.
    witnessed = receipt["witnessed"]
    assert witnessed["note"] == published and witnessed["size"] == note_size(second)
    from gate.audit import merkle

    consistency = witnessed["consistency"]
    roots = {
        note_size(second): checkpoint.root,
        receipt["checkpoint"]["size"]: bytes.fromhex(receipt["checkpoint"]["root"]),
    }
    assert sorted(roots) == sorted({consistency["old"], consistency["new"]})
    assert merkle.verify_consistency(
        consistency["old"],
        consistency["new"],
        roots[consistency["old"]],
        roots[consistency["new"]],
        [base64.b64decode(h) for h in consistency["proof"]],
    )


@pytest.mark.parametrize(
    ("customers", "reason"),
    [
        # a shorter fork: the gate's latest is below what it signed, with no proof to it
        (("friend",), "rollback"),
        # a longer fork: no consistency proof from the held checkpoint verifies
        (("friend", "alice", "bob", "carol", "dave", "erin"), "no consistency"),
    ],
)
async def test_a_forked_log_is_refused_with_two_signed_heads_as_evidence(
    served: GateProcess,
    witnesses: list[tuple[Path, str]],
    keys_file: Path,
    tmp_path: Path,
    customers: tuple[str, ...],
    reason: str,
) -> None:
    """The operator runs the same campaign again on a second gate and Redis, with the
    same key, and a friend first in line; the witness is then shown the second log."""
    (key1, _), (key2, _) = witnesses
    state = tmp_path / "state"
    second_redis = RedisServer(tmp_path / "redis2")
    second_redis.start()
    try:
        async with aiohttp.ClientSession() as http:
            await create(http, served, "fork", [(key1, state), (key2, tmp_path / "state2")])
            for who in ("alice", "bob", "carol"):
                await join(http, served, "fork", who)
            honest = await sealed_note(http, served, "fork")
            result = await witness(key1, state, served, "fork")
            assert result.code == 0, result

            env = {
                "GATE_SEAL_INTERVAL_MS": "100",
                "GATE_CHECKPOINT_ORIGIN": "fairgate.bank.test",
            }
            async with GateProcess(
                second_redis.url, tmp_path / "gate2", keys_file, extra_env=env
            ) as forked:
                await create(http, forked, "fork")
                for who in customers:
                    await join(http, forked, "fork", who)
                fork_note = await sealed_note(http, forked, "fork")
                # Same origin, same key, another size; seq 1 is someone else.
                assert fork_note.split("\n")[0] == honest.split("\n")[0]
                shorter = note_size(fork_note) < note_size(honest)
                assert shorter == (reason == "rollback")
                result = await witness(key1, state, forked, "fork")
                refused_again = await witness(key1, state, forked, "fork")
                on_fork = await (await http.get(f"{forked.url}{WELL_KNOWN}/witnessed/fork")).json()
                keys = await (await http.get(f"{served.url}{WELL_KNOWN}/keys")).json()
    finally:
        second_redis.stop()

    assert result.code == 3, result
    assert "Traceback" not in result.err and "equivocation" in result.err
    assert json.loads(result.out.splitlines()[-1])["outcome"] == "equivocation"
    assert refused_again.code == 3 and '"outcome":"refused"' in refused_again.out
    assert on_fork["cosigned_by"] == []  # no witness keys there, and none handed in
    evidence = json.loads((state / "fork.equivocation.json").read_text())
    assert evidence["reason"].startswith(reason), evidence["reason"]
    assert evidence["keys"] == keys and evidence["held_keys"] == keys  # one key, both logs
    assert evidence["held"].split("\n\n")[0] == honest.split("\n\n")[0]
    assert evidence["served"].split("\n\n")[0] == fork_note.split("\n\n")[0]

    from gate.audit.format import load_public_keys
    from gate.audit.witness import read_equivocation

    held, served_head = read_equivocation(evidence, load_public_keys(keys))
    assert (held.size, held.root) != (served_head.size, served_head.root)


async def test_bad_input_to_the_transparency_endpoints_is_a_clear_4xx(
    served: GateProcess, witnesses: list[tuple[Path, str]], tmp_path: Path, redis_url: str
) -> None:
    async with aiohttp.ClientSession() as http:
        await create(
            http,
            served,
            "bad",
            [(key, tmp_path / f"state{i}") for i, (key, _) in enumerate(witnesses)],
        )
        await join(http, served, "bad", "alice")
        note = await sealed_note(http, served, "bad")
        note_kid_document = await (await http.get(f"{served.url}{WELL_KNOWN}/keys")).text()
        size = note_size(note)
        base = f"{served.url}{WELL_KNOWN}"

        async def expect(method: str, path: str, status: int, code: str, **kw: Any) -> None:
            r = await http.request(method, base + path, **kw)
            body = await r.json()
            assert (r.status, body["error"]["code"]) == (status, code), (path, body)

        await expect("GET", "/checkpoint/bad?size=x", 400, "bad_size")
        await expect("GET", f"/checkpoint/bad?size={size + 1}", 404, "unknown_checkpoint")
        await expect("GET", "/checkpoint/nope", 404, "unknown_checkpoint")
        await expect("GET", "/checkpoint/..%2F..", 404, "unknown_campaign")
        await expect("GET", "/consistency/bad", 400, "bad_size")
        await expect("GET", "/consistency/bad?old=2&new=1", 400, "bad_size")
        await expect("GET", f"/consistency/bad?old=0&new={size + 1}", 400, "bad_size")
        await expect("GET", "/consistency/bad?old=-1&new=1", 400, "bad_size")
        await expect("GET", "/consistency/bad?old=1&new=99999999999999999", 400, "bad_size")
        r = await http.get(f"{base}/consistency/bad?old=1&new={size}")
        assert r.status == 200 and all(len(x) == 44 for x in (await r.text()).split())

        await expect("POST", "/cosign/bad", 400, "bad_note", data=b"hello")
        await expect("POST", "/cosign/bad", 400, "bad_note", data=b"\xff\xfe\n\n")
        await expect("POST", "/cosign/bad", 413, "body_too_large", data=b"x" * 20000)
        # The gate's note alone: no cosignature from a configured witness in it.
        await expect("POST", "/cosign/bad", 403, "unknown_witness", data=note.encode())
        other_origin = note.replace("fairgate.bank.test/bad", "elsewhere/bad")
        await expect("POST", "/cosign/bad", 404, "unknown_origin", data=other_origin.encode())
        lines = note.split("\n")
        lines[1] = str(size + 5)
        await expect(
            "POST", "/cosign/bad", 404, "unknown_checkpoint", data="\n".join(lines).encode()
        )

        # A known witness's line whose signature is not over this note: refused.
        from gate.audit.note import Note, cosign, parse_note
        from gate.audit.witness import load_key

        key = load_key(witnesses[0][0])
        gate_note = parse_note(note)
        wrong = cosign("some other text\n", key.name, key.key, 1700000000)
        forged = Note(gate_note.text, (*gate_note.signatures, wrong)).render()
        await expect("POST", "/cosign/bad", 403, "bad_cosignature", data=forged.encode())
        # A note of this size but not this log's checkpoint (a fork shown to a witness).
        text = gate_note.text.replace("time_ms ", "time_ms 1")
        good = cosign(text, key.name, key.key, 1700000000)
        fork = Note(text, (*gate_note.signatures, good)).render()
        await expect("POST", "/cosign/bad", 409, "not_this_checkpoint", data=fork.encode())

        # A good cosignature whose body arrives in two pieces (a slow link) is read whole.
        good_note = Note(
            gate_note.text, (*gate_note.signatures, cosign(gate_note.text, key.name, key.key, 1))
        )
        body = good_note.render().encode()

        async def in_two_pieces() -> AsyncIterator[bytes]:
            yield body[:40]
            await asyncio.sleep(0.3)  # the first piece reaches the handler alone
            yield body[40:]

        r = await http.post(base + "/cosign/bad", data=in_two_pieces())
        assert r.status == 200, await r.text()
        assert (await r.json())["accepted"] == [key.name]

        # An insider with Redis access but no key appends a checkpoint of their own:
        # the gate signs no note for it, and nothing about it is a 500.
        forged = {
            "type": "checkpoint",
            "campaign": "bad",
            "size": size + 1,
            "root": "ab" * 32,
            "time_ms": 1,
            "kid": json.loads(note_kid_document)["keys"][0]["kid"],
            "sig": "A" * 86,
        }
        redis = Redis.from_url(redis_url)
        try:
            await redis.rpush("fg:{bad}:checkpoints", json.dumps(forged))
            await expect("GET", "/checkpoint/bad", 503, "checkpoint_unverified")
            lines = note.split("\n")
            lines[1], lines[2] = (
                str(size + 1),
                base64.b64encode(bytes.fromhex(forged["root"])).decode(),
            )
            text = "\n".join(lines[:4]) + "\n"
            forged_note = Note(text, (*gate_note.signatures, cosign(text, key.name, key.key, 1)))
            await expect(
                "POST",
                "/cosign/bad",
                503,
                "checkpoint_unverified",
                data=forged_note.render().encode(),
            )
        finally:
            await redis.rpop("fg:{bad}:checkpoints")
            await redis.aclose()

    bad_key = tmp_path / "bad.key"
    bad_key.write_text("{}")
    result = await gate_cli(
        "witness", "run", "--key", str(bad_key), "--state", str(tmp_path), "--gate",
        served.url, "--campaign", "bad", "--once",
    )  # fmt: skip
    assert_clean_error(result, "bad_key")
    result = await gate_cli(
        "witness", "run", "--key", str(witnesses[0][0]), "--state", str(tmp_path), "--gate",
        served.url, "--campaign", "../x", "--once",
    )  # fmt: skip
    assert_clean_error(result, "usage")
