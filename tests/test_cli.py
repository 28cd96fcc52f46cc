"""The `gate` command line against a real `gate serve` process and the test Redis."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gate.redis_server import free_port
from tests.helpers import ADMIN_TOKEN, GateProcess, assert_clean_error, gate_cli, spec


@pytest.fixture
async def served(redis_url: str, keys_file: Path, tmp_path: Path) -> AsyncIterator[GateProcess]:
    async with GateProcess(redis_url, tmp_path / "gate", keys_file) as process:
        yield process


def admin_env(process: GateProcess, token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"GATE_ADMIN_URL": process.admin_url, "GATE_ADMIN_TOKEN": token}


async def test_campaign_commands(served: GateProcess, tmp_path: Path) -> None:
    env = admin_env(served)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec("c1", rate_per_s=20, burst=5)))

    created = await gate_cli("campaign", "create", str(spec_file), env=env)
    assert created.code == 0, created
    assert created.json()["id"] == "c1" and created.json()["state"] == "open"
    assert created.json()["spec"]["admission"]["rate_per_s"] == 20

    again = await gate_cli("campaign", "create", str(spec_file), env=env)
    assert "already exists" in assert_clean_error(again, "campaign_exists")

    # from stdin too
    other = await gate_cli(
        "campaign", "create", "-", env=env, stdin=json.dumps(spec("c2")).encode()
    )
    assert other.code == 0, other

    listed = await gate_cli("campaign", "list", env=env)
    assert listed.code == 0, listed
    assert [c["id"] for c in listed.json()["campaigns"]] == ["c1", "c2"]

    shown = await gate_cli("campaign", "show", "c1", env=env)
    assert shown.code == 0 and shown.json()["spec"] == created.json()["spec"]

    changed = await gate_cli("campaign", "set", "c1", "--rate", "5", "--burst", "3", env=env)
    assert changed.code == 0, changed
    assert changed.json()["spec"]["admission"]["rate_per_s"] == 5
    assert changed.json()["spec"]["admission"]["burst"] == 3

    # a customer joins through the public listener, so stats have something to count
    async with aiohttp.ClientSession() as session:
        r = await session.post(served.url + "/q/c1/join", headers={"X-Customer-Id": "alice"})
        assert r.status == 201

    paused = await gate_cli("campaign", "pause", "c1", env=env)
    assert paused.code == 0 and paused.json()["state"] == "paused"
    resumed = await gate_cli("campaign", "resume", "c1", env=env)
    assert resumed.code == 0 and resumed.json()["state"] == "open"

    stats = await gate_cli("campaign", "stats", "c1", env=env)
    assert stats.code == 0, stats
    body = stats.json()
    assert body["id"] == "c1" and body["joined"] == 1 and body["state"] == "open"
    assert {"waiting", "admitted", "active", "cursor"} <= set(body)

    closed = await gate_cli("campaign", "close", "c1", "--yes", env=env)
    assert closed.code == 0 and closed.json()["state"] == "closed"
    refused = await gate_cli("campaign", "pause", "c1", env=env)
    assert "closed" in assert_clean_error(refused, "bad_state")
    unknown = await gate_cli("campaign", "show", "nope", env=env)
    assert_clean_error(unknown, "unknown_campaign")
    nothing = await gate_cli("campaign", "set", "c2", env=env)
    assert_clean_error(nothing, "usage")

    # flags work as well as the environment
    flagged = await gate_cli(
        "campaign", "--admin-url", served.admin_url, "--token", ADMIN_TOKEN, "list"
    )
    assert flagged.code == 0 and len(flagged.json()["campaigns"]) == 2


async def test_bad_spec_file_and_bad_spec(served: GateProcess, tmp_path: Path) -> None:
    env = admin_env(served)
    missing = await gate_cli("campaign", "create", str(tmp_path / "absent.json"), env=env)
    assert "absent.json" in assert_clean_error(missing, "bad_file")
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    assert_clean_error(await gate_cli("campaign", "create", str(garbage), env=env), "bad_file")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**spec("c1"), "opens_at": "2026-12-01T00:00:00"}))
    line = assert_clean_error(await gate_cli("campaign", "create", str(bad), env=env), "bad_spec")
    assert "opens_at" in line


async def test_wrong_token_missing_token_and_unreachable(served: GateProcess) -> None:
    wrong = await gate_cli("campaign", "list", env=admin_env(served, "not-the-token-0123456"))
    assert "bearer token" in assert_clean_error(wrong, "bad_admin_token")
    assert wrong.out == ""

    missing = await gate_cli("campaign", "list", env={"GATE_ADMIN_URL": served.admin_url})
    assert "GATE_ADMIN_TOKEN" in assert_clean_error(missing, "no_admin_token")

    nowhere = f"http://127.0.0.1:{free_port()}"
    unreachable = await gate_cli(
        "campaign", "list", env={"GATE_ADMIN_URL": nowhere, "GATE_ADMIN_TOKEN": ADMIN_TOKEN}
    )
    assert nowhere in assert_clean_error(unreachable, "unreachable")


async def test_keys_generate_writes_a_private_file_that_serve_accepts(
    redis_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "secrets" / "keys.json"
    generated = await gate_cli("keys", "generate", "--out", str(out))
    assert generated.code == 0, generated
    assert out.stat().st_mode & 0o777 == 0o600
    document = json.loads(out.read_text())
    assert {"hmac", "ed25519"} <= set(document)
    assert "digest_key" not in document  # issue 13: the digest key has a file of its own

    printed = await gate_cli("keys", "generate")
    assert printed.code == 0
    assert json.loads(printed.out)["ed25519"]["current"] != document["ed25519"]["current"]

    # Keys provisioned by hand need their digest key provisioned too: a gate that made one
    # up would not share it with the other processes and hosts.
    env = {"GATE_SIGNING_KEYS": str(out), "GATE_REDIS_URL": redis_url}
    refused = await gate_cli("serve", env={**env, "GATE_DATA_DIR": str(tmp_path / "d0")})
    assert "digest_keys" in assert_clean_error(refused, "bad_config")
    digests = tmp_path / "secrets" / "digest-keys.json"
    assert (await gate_cli("keys", "generate-digest", "--out", str(digests))).code == 0
    extra = {"GATE_DIGEST_KEYS": str(digests)}
    async with GateProcess(redis_url, tmp_path / "gate", out, extra_env=extra) as process:
        async with aiohttp.ClientSession() as session:
            r = await session.get(process.url + "/.well-known/fairgate/keys")
            served = (await r.json())["keys"]
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        kid = document["ed25519"]["current"]
        raw = document["ed25519"]["keys"][kid]
        private = Ed25519PrivateKey.from_private_bytes(
            base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        )
        public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        assert [k["kid"] for k in served] == [kid]
        assert base64.urlsafe_b64decode(served[0]["public_key"] + "==") == public
        assert not (tmp_path / "gate" / "digest-keys.json").exists()
    # With neither file set, the gate writes both in its data_dir, the digest key apart.
    fresh = GateProcess(redis_url, tmp_path / "fresh", out)
    fresh.env.pop("GATE_SIGNING_KEYS")
    async with fresh:
        pass
    assert "digest_key" not in json.loads((tmp_path / "fresh" / "keys.json").read_text())
    made = json.loads((tmp_path / "fresh" / "digest-keys.json").read_text())
    assert made["current"] in made["keys"]
    assert (tmp_path / "fresh" / "digest-keys.json").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ("[gate]\nworkers = 0\n", "workers"),
        ("[gate]\nport = 'eighty'\n", "port"),
        ("[gate]\nredis_url = 'http://x'\n", "redis_url"),
        ("[gate]\nadmin_tokens = 'ops:short'\n", "admin_tokens"),
        ("[gate]\nprot = 1\n", "prot"),
        ("[gate\n", "gate.toml"),
    ],
)
async def test_serve_with_a_bad_config_stops_naming_the_field(
    tmp_path: Path, toml: str, field: str
) -> None:
    path = tmp_path / "gate.toml"
    path.write_text(toml)
    result = await gate_cli(
        "serve", "--config", str(path), env={"GATE_DATA_DIR": str(tmp_path / "data")}
    )
    line = assert_clean_error(result, "bad_config")
    assert field in line, line


async def test_serve_with_a_bad_environment_or_missing_files(tmp_path: Path) -> None:
    data = {"GATE_DATA_DIR": str(tmp_path / "data")}
    result = await gate_cli("serve", env={**data, "GATE_CUSTOMER_HEADER": "Bad Header"})
    assert "customer_header" in assert_clean_error(result, "bad_config")
    result = await gate_cli("serve", "--config", str(tmp_path / "absent.toml"), env=data)
    assert "absent.toml" in assert_clean_error(result, "bad_config")
    result = await gate_cli(
        "serve",
        env={
            **data,
            "GATE_SIGNING_KEYS": str(tmp_path / "no-keys.json"),
            "GATE_REDIS_URL": "redis://127.0.0.1:1/0",
        },
    )
    assert "signing_keys" in assert_clean_error(result, "bad_config")
