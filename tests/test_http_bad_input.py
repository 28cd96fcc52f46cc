"""Bad input on both listeners: always a clear 4xx with the JSON error shape, never a 500."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest

from gate.campaign import valid_campaign_id
from gate.service import Gate
from gate.signing import generate_keys_document, parse_keys
from gate.tokens import PASS, TICKET, TokenSigner, customer_digest
from tests.helpers import (
    ADMIN_TOKEN,
    admitted_pass,
    as_customer,
    b64url,
    create_campaign,
    join,
    spec,
    unb64url,
)

MSGPACK = "application/msgpack"
JSON = "application/json"


async def expect_error(response: Any, status: int, code: str) -> str:
    """The response is `status` with the JSON error shape and `code`; returns the message."""
    text = await response.text()
    assert response.status == status, text
    assert response.content_type == JSON, (response.content_type, text)
    body = json.loads(text)
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    message = body["error"]["message"]
    assert isinstance(message, str) and message, body
    return message


def flip_mac(token: str) -> str:
    payload, mac = token.split(".")
    raw = bytearray(unb64url(mac))
    raw[0] ^= 0x01
    return f"{payload}.{b64url(bytes(raw))}"


def flip_payload_seq(token: str) -> str:
    """Same MAC, payload re-packed with another seq: what a customer jumping the queue tries."""
    payload, mac = token.split(".")
    fields = msgpack.unpackb(unb64url(payload), raw=False)
    fields[3] = 1 if fields[3] != 1 else 2
    return f"{b64url(msgpack.packb(fields))}.{mac}"


def foreign_signer() -> TokenSigner:
    return TokenSigner(parse_keys(generate_keys_document(), "other gate"))


async def chunks(total: int, size: int = 4096) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        piece = min(size, total - sent)
        sent += piece
        yield b" " * piece


# -- bodies ---------------------------------------------------------------------------


MALFORMED_JSON = [b"{", b'{"a": }', b"{'single': 1}", b"\xff\xfe\x00", b"[" * 6000 + b"]" * 6000]


@pytest.mark.parametrize(
    "body", MALFORMED_JSON, ids=["open", "bad-value", "quotes", "binary", "deep"]
)
async def test_malformed_json_join_and_admin_create(public: Any, admin: Any, body: bytes) -> None:
    await create_campaign(admin)
    r = await public.post(
        "/q/c1/join", data=body, headers={"X-Customer-Id": "alice", "Content-Type": JSON}
    )
    await expect_error(r, 400, "bad_json")
    r = await admin.post("/admin/campaigns", data=body, headers={"Content-Type": JSON})
    await expect_error(r, 400, "bad_json")


NOT_AN_OBJECT = [b"[]", b"null", b'"text"', b"42"]


@pytest.mark.parametrize("body", NOT_AN_OBJECT)
async def test_json_that_is_not_an_object(public: Any, admin: Any, body: bytes) -> None:
    await create_campaign(admin)
    r = await public.post(
        "/q/c1/join", data=body, headers={"X-Customer-Id": "alice", "Content-Type": JSON}
    )
    await expect_error(r, 400, "bad_body")
    r = await admin.post("/admin/campaigns", data=body, headers={"Content-Type": JSON})
    await expect_error(r, 400, "bad_body")


GARBAGE_MSGPACK = [b"\xc1", b"\x92\x01", b"\x81\xa1a", b"\xdf\xff\xff\xff\xff", b"\x91" * 5000]


@pytest.mark.parametrize(
    "body", GARBAGE_MSGPACK, ids=["reserved", "short-array", "short-map", "huge-map", "deep"]
)
async def test_garbage_msgpack(public: Any, admin: Any, body: bytes) -> None:
    await create_campaign(admin)
    r = await public.post(
        "/q/c1/join", data=body, headers={"X-Customer-Id": "alice", "Content-Type": MSGPACK}
    )
    await expect_error(r, 400, "bad_msgpack")
    r = await admin.post("/admin/campaigns", data=body, headers={"Content-Type": MSGPACK})
    await expect_error(r, 400, "bad_msgpack")


@pytest.mark.parametrize("value", [[1, 2], "text", 7, None])
async def test_msgpack_that_is_not_a_map(public: Any, admin: Any, value: Any) -> None:
    await create_campaign(admin)
    body = msgpack.packb(value)
    r = await public.post(
        "/q/c1/join", data=body, headers={"X-Customer-Id": "alice", "Content-Type": MSGPACK}
    )
    await expect_error(r, 400, "bad_body")
    r = await admin.post("/admin/campaigns", data=body, headers={"Content-Type": MSGPACK})
    await expect_error(r, 400, "bad_body")


async def test_valid_msgpack_body_is_accepted(public: Any, admin: Any) -> None:
    """The positive control for the msgpack cases above: a real msgpack spec creates."""
    r = await admin.post(
        "/admin/campaigns", data=msgpack.packb(spec("c1")), headers={"Content-Type": MSGPACK}
    )
    assert r.status == 201, await r.text()
    r = await public.post(
        "/q/c1/join",
        data=msgpack.packb({}),
        headers={"X-Customer-Id": "alice", "Content-Type": MSGPACK},
    )
    assert r.status == 201, await r.text()


async def test_msgpack_spec_with_binary_keys_names_the_field(admin: Any) -> None:
    body = msgpack.packb({"id": "c1", b"zz": 1, "yy": 2}, use_bin_type=True)
    r = await admin.post("/admin/campaigns", data=body, headers={"Content-Type": MSGPACK})
    message = await expect_error(r, 400, "bad_spec")
    assert "unknown field" in message


async def test_oversized_bodies_are_413(public: Any, admin: Any, gate: Gate) -> None:
    await create_campaign(admin)
    limit = gate.config.max_body_bytes
    big = b"{" + b" " * limit + b"}"
    r = await public.post(
        "/q/c1/join", data=big, headers={"X-Customer-Id": "alice", "Content-Type": JSON}
    )
    await expect_error(r, 413, "body_too_large")
    r = await admin.post("/admin/campaigns", data=big, headers={"Content-Type": JSON})
    await expect_error(r, 413, "body_too_large")

    # no Content-Length: the body arrives chunked and is cut off while it is read
    r = await public.post(
        "/q/c1/join",
        data=chunks(limit + 4096),
        headers={"X-Customer-Id": "alice", "Content-Type": JSON},
    )
    assert r.request_info.headers.get("Transfer-Encoding") == "chunked"
    await expect_error(r, 413, "body_too_large")
    r = await admin.post(
        "/admin/campaigns", data=chunks(limit + 4096), headers={"Content-Type": JSON}
    )
    await expect_error(r, 413, "body_too_large")

    # the limit itself is allowed: a body of exactly max_body_bytes still joins
    exact = b"{" + b" " * (limit - 2) + b"}"
    assert len(exact) == limit
    r = await public.post(
        "/q/c1/join", data=exact, headers={"X-Customer-Id": "alice", "Content-Type": JSON}
    )
    assert r.status == 201, await r.text()


@pytest.mark.parametrize(
    "ctype",
    [
        "text/xml",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "image/png",
    ],
)
async def test_unsupported_content_type_is_415(public: Any, admin: Any, ctype: str) -> None:
    await create_campaign(admin)
    r = await public.post(
        "/q/c1/join",
        data=b"{}",
        headers={"X-Customer-Id": "alice", "Content-Type": ctype},
        allow_redirects=False,
    )
    if ctype == "application/x-www-form-urlencoded":
        # the waiting page's no-script join form: joined, and sent back to the page
        assert r.status == 303, await r.text()
    else:
        await expect_error(r, 415, "unsupported_media_type")
    r = await admin.post("/admin/campaigns", data=b"{}", headers={"Content-Type": ctype})
    await expect_error(r, 415, "unsupported_media_type")


# -- campaigns and customers ----------------------------------------------------------

UNKNOWN_CAMPAIGNS = ["nope", "BAD", "a" * 65, "c1%0A", "c1%20", "%C3%A9t%C3%A9", "-dash", "c.1"]


@pytest.mark.parametrize("campaign", UNKNOWN_CAMPAIGNS)
async def test_unknown_campaign_is_404(public: Any, admin: Any, gate: Gate, campaign: str) -> None:
    await create_campaign(admin)  # a real c1 exists, so "c1\n" and "c1 " must not reach it
    r = await public.post(f"/q/{campaign}/join", headers={"X-Customer-Id": "alice"})
    await expect_error(r, 404, "unknown_campaign")
    r = await public.get(f"/q/{campaign}")
    await expect_error(r, 404, "unknown_campaign")
    # a well-formed id gets a genuinely signed ticket, so only the campaign is wrong
    ticket = "x.y"
    if valid_campaign_id(campaign):
        ticket = gate.signer.issue(TICKET, campaign, 1, customer_digest(gate.keys, campaign, "a"))
    r = await public.get(
        f"/q/{campaign}/status", params={"ticket": ticket}, headers=as_customer("a")
    )
    await expect_error(r, 404, "unknown_campaign")
    r = await admin.get(f"/admin/campaigns/{campaign}")
    await expect_error(r, 404, "unknown_campaign")
    r = await admin.get(f"/admin/campaigns/{campaign}/stats")
    await expect_error(r, 404, "unknown_campaign")
    r = await admin.post(f"/admin/campaigns/{campaign}/pause")
    await expect_error(r, 404, "unknown_campaign")
    r = await admin.patch(f"/admin/campaigns/{campaign}", json={"rate_per_s": 5})
    await expect_error(r, 404, "unknown_campaign")
    r = await admin.post(f"/admin/campaigns/{campaign}/block", json={"customer": "alice"})
    await expect_error(r, 404, "unknown_campaign")


async def test_signed_ticket_for_a_campaign_that_does_not_exist_is_404(
    public: Any, gate: Gate
) -> None:
    digest = customer_digest(gate.keys, "ghost", "alice")
    ticket = gate.signer.issue(TICKET, "ghost", 1, digest)
    r = await public.get("/q/ghost/status", params={"ticket": ticket}, headers=as_customer("alice"))
    await expect_error(r, 404, "unknown_campaign")


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "no_identity"),
        ({"X-Customer-Id": ""}, 401, "no_identity"),
        ({"X-Customer-Id": "   "}, 401, "no_identity"),
        ({"X-Customer-Id": "\t"}, 401, "no_identity"),
        ({"X-Customer-Id": "x" * 257}, 400, "bad_customer"),
        ({"X-Customer-Id": "a\tb"}, 400, "bad_customer"),
        ({"X-Customer": "alice"}, 401, "no_identity"),
    ],
    ids=["absent", "empty", "spaces", "tab", "too-long", "control", "other-header"],
)
async def test_missing_or_bad_customer_header_is_refused(
    public: Any, admin: Any, headers: dict[str, str], status: int, code: str
) -> None:
    await create_campaign(admin)
    r = await public.post("/q/c1/join", headers=headers)
    message = await expect_error(r, status, code)
    assert "X-Customer-Id" in message
    # the longest allowed id still joins
    r = await public.post("/q/c1/join", headers={"X-Customer-Id": "x" * 256})
    assert r.status == 201, await r.text()


async def test_status_without_ticket_is_400(public: Any, admin: Any) -> None:
    await create_campaign(admin)
    r = await public.get("/q/c1/status")
    await expect_error(r, 400, "missing_ticket")
    r = await public.get("/q/c1/status", params={"ticket": ""})
    await expect_error(r, 400, "missing_ticket")


FORGERIES = [
    "flipped-mac",
    "flipped-seq",
    "random",
    "dotted",
    "truncated",
    "half",
    "too-long",
    "pass",
    "foreign-key",
    "two-dots",
]


@pytest.mark.parametrize("forgery", FORGERIES)
async def test_forged_ticket_is_403(public: Any, admin: Any, gate: Gate, forgery: str) -> None:
    await create_campaign(admin, rate_per_s=0.001, burst=1)  # nobody is admitted during the test
    await join(public, "c1", "first")
    ticket = (await join(public, "c1", "alice"))["ticket"]
    alice = as_customer("alice")
    r = await public.get("/q/c1/status", params={"ticket": ticket}, headers=alice)
    assert r.status == 200, await r.text()  # the genuine ticket works
    digest = customer_digest(gate.keys, "c1", "alice")
    forged = {
        "flipped-mac": lambda: flip_mac(ticket),
        "flipped-seq": lambda: flip_payload_seq(ticket),
        "random": lambda: "not-a-ticket",
        "dotted": lambda: "a.b",
        "truncated": lambda: ticket[:-3],
        "half": lambda: ticket[: len(ticket) // 2],
        "too-long": lambda: ticket + "A" * 600,
        "pass": lambda: gate.signer.issue(PASS, "c1", 2, digest, exp=int(time.time()) + 60),
        "foreign-key": lambda: foreign_signer().issue(TICKET, "c1", 2, digest),
        "two-dots": lambda: ticket + ".x",
    }[forgery]()
    assert forged != ticket
    r = await public.get("/q/c1/status", params={"ticket": forged}, headers=alice)
    message = await expect_error(r, 403, "bad_ticket")
    assert "ticket" in message


async def test_ticket_for_another_campaign_is_403(public: Any, admin: Any) -> None:
    await create_campaign(admin, "c1")
    await create_campaign(admin, "c2")
    other = (await join(public, "c2", "alice"))["ticket"]
    r = await public.get("/q/c1/status", params={"ticket": other})
    await expect_error(r, 403, "wrong_campaign")
    r = await public.get("/q/c2/status", params={"ticket": other}, headers=as_customer("alice"))
    assert r.status == 200, await r.text()


async def test_ticket_of_another_customer_is_403(public: Any, admin: Any) -> None:
    await create_campaign(admin)
    ticket = (await join(public, "c1", "alice"))["ticket"]
    r = await public.get(
        "/q/c1/status", params={"ticket": ticket}, headers={"X-Customer-Id": "mallory"}
    )
    await expect_error(r, 403, "wrong_customer")
    r = await public.get(
        "/q/c1/status", params={"ticket": ticket}, headers={"X-Customer-Id": "alice"}
    )
    assert r.status == 200, await r.text()


# -- /gate/auth -----------------------------------------------------------------------


async def test_gate_auth_refusals(public: Any, admin: Any, gate: Gate) -> None:
    await create_campaign(admin, "c1")
    await create_campaign(admin, "c2")
    good = await admitted_pass(public, "c1", "alice")
    r = await public.get("/gate/auth", headers=as_customer("alice", **{"X-Gate-Pass": good}))
    await expect_error(r, 401, "no_campaign")  # the proxy must say which campaign it guards
    r = await public.get("/gate/auth", headers={"X-Gate-Pass": good, "X-Gate-Campaign": "c1"})
    await expect_error(r, 401, "no_identity")  # ... and who the customer is
    for headers, params in (
        ({"X-Gate-Pass": good, "X-Gate-Campaign": "c1"}, {}),
        ({"Cookie": f"fg_pass={good}"}, {"campaign": "c1"}),
    ):
        r = await public.get("/gate/auth", headers=as_customer("alice", **headers), params=params)
        assert r.status == 200, await r.text()

    digest = customer_digest(gate.keys, "c1", "alice")
    now = int(time.time())
    ticket = (await join(public, "c1", "alice"))["ticket"]
    cases: list[tuple[dict[str, str], int, str]] = [
        ({}, 401, "no_pass"),
        ({"X-Gate-Pass": flip_mac(good)}, 401, "bad_pass"),
        ({"X-Gate-Pass": flip_payload_seq(good)}, 401, "bad_pass"),
        ({"X-Gate-Pass": "garbage"}, 401, "bad_pass"),
        ({"X-Gate-Pass": good[:-4]}, 401, "bad_pass"),
        ({"X-Gate-Pass": ticket}, 401, "bad_pass"),
        (
            {"X-Gate-Pass": foreign_signer().issue(PASS, "c1", 1, digest, exp=now + 60)},
            401,
            "bad_pass",
        ),
        (
            {"X-Gate-Pass": gate.signer.issue(PASS, "c1", 1, digest, exp=now - 1)},
            401,
            "pass_expired",
        ),
        ({"X-Gate-Pass": gate.signer.issue(PASS, "c1", 1, digest, exp=0)}, 401, "pass_expired"),
        ({"X-Gate-Pass": good, "X-Gate-Campaign": "c2"}, 403, "wrong_campaign"),
        ({"X-Gate-Pass": good, "X-Customer-Id": "mallory"}, 403, "wrong_customer"),
        (
            {
                "X-Gate-Pass": gate.signer.issue(
                    PASS, "ghost", 1, customer_digest(gate.keys, "ghost", "alice"), exp=now + 60
                ),
                "X-Gate-Campaign": "ghost",
            },
            401,
            "unknown_campaign",
        ),
        ({"Cookie": f"fg_pass={flip_mac(good)}"}, 401, "bad_pass"),
    ]
    for headers, status, code in cases:
        asked = {"X-Customer-Id": "alice", "X-Gate-Campaign": "c1", **headers}
        r = await public.get("/gate/auth", headers=asked)
        await expect_error(r, status, code)
    r = await public.get(
        "/gate/auth",
        params={"campaign": "c2"},
        headers=as_customer("alice", **{"X-Gate-Pass": good}),
    )
    await expect_error(r, 403, "wrong_campaign")


# -- admin authentication -------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer wrong-token-0123456789",
        f"Bearer {ADMIN_TOKEN}x",
        f"Bearer {ADMIN_TOKEN[:-1]}",
        f"Basic {ADMIN_TOKEN}",
        "Basic " + base64.b64encode(f"ops:{ADMIN_TOKEN}".encode()).decode(),
        ADMIN_TOKEN,
        f"Token {ADMIN_TOKEN}",
    ],
)
async def test_admin_refuses_without_a_valid_bearer_token(
    admin: Any, authorization: str | None
) -> None:
    import aiohttp

    headers = {} if authorization is None else {"Authorization": authorization}
    async with aiohttp.ClientSession() as session:
        for method, path in [
            ("GET", "/admin/campaigns"),
            ("POST", "/admin/campaigns"),
            ("POST", "/admin/campaigns/c1/pause"),
            ("GET", "/admin/nothing-here"),
        ]:
            async with session.request(
                method, str(admin.make_url(path)), headers=headers, json={}
            ) as r:
                await expect_error(r, 401, "bad_admin_token")
        async with session.get(
            str(admin.make_url("/admin/campaigns")),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as r:
            assert r.status == 200


async def test_admin_token_with_non_ascii_bytes_is_401_not_500(admin: Any) -> None:
    reader, writer = await asyncio.open_connection(admin.host, admin.port)
    writer.write(
        b"GET /admin/campaigns HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n"
        b"Connection: close\r\n\r\n"
    )
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), reply
    assert json.loads(body)["error"]["code"] == "bad_admin_token"


# -- campaign specs -------------------------------------------------------------------


def _bad(**changes: Any) -> dict[str, Any]:
    body = spec("c9")
    for path, value in changes.items():
        target = body
        parts = path.split("__")
        for part in parts[:-1]:
            target = target[part]
        if value is _DELETE:
            del target[parts[-1]]
        else:
            target[parts[-1]] = value
    return body


_DELETE = object()
BAD_SPECS = [
    ("id", _bad(id="Bad Id!")),
    ("id", _bad(id="")),
    ("id", _bad(id="x" * 65)),
    ("id", _bad(id="c9\n")),
    ("id", _bad(id=7)),
    ("opens_at", _bad(opens_at="2026-12-01T00:00:00")),
    ("opens_at", _bad(opens_at="tomorrow")),
    ("opens_at", _bad(opens_at="1960-01-01T00:00:00Z")),
    ("opens_at", _bad(opens_at="0001-01-01T00:00:00+01:00")),
    ("opens_at", _bad(opens_at=_DELETE)),
    ("closes_at", _bad(closes_at="2000-01-01T00:00:00Z")),
    ("closes_at", _bad(closes_at="9999-12-31T23:59:59Z")),
    ("closes_at", _bad(closes_at="9999-12-31T23:59:59-01:00")),
    ("quota.total", _bad(quota__total=_DELETE)),
    ("quota.total", _bad(quota__total=-5)),
    ("quota.total", _bad(quota__total="1e9")),
    ("quota.total", _bad(quota__total=True)),
    ("quota.min", _bad(quota__max=5)),
    ("quota.colour", _bad(quota__colour="red")),
    ("quota", _bad(quota="lots")),
    ("admission.rate_per_s", _bad(admission__rate_per_s=-1)),
    ("admission.rate_per_s", _bad(admission__rate_per_s=0)),
    ("admission.rate_per_s", _bad(admission__rate_per_s="fast")),
    ("admission.rate_per_s", _bad(admission__rate_per_s=float("nan"))),
    ("admission.rate_per_s", _bad(admission__rate_per_s=_DELETE)),
    ("admission.burst", _bad(admission__burst=0)),
    ("admission.burst", _bad(admission__burst=1.5)),
    ("admission.max_active", _bad(admission__max_active=-1)),
    ("admission.pass_ttl_s", _bad(admission__pass_ttl_s=0)),
    ("admission.speed", _bad(admission__speed=3)),
    ("colour", _bad(colour="red")),
    ("policy", _bad(policy="lottery")),
    ("prequeue.window_s", _bad(prequeue={"window_s": "soon"})),
    ("prequeue.shuffle", _bad(prequeue={"shuffle": "yes"})),
]


@pytest.mark.parametrize(
    ("field", "body"), BAD_SPECS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_SPECS)]
)
async def test_admin_create_names_the_bad_field(admin: Any, field: str, body: Any) -> None:
    r = await admin.post("/admin/campaigns", data=json.dumps(body), headers={"Content-Type": JSON})
    message = await expect_error(r, 400, "bad_spec")
    assert message.startswith(f"{field}:"), message
    r = await admin.get("/admin/campaigns")
    assert (await r.json())["campaigns"] == []


async def test_admin_create_good_spec_control(admin: Any) -> None:
    """The bad specs above differ from this one only in the field they name."""
    r = await admin.post("/admin/campaigns", json=_bad())
    assert r.status == 201, await r.text()


# -- routes ---------------------------------------------------------------------------


async def test_unknown_route_and_wrong_method(public: Any, admin: Any) -> None:
    await create_campaign(admin)
    for client, path in [
        (public, "/nothing"),
        (public, "/q/c1/join/extra"),
        (public, "/q"),
        (admin, "/admin/nothing"),
        (admin, "/admin/campaigns/c1/explode"),
    ]:
        r = await client.get(path)
        await expect_error(r, 404, "not_found")
    for client, method, path, allowed in [
        (public, "GET", "/q/c1/join", "POST"),
        (public, "POST", "/q/c1/status", "GET"),
        (public, "DELETE", "/q/c1/claim", "POST"),  # (/gate/auth answers any method)
        (admin, "DELETE", "/admin/campaigns/c1", "GET"),
        (admin, "GET", "/admin/campaigns/c1/pause", "POST"),
        (admin, "PUT", "/admin/campaigns", "GET"),
    ]:
        r = await client.request(method, path)
        await expect_error(r, 405, "method_not_allowed")
        assert allowed in r.headers["Allow"]


# -- the sweep ------------------------------------------------------------------------

JUNK_BODIES: list[tuple[bytes, str | None]] = [
    (b"", None),
    (b"{}", JSON),
    (b"{", JSON),
    (b"\xff\xfe\x00", JSON),
    (b"[]", JSON),
    (b"null", JSON),
    (b"1e999", JSON),
    (b"[" * 6000 + b"]" * 6000, JSON),
    (b'{"a": NaN}', JSON),
    (b"\xc1", MSGPACK),
    (msgpack.packb([1, 2]), MSGPACK),
    (b"\x91" * 5000, MSGPACK),
    (msgpack.packb({"customer": b"\xff", "reason": 5, b"k": 1}, use_bin_type=True), MSGPACK),
    (msgpack.packb({"id": "c7", "quota": {"total": -1}}), MSGPACK),
    (json.dumps({"customer": ["x"]}).encode(), JSON),
    (json.dumps({"customer": "x" * 300, "reason": "r" * 600}).encode(), JSON),
    (json.dumps({"customer": "junk-customer", "reason": None}).encode(), JSON),
    (json.dumps({"rate_per_s": "fast", "admission": []}).encode(), JSON),
    (json.dumps({"closes_at": "0001-01-01T00:00:00+01:00"}).encode(), JSON),
    (json.dumps({"closes_at": "1999-01-01T00:00:00Z"}).encode(), JSON),
    (json.dumps({"admission": {"burst": 10**30}}).encode(), JSON),
    (json.dumps({"max_active": 1e308}).encode(), JSON),
    (json.dumps({**spec("c8"), "opens_at": "1970-01-01T00:00:00Z"}).encode(), JSON),
    (json.dumps({**spec("c8"), "prequeue": {"window_s": 10**9}}).encode(), JSON),
    (json.dumps({**spec("c8"), "quota": {"unit": "KRW", "total": "9" * 31}}).encode(), JSON),
    (b"a=b&c=d", "application/x-www-form-urlencoded"),
    (b"{}", "text/xml"),
    (b"{}", "application/json; charset=ebcdic"),
    (b"{}", ";;;"),
    (b" " * 20000, JSON),
]

PUBLIC_ROUTES = [
    ("POST", "/q/{c}/join"),
    ("GET", "/q/{c}/status"),
    ("GET", "/q/{c}"),
    ("GET", "/gate/auth"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/.well-known/fairgate/keys"),
]
ADMIN_ROUTES = [
    ("POST", "/admin/campaigns"),
    ("GET", "/admin/campaigns"),
    ("GET", "/admin/campaigns/{c}"),
    ("PATCH", "/admin/campaigns/{c}"),
    ("POST", "/admin/campaigns/{c}/pause"),
    ("POST", "/admin/campaigns/{c}/resume"),
    ("POST", "/admin/campaigns/{c}/block"),
    ("POST", "/admin/campaigns/{c}/revoke"),
    ("GET", "/admin/campaigns/{c}/stats"),
    ("POST", "/admin/campaigns/{c}/close"),
]
CAMPAIGNS = ["c1", "nope", "BAD", "a" * 100, "c1%0A", "%00", "..", "%ff"]


async def _check(failures: list[str], response: Any, what: str) -> None:
    text = await response.text()
    if response.status >= 500:
        failures.append(f"{what} -> {response.status} {text[:200]}")
    elif response.status >= 400:
        try:
            error = json.loads(text)["error"]
            assert isinstance(error["code"], str) and isinstance(error["message"], str)
        except (ValueError, KeyError, TypeError, AssertionError):
            failures.append(f"{what} -> {response.status} not the JSON error shape: {text[:200]}")


async def test_sweep_junk_never_500(public: Any, admin: Any, gate: Gate) -> None:
    await create_campaign(admin)
    ticket = (await join(public, "c1", "alice"))["ticket"]
    failures: list[str] = []
    requests = 0
    for client, routes in ((public, PUBLIC_ROUTES), (admin, ADMIN_ROUTES)):
        for method, template in routes:
            campaigns = CAMPAIGNS if "{c}" in template else ["-"]
            for campaign in campaigns:
                path = template.replace("{c}", campaign)
                for body, ctype in JUNK_BODIES:
                    headers = {"X-Customer-Id": "junk-customer"}
                    if ctype is not None:
                        headers["Content-Type"] = ctype
                    r = await client.request(
                        method, path, data=body, headers=headers, params={"ticket": ticket}
                    )
                    requests += 1
                    await _check(failures, r, f"{method} {path} body={body[:30]!r} {ctype}")
    # junk in the headers and query of the customer-facing routes
    junk_values = [
        "",
        " ",
        "x" * 600,
        "\t",
        "a.b",
        ticket,
        ticket + "x",
        "%00",
        "é",
        "..",
        flip_mac(ticket),
        "Bearer x",
    ]
    for value in junk_values:
        for headers, params in [
            ({"X-Customer-Id": value}, {"ticket": ticket}),
            ({"X-Customer-Id": "alice"}, {"ticket": value}),
            ({"X-Gate-Pass": value, "X-Gate-Campaign": value}, {"campaign": value}),
            ({"Cookie": f"fg_pass={value}"}, {}),
            ({"Accept": value}, {"ticket": value}),
        ]:
            for method, path in [
                ("POST", "/q/c1/join"),
                ("GET", "/q/c1/status"),
                ("GET", "/gate/auth"),
            ]:
                r = await public.request(method, path, headers=headers, params=params)
                requests += 1
                await _check(failures, r, f"{method} {path} {headers} {params}")
        for headers in [{"Authorization": value}, {"Authorization": f"Bearer {value}"}]:
            r = await admin.get("/admin/campaigns", headers=headers)
            requests += 1
            await _check(failures, r, f"admin {headers}")
    assert requests > 1000
    assert not failures, "\n".join(failures[:30])
    # and the gate still works after all that
    r = await public.get("/q/c1/status", params={"ticket": ticket}, headers=as_customer("alice"))
    assert r.status in (200, 403), await r.text()
