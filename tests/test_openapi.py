"""The listeners' OpenAPI documents (gate/http/openapi.py) are true.

Every route of each listener's router is in that listener's `/openapi.json` and every
documented operation is a route (the public document names no admin path); and
schemathesis, run against a live `gate serve` with real credentials (the trusted proxy's
customer header, the admin and core bearer tokens, real tickets, passes, seqs and
reservations of a seeded campaign), finds on every operation of the three listeners no
server error (a 5xx other than the documented 503s) and no answer that breaks the
document: its status, content type, headers and body schema.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gate.http.admin import create_admin_app
from gate.http.claims import create_core_app
from gate.http.listener import ListenerRunner
from gate.http.public import create_public_app
from gate.service import Gate
from tests.helpers import ADMIN_TOKEN, CORE_TOKEN, GateProcess, spec, wait_for

# Examples of an operation (valid and invalid data mixed); one with nothing to vary
# (no parameters, no body) gets a few. 35 operations make about 400 requests: schemathesis
# spends ~25 ms making each, the gate a millisecond answering it.
# FAIRGATE_OPENAPI_EXAMPLES=200 for a deeper hunt.
EXAMPLES = int(os.environ.get("FAIRGATE_OPENAPI_EXAMPLES", "12"))
FIXED_EXAMPLES = 3
CHECKS = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@schemathesis.serializer("application/msgpack")
def _msgpack_body(context: Any, value: Any) -> bytes:
    """Bodies the documents allow as msgpack are sent as msgpack too (an integer beyond
    msgpack's 64 bits goes as its decimal string: still a body the gate must refuse)."""
    try:
        return bytes(msgpack.packb(value))
    except (OverflowError, TypeError, ValueError):
        return bytes(msgpack.packb(str(value)))


@schemathesis.deserializer("application/msgpack")
def _msgpack_answer(context: Any, response: Any) -> Any:
    """Answers to `Accept: application/msgpack`, checked against the same schemas."""
    return msgpack.unpackb(response.content, raw=False)


def routes_of(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route; aiohttp's HEAD beside each GET is GET's (the
    documents say so once), a route for any method stands as GET and POST."""
    found: set[tuple[str, str]] = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or info.get("prefix")
        assert isinstance(path, str), info
        if route.method == "HEAD":
            continue
        methods = ("GET", "POST") if route.method == "*" else (route.method,)
        found.update((method, path) for method in methods)
    return found


def documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete", "head", "options")
    }


async def test_every_route_of_every_listener_is_documented(gate: Gate, aiohttp_client: Any) -> None:
    apps = {
        "public": create_public_app(gate),
        "admin": create_admin_app(gate),
        "core": create_core_app(gate),
    }
    for name, app in apps.items():
        client = await aiohttp_client(app)
        r = await client.get("/openapi.json")  # on the admin listener too, without a token
        assert r.status == 200, (name, await r.text())
        document = await r.json()
        assert document["openapi"] == "3.1.0"
        assert documented(document) == routes_of(app), name
        ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
        assert len(ids) == len(set(ids)), name
        for path, item in document["paths"].items():
            for method, operation in item.items():
                responses = operation["responses"]
                assert "200" in responses or "201" in responses, (name, method, path)
                for status, answer in responses.items():
                    if status.startswith(("4", "5")) and path != "/readyz":
                        schema = answer["content"]["application/json"]["schema"]
                        assert schema == {"$ref": "#/components/schemas/Error"}, (path, status)
                    if status == "503":
                        assert answer["headers"]["Retry-After"]["required"], (path, status)
        paths = set(document["paths"])
        if name == "public":
            assert not [path for path in paths if path.startswith("/admin")]
            # the customer header is the configured one
            schemes = document["components"]["securitySchemes"]
            assert schemes["customerHeader"]["name"] == gate.config.customer_header
        if name == "admin":
            assert "/admin/campaigns/{campaign}/audit/export" in paths


# -- schemathesis against a live gate -------------------------------------------------


class Seeded:
    """What a live gate holds after `seed`: campaign c1 (customers joined and admitted,
    two reservations made) for the reads, c2 for the admin's state changes."""

    CUSTOMERS = 5  # who the examples act as; two more make the core's reservations

    def __init__(self, gate: GateProcess) -> None:
        self.gate = gate
        self.tickets: list[str] = []
        self.passes: list[str] = []
        self.seqs: list[int] = []
        self.reservations: list[str] = []

    def seed(self) -> None:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        for campaign in ("c1", "c2"):
            body = spec(campaign, pass_ttl_s=600, reservation_ttl_s=600)
            r = requests.post(
                f"{self.gate.admin_url}/admin/campaigns", json=body, headers=admin, timeout=10
            )
            assert r.status_code == 201, r.text
        for i in range(self.CUSTOMERS + 2):
            headers = {"X-Customer-Id": f"kim{i}"}
            # on c2 too, so that a revoke there finds the customer
            r = requests.post(f"{self.gate.url}/q/c2/join", headers=headers, timeout=10)
            assert r.status_code == 201, r.text
            r = requests.post(f"{self.gate.url}/q/c1/join", headers=headers, timeout=10)
            assert r.status_code == 201, r.text
            ticket = r.json()["ticket"]
            answer: dict[str, Any] = {}

            async def admitted(
                ticket: str = ticket, headers: dict[str, str] = headers, answer: Any = answer
            ) -> bool:
                r = await asyncio.to_thread(
                    requests.get,
                    f"{self.gate.url}/q/c1/status",
                    params={"ticket": ticket},
                    headers=headers,
                    timeout=10,
                )
                answer.update(r.json())
                return answer.get("state") == "admitted"

            asyncio.run(wait_for(admitted, 10, f"kim{i} admitted"))
            self.tickets.append(ticket)
            self.passes.append(answer["pass"])
            self.seqs.append(answer["seq"])
        for i in (5, 6):  # a reservation to confirm, one to release
            r = requests.post(
                f"{self.gate.url}/q/c1/claim",
                json={"amount": "1"},
                headers={"X-Customer-Id": f"kim{i}", "X-Gate-Pass": self.passes[i]},
                timeout=10,
            )
            assert r.status_code == 201, r.text
            self.reservations.append(r.json()["reservation"])


@pytest.fixture
def live_gate(redis_url: str, tmp_path: Path, keys_file: Path) -> Iterator[Seeded]:
    gate = GateProcess(redis_url, tmp_path / "gate", keys_file)
    gate.start()
    try:
        asyncio.run(gate.wait_ready())
        seeded = Seeded(gate)
        seeded.seed()
        yield seeded
    finally:
        gate.stop()
    assert not gate.leftovers


# The admin's state changes act on c2: c1 stays open for everything else.
_CHANGES_STATE = ("pause", "resume", "close", "block", "revoke", "PATCH")


def _real_values(seeded: Seeded, listener: str, label: str, who: int) -> dict[str, Any]:
    """What a parameter of that name is, when the example uses a real one."""
    campaign = "c2" if listener == "admin" and any(w in label for w in _CHANGES_STATE) else "c1"
    return {
        "campaign": campaign,
        "ticket": seeded.tickets[who],
        "X-Gate-Pass": seeded.passes[who],
        "X-Gate-Campaign": "c1",
        "seq": seeded.seqs[who],
        "reservation": seeded.reservations["release" in label],
        "old": 1,
        "new": 1,
        # revoke: a customer who joined c2; block: anyone (one blocked can't be revoked)
        "customer": f"kim{who}" if "revoke" in label else f"lee{who}",
        "name": "fairgate.js",
    }


# Bodies that get past validation, now and then, so the operation does what it says.
_REAL_BODIES: dict[str, Callable[[int], Any]] = {
    "POST /admin/campaigns": lambda n: spec(f"x{n}"),
    "PATCH /admin/campaigns/{campaign}": lambda n: {"rate_per_s": n % 500 + 1},
    "POST /q/{campaign}/claim": lambda n: {"amount": "1", "idempotency_key": f"k{n}"},
}


def _credentials(listener: str, who: int) -> dict[str, str]:
    if listener == "admin":
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    if listener == "core":
        return {"Authorization": f"Bearer {CORE_TOKEN}"}
    return {"X-Customer-Id": f"kim{who}"}


def _fuzz(
    seeded: Seeded,
    listener: str,
    base_url: str,
    operation: Any,
    failures: list[str],
    counts: dict[str, dict[str, int]],
) -> None:
    session = requests.Session()
    strategy = st.one_of(
        operation.as_strategy(generation_mode=schemathesis.GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE),
    )
    seen: set[str] = set()

    parameters = operation.definition.raw.get("parameters") or []
    varies = bool(parameters or operation.body)
    declared: dict[str, list[str]] = {}
    for parameter in parameters:
        declared.setdefault(parameter["in"], []).append(parameter["name"])

    @settings(
        max_examples=EXAMPLES if varies else FIXED_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        case = data.draw(strategy)
        who = data.draw(st.integers(0, Seeded.CUSTOMERS - 1))
        real = _real_values(seeded, listener, operation.label, who)
        for location, where in (
            ("path_parameters", "path"),
            ("query", "query"),
            ("headers", "header"),
        ):
            values = getattr(case, location)
            if values is None:
                values = {}
                setattr(case, location, values)
            # a real value for each parameter, mostly, and for an optional one left out
            for name in declared.get(where, ()):
                if name in real and data.draw(st.integers(0, 3)) < 3:
                    values[name] = real[name]
        body = _REAL_BODIES.get(operation.label)
        if body is not None and data.draw(st.integers(0, 2)) == 1:
            case.body = body(data.draw(st.integers(0, 10**6)))
            case.media_type = "application/json"
        customer_body = isinstance(case.body, dict) and "customer" in case.body
        if customer_body and data.draw(st.integers(0, 3)) < 3:
            case.body["customer"] = real["customer"]
        # mostly with credentials, sometimes none (Hypothesis draws 0 most: 0 = with)
        if data.draw(st.integers(0, 9)) < 9:
            case.headers = {**(case.headers or {}), **_credentials(listener, who)}
        # the same answers, as msgpack, now and then (given to call(): a case's own
        # Accept is replaced by schemathesis)
        accept = {"Accept": "application/msgpack"} if data.draw(st.integers(0, 3)) == 1 else {}
        response = case.call(base_url=base_url, session=session, headers=accept, timeout=10)
        seen_statuses = counts.setdefault(f"{listener} {operation.label}", {})
        status = str(response.status_code)
        seen_statuses[status] = seen_statuses.get(status, 0) + 1
        problems: list[str] = []
        if response.status_code >= 500 and response.status_code != 503:
            problems.append(f"server error {response.status_code}: {response.text[:300]}")
        try:
            case.validate_response(response, checks=CHECKS, headers=accept)
        except FailureGroup as group:
            problems.extend(f"{type(f).__name__}: {f.title}" for f in group.exceptions)
        if problems:
            problems = [f"(answered {response.status_code}) {p}" for p in problems]
        for problem in problems:
            if problem not in seen:  # one report of each kind per operation
                seen.add(problem)
                failures.append(
                    f"{listener} {operation.label}: {problem}\n    {case.as_curl_command()[:400]}"
                )

    run()


@pytest.mark.slow
def test_schemathesis_finds_nothing_on_any_listener(live_gate: Seeded) -> None:
    gate = live_gate.gate
    failures: list[str] = []
    counts: dict[str, dict[str, int]] = {}
    operations = 0
    started = time.monotonic()
    listeners = [("public", gate.url), ("admin", gate.admin_url), ("core", gate.core_url)]
    for listener, base_url in listeners:
        schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
        for result in schema.get_all_operations():
            operation = result.ok()
            operations += 1
            one = time.monotonic()
            _fuzz(live_gate, listener, base_url, operation, failures, counts)
            print(
                f"{listener} {operation.label}: {time.monotonic() - one:.1f}s "
                f"{counts.get(f'{listener} {operation.label}')}"
            )
    elapsed = time.monotonic() - started
    requests_made = sum(sum(statuses.values()) for statuses in counts.values())
    print(f"schemathesis: {operations} operations, {requests_made} requests in {elapsed:.1f}s")
    assert operations >= 30
    assert not failures, "\n".join(failures)
    # Real credentials and values got past the 401s and 404s: every operation answered
    # a success at least once, but the witnesses' cosign (this gate has no witnesses).
    unanswered = [
        label
        for label, statuses in counts.items()
        if not any(status < "400" for status in statuses) and "cosign" not in label
    ]
    assert not unanswered, counts


# -- what schemathesis found ------------------------------------------------------------


async def test_the_proxies_pass_check_answers_only_200_401_or_403(public: Any) -> None:
    """nginx's auth_request takes 2xx, 401 and 403 and turns anything else into a 500 for
    the customer: a customer header the proxy passed with a tab in it was a 400."""
    for method in ("GET", "POST"):
        r = await public.request(
            method,
            "/gate/auth",
            headers={"X-Customer-Id": "kim\tlee", "X-Gate-Campaign": "c1", "X-Gate-Pass": "x"},
        )
        assert r.status == 401, await r.text()
        assert (await r.json())["error"]["code"] == "bad_customer"


async def test_a_request_aiohttp_cannot_parse_is_answered_in_the_error_shape(gate: Gate) -> None:
    """A request line longer than aiohttp reads (8190 bytes: a long ?ticket= is enough)
    was answered 400 text/plain with aiohttp's words and the request's own bytes, not
    the documented `{"error": {"code", "message"}}`."""
    runner = ListenerRunner(create_public_app(gate), gate.config, listener="public")
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/q/c1/status?ticket={'a' * 9000}") as r,
        ):
            assert r.status == 400
            assert r.content_type == "application/json", await r.text()
            error = (await r.json())["error"]
            assert error["code"] == "line_too_long" and "a" * 100 not in error["message"]
    finally:
        await runner.cleanup()
