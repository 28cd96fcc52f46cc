"""The three listeners as OpenAPI 3.1 documents, each served at its own `GET /openapi.json`:
the public one (join, poll status at `poll_after_ms`, take the pass, claim with it; the
proxies' pass check, the page, the transparency log), the admin one (campaigns and live
controls, the audit log) and the core system's (confirm, release). No document names a
path of another listener: the public one never shows the admin API.

Written by hand, next to the handlers they describe; tests/test_openapi.py checks that
every route of each listener's router is in its document and the reverse, and runs
schemathesis against a live `gate serve` on every operation of all three.
"""

from __future__ import annotations

import copy
from typing import Any

from gate.config import Config

_ID_PATTERN = "^[a-z0-9][a-z0-9_-]{0,63}$"


def _campaign_parameter() -> dict[str, Any]:
    return {
        "name": "campaign",
        "in": "path",
        "required": True,
        "description": "The campaign id; one that cannot exist is answered 404 unknown_campaign",
        "schema": {"type": "string", "pattern": _ID_PATTERN},
    }


def _query(name: str, schema: dict[str, Any], description: str = "", **more: Any) -> dict[str, Any]:
    parameter: dict[str, Any] = {"name": name, "in": "query", "schema": schema, **more}
    if description:
        parameter["description"] = description
    return parameter


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON answer, or the same as msgpack for a client that sends
    `Accept: application/msgpack`."""
    return {"application/json": {"schema": schema}, "application/msgpack": {"schema": schema}}


def _answer(description: str, schema: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"description": description, "content": _json(schema), **more}


def _error(codes: str) -> dict[str, Any]:
    """An error answer: `{"error": {"code", "message"}}`, or, for a browser's navigation
    (Accept prefers text/html), the page in the customer's language."""
    return {
        "description": f"Refused: {codes}",
        "content": {
            **_json(_ref("Error")),
            "text/html": {"schema": {"type": "string"}},
        },
    }


_RETRY_AFTER = {
    "description": "Seconds to wait before asking again",
    "required": True,
    "schema": {"type": "integer", "minimum": 0},
}


def _busy(codes: str = "") -> dict[str, Any]:
    """A 503: the gate cannot decide right now (Redis away, a failover being reconciled,
    too many requests in flight); the client waits Retry-After seconds and asks again."""
    answer = _error(
        "the gate cannot decide right now: unavailable (Redis away, or this process at its "
        "limit of requests in flight), reconciling, campaign_held" + (f", {codes}" if codes else "")
    )
    answer["description"] = answer["description"].replace("Refused", "Busy", 1)
    answer["headers"] = {"Retry-After": _RETRY_AFTER}
    return answer


# What every route of a listener may answer besides its own statuses.
_TOO_LARGE = _error("body_too_large")
_TIMEOUT = _error("body_timeout: the body did not arrive in time")
_UNSUPPORTED = _error("unsupported_media_type: send JSON or msgpack")
_NOT_YET = {
    **_error(
        "unauthorized (no_identity, untrusted_identity, bad_identity, no_pass, bad_pass, "
        "pass_expired, not_yet: a paced pass used before it is valid)"
    ),
    "headers": {
        "Retry-After": {
            "description": "not_yet: seconds until the pass is valid",
            "schema": {"type": "integer", "minimum": 1},
        },
        "X-Gate-Retry-After-Ms": {
            "description": "not_yet: milliseconds until the pass is valid",
            "schema": {"type": "integer", "minimum": 1},
        },
    },
}

_VIEW_PROPERTIES: dict[str, Any] = {
    "campaign": {"type": "string"},
    "seq": {"type": "integer", "description": "The ticket's place in line (0 in a pre-queue)"},
    "state": {
        "type": "string",
        "enum": ["prequeue", "waiting", "admitted", "soldout", "closed", "expired", "claimed"],
    },
    "position": {"type": ["integer", "null"], "description": "1 = next to be admitted"},
    "eta_s": {"type": ["integer", "null"], "description": "Seconds, at the measured rate"},
    "poll_after_ms": {
        "type": ["integer", "null"],
        "description": "Ask again after this long (jittered); null: the answer is final",
    },
    "opens_at": {"type": "string", "format": "date-time"},
    "remaining": {"type": "string", "description": "What is left to allocate (decimal)"},
    "paused": {"type": "boolean", "description": "Admission paused by the operator"},
    "claimed": {"type": "string", "description": "state claimed: the amount (decimal)"},
    "subscribed": {"type": ["string", "null"], "description": "A ballot: the subscription"},
    "allocation": {"type": ["string", "null"], "description": "A ballot: what was allotted"},
}

_DECIMAL = {"type": "string", "pattern": "^-?[0-9]+$", "description": "A whole number, decimal"}
_OBJECT: dict[str, Any] = {"type": "object"}
_TEXT = {"text/plain": {"schema": {"type": "string"}}}
# A ticket or pass as the gate signs them (base64url parts joined by dots).
_TOKEN = {"type": "string", "pattern": "^[A-Za-z0-9_.-]*$", "maxLength": 1024}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "pattern": "^[a-z0-9_]+$"},
                    "message": {"type": "string"},
                },
            }
        },
    },
    "Health": {
        "type": "object",
        "required": ["ok"],
        "properties": {"ok": {"const": True}},
    },
    "Document": {
        "type": "object",
        "required": ["openapi", "info", "paths"],
        "properties": {"openapi": {"type": "string"}, "info": _OBJECT, "paths": _OBJECT},
    },
}

_PUBLIC_SCHEMAS: dict[str, Any] = {
    "JoinAnswer": {
        "type": "object",
        "required": ["campaign", "ticket", "seq", "created", "state"],
        "properties": {
            **_VIEW_PROPERTIES,
            "ticket": {"type": "string", "description": "Keep it; poll with it"},
            "created": {"type": "boolean"},
            "receipt": {"type": ["object", "null"]},
        },
        "additionalProperties": False,
    },
    "Status": {
        "type": "object",
        "required": ["campaign", "seq", "state"],
        "properties": {
            **_VIEW_PROPERTIES,
            "ticket": {
                "type": "string",
                "description": "After the pre-queue shuffle: use this one now",
            },
            "pass": {"type": "string", "description": "When admitted: send as X-Gate-Pass"},
            "pass_expires_at": {"type": "integer", "description": "Unix seconds"},
            "not_before": {
                "type": "integer",
                "description": "Paced arrival: the pass (given already, state still "
                "waiting) is valid from this Redis time, unix microseconds",
            },
            "retry_after_ms": {
                "type": "integer",
                "description": "Paced arrival: come back (or go on) after this",
            },
        },
        "additionalProperties": False,
    },
    "Claim": {
        "type": "object",
        "required": ["amount"],
        "properties": {
            "amount": {
                "oneOf": [
                    {"type": "string", "pattern": "^[0-9]{1,30}$"},
                    {"type": "integer", "minimum": 1},
                ],
                "description": "In the campaign's unit: a whole number, or its decimal string",
            },
            "idempotency_key": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,64}$"},
        },
    },
    "Reservation": {
        "type": "object",
        "required": ["campaign", "reservation", "amount", "unit", "expires_at", "partial"],
        "properties": {
            "campaign": {"type": "string"},
            "reservation": {"type": "string"},
            "amount": _DECIMAL,
            "unit": {"type": "string"},
            "expires_at": {"type": "number", "description": "Unix seconds"},
            "partial": {"type": "boolean"},
        },
        "additionalProperties": False,
    },
    "Subscription": {
        "type": "object",
        "required": ["campaign", "subscribed", "unit", "receipt"],
        "properties": {
            "campaign": {"type": "string"},
            "subscribed": _DECIMAL,
            "unit": {"type": "string"},
            "receipt": {"type": ["object", "null"]},
        },
        "additionalProperties": False,
    },
    "AuthAnswer": {
        "type": "object",
        "required": ["ok", "campaign", "seq", "customer"],
        "properties": {
            "ok": {"const": True},
            "campaign": {"type": "string"},
            "seq": {"type": "integer"},
            "customer": {
                "type": "string",
                "description": "The customer as the campaign's keyed digest (hex)",
            },
        },
    },
    "Readiness": {
        "type": "object",
        "required": ["ready", "redis", "scripts", "reason"],
        "properties": {
            "ready": {"type": "boolean"},
            "redis": {"type": "boolean"},
            "scripts": {"type": "boolean"},
            "reason": {"type": ["string", "null"]},
        },
    },
    "Keys": {
        "type": "object",
        "required": ["keys"],
        "properties": {
            "keys": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["kid", "alg", "public_key", "current"],
                    "properties": {
                        "kid": {"type": "string"},
                        "alg": {"const": "Ed25519"},
                        "public_key": {"type": "string"},
                        "current": {"type": "boolean"},
                    },
                },
            }
        },
    },
    "Receipt": {
        "type": "object",
        "required": ["receipt", "checkpoint", "inclusion", "witnessed"],
        "properties": {
            "receipt": _OBJECT,
            "checkpoint": {"type": ["object", "null"]},
            "inclusion": {"type": ["object", "null"]},
            "witnessed": {"type": ["object", "null"]},
        },
    },
    "Witnessing": {
        "type": "object",
        "required": ["size", "cosigned_by", "quorum", "witnesses", "published", "witnessed_size"],
        "properties": {
            "campaign": {"type": "string"},
            "origin": {"type": "string"},
            "witness_keys": {"type": "array", "items": {"type": "string"}},
            "accepted": {"type": "array", "items": {"type": "string"}},
            "size": {"type": "integer"},
            "cosigned_by": {"type": "array", "items": {"type": "string"}},
            "quorum": {"type": "integer"},
            "witnesses": {"type": "integer"},
            "published": {"type": "boolean"},
            "witnessed_size": {"type": ["integer", "null"]},
        },
    },
    "Commitment": {
        "type": "object",
        "required": [
            "campaign",
            "entry",
            "raw",
            "spec",
            "seed_hash",
            "pq_seed_hash",
            "checkpoint",
            "note",
            "inclusion",
            "published",
        ],
        "properties": {
            "campaign": {"type": "string"},
            "entry": {"type": "integer"},
            "raw": {"type": "string"},
            "spec": {"type": "string"},
            "seed_hash": {"type": "string"},
            "pq_seed_hash": {"type": "string"},
            "checkpoint": _OBJECT,
            "note": {"type": "string"},
            "inclusion": {"type": "array", "items": {"type": "string"}},
            "published": {"type": "boolean"},
        },
    },
}

_ADMIN_SCHEMAS: dict[str, Any] = {
    "CampaignSpec": {
        "type": "object",
        "description": "A campaign's rules (README, docs/contract-notes.md)",
        "required": ["id", "opens_at", "closes_at", "quota", "admission"],
        "properties": {
            "id": {"type": "string", "pattern": _ID_PATTERN},
            "opens_at": {"type": "string", "format": "date-time"},
            "closes_at": {"type": "string", "format": "date-time"},
            "policy": {"enum": ["first_come", "ballot"]},
            "quota": _OBJECT,
            "admission": _OBJECT,
        },
    },
    "CampaignPatch": {
        "type": "object",
        "description": "The fields to change (rate_per_s, burst, max_active, closes_at, ...)",
    },
    "CustomerAction": {
        "type": "object",
        "required": ["customer"],
        "properties": {
            "customer": {"type": "string", "minLength": 1, "maxLength": 256},
            "reason": {"type": "string", "maxLength": 500},
        },
    },
    "Stats": {
        "type": "object",
        "required": ["state", "joined", "cursor", "waiting", "admitted", "active"],
        "properties": {
            "id": {"type": "string"},
            "state": {"type": "string"},
            "joined": {"type": "integer"},
            "cursor": {"type": "integer"},
            "waiting": {"type": "integer"},
            "admitted": {"type": "integer"},
            "active": {"type": "integer"},
            "policy": {"enum": ["first_come", "ballot"]},
            "unit": {"type": "string"},
            "total": _DECIMAL,
            "remaining": _DECIMAL,
            "admission_rate_per_s": {"type": ["number", "null"]},
            "rate_per_s": {"type": "number"},
            "rate_mode": {"type": ["string", "null"]},
        },
    },
    "Campaign": {
        "type": "object",
        "required": ["id", "spec", "state", "stats", "failover_hold", "failover_restored"],
        "properties": {
            "id": {"type": "string"},
            "spec": {"type": ["object", "null"]},
            "state": {"type": "string"},
            "stats": {"oneOf": [_ref("Stats"), {"type": "null"}]},
            "failover_hold": {"type": ["object", "null"]},
            "failover_restored": {"type": ["object", "null"]},
            "commitment": {
                "type": "object",
                "description": "On creation: entry 1 and the checkpoint that covers it",
            },
        },
    },
    "CampaignList": {
        "type": "object",
        "required": ["campaigns"],
        "properties": {
            "campaigns": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "state", "joined", "cursor"],
                    "properties": {
                        "id": {"type": "string"},
                        "state": {"type": "string"},
                        "joined": {"type": "integer"},
                        "cursor": {"type": ["integer", "null"]},
                    },
                },
            }
        },
    },
    "CustomerActionAnswer": {
        "type": "object",
        "required": ["campaign", "seq"],
        "properties": {
            "campaign": {"type": "string"},
            "blocked": {"const": True},
            "revoked": {"const": True},
            "seq": {"type": ["integer", "null"]},
        },
    },
    "Checkpoints": {
        "type": "object",
        "required": ["campaign", "checkpoints", "keys", "witnessing"],
        "properties": {
            "campaign": {"type": "string"},
            "checkpoints": {"type": "array", "items": _OBJECT},
            "keys": _OBJECT,
            "witnessing": {"type": ["object", "null"]},
        },
    },
}

_CORE_SCHEMAS: dict[str, Any] = {
    "ReservationState": {
        "type": "object",
        "required": ["reservation", "state", "seq", "amount"],
        "properties": {
            "reservation": {"type": "string"},
            "state": {"enum": ["confirmed", "released"]},
            "seq": {"type": "integer"},
            "amount": _DECIMAL,
        },
        "additionalProperties": False,
    },
    "Release": {
        "type": "object",
        "properties": {"reason": {"type": "string", "maxLength": 500}},
    },
}


def _health_paths() -> dict[str, Any]:
    return {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness: the process answers",
                "security": [],
                "responses": {"200": _answer("Alive", _ref("Health"))},
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {"200": _answer("OpenAPI 3.1", _ref("Document"))},
            }
        },
    }


def _customer_scheme(config: Config) -> tuple[str, dict[str, Any]]:
    if config.identity == "jwt":
        scheme: dict[str, Any] = {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": f"The bank's login token (claim {config.jwt_claim!r})"
            + (f", or the {config.jwt_cookie} cookie" if config.jwt_cookie else ""),
        }
        return "customerToken", scheme
    return "customerHeader", {
        "type": "apiKey",
        "in": "header",
        "name": config.customer_header,
        "description": "Set by the bank's trusted proxy (a client's own is refused: 401 "
        "untrusted_identity)",
    }


_IDENTITY = (
    "Who the customer is comes from the bank's side, never from the app's own say-so: "
    "with `identity = \"header\"` the bank's proxy sets the customer header (a client's "
    'own is refused); with `identity = "jwt"` the app sends the bank\'s login token as '
    "`Authorization: Bearer`."
)


def public_document(config: Config) -> dict[str, Any]:
    """The public listener: what banks' apps, browsers, proxies and witnesses call."""
    customer_scheme, scheme = _customer_scheme(config)
    customer: list[dict[str, list[str]]] = [{customer_scheme: []}]
    campaign = _campaign_parameter()
    pass_header = {
        "name": "X-Gate-Pass",
        "in": "header",
        "description": "The pass from the admitted status answer (or the fg_pass cookie)",
        "schema": _TOKEN,
    }
    ticket = _query("ticket", _TOKEN, "The join's ticket")
    busy = _busy()
    paths: dict[str, Any] = {
        **_health_paths(),
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Readiness: Redis reached, scripts loaded, nothing refused lately",
                "security": [],
                "responses": {
                    "200": _answer("Ready", _ref("Readiness")),
                    "503": _answer(
                        "Not ready", _ref("Readiness"), headers={"Retry-After": _RETRY_AFTER}
                    ),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (text exposition format)",
                "security": [],
                "responses": {"200": {"description": "Metrics", "content": _TEXT}},
            }
        },
        "/q/_static/{name}": {
            "get": {
                "operationId": "staticFile",
                "summary": "The page's scripts (fairgate.js, page.js) and style sheet",
                "security": [],
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "examples": ["fairgate.js"]},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The file",
                        "content": {
                            "text/javascript": {"schema": {"type": "string"}},
                            "text/css": {"schema": {"type": "string"}},
                        },
                    },
                    "404": _error("not_found"),
                    "503": busy,
                },
            }
        },
        "/q/{campaign}/join": {
            "post": {
                "operationId": "join",
                "summary": "Join the queue (idempotent per customer)",
                "security": customer,
                "parameters": [campaign],
                "requestBody": {
                    "description": "No fields yet: empty, or an object. The waiting page's "
                    "no-script form posts application/x-www-form-urlencoded and is "
                    "answered 303 back to the page.",
                    "required": False,
                    "content": {
                        "application/json": {"schema": _OBJECT},
                        "application/msgpack": {"schema": _OBJECT},
                        "application/x-www-form-urlencoded": {"schema": _OBJECT},
                    },
                },
                "responses": {
                    "201": _answer("A new ticket", _ref("JoinAnswer")),
                    "200": _answer("The ticket held", _ref("JoinAnswer")),
                    "303": {"description": "The page's form: back to the waiting page"},
                    "400": _error(
                        "bad_customer (the customer header), bad_json, bad_msgpack, bad_body, "
                        "bad_text, bad_body_encoding"
                    ),
                    "401": _error("no_identity, untrusted_identity, bad_identity"),
                    "403": _error("blocked, bad_origin"),
                    "404": _error("unknown_campaign"),
                    "408": _TIMEOUT,
                    "409": _error("campaign_closed, not_open_yet"),
                    "413": _TOO_LARGE,
                    "415": _UNSUPPORTED,
                    "503": _busy("campaign_not_published"),
                },
            }
        },
        "/q/{campaign}/status": {
            "get": {
                "operationId": "status",
                "summary": "Where the ticket stands; the pass once admitted",
                "security": customer,
                "parameters": [campaign, {**ticket, "required": True}],
                "responses": {
                    "200": _answer("The ticket's state", _ref("Status")),
                    "400": _error("missing_ticket, bad_customer"),
                    "401": _error("no_identity, untrusted_identity, bad_identity"),
                    "403": _error("bad_ticket, wrong_campaign, wrong_customer, revoked"),
                    "404": _error("unknown_campaign, no_ticket"),
                    "503": busy,
                },
            }
        },
        "/q/{campaign}/claim": {
            "post": {
                "operationId": "claim",
                "summary": "Reserve an amount with the pass (a ballot: subscribe)",
                "security": customer,
                "parameters": [campaign, pass_header],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": _ref("Claim")},
                        "application/msgpack": {"schema": _ref("Claim")},
                    },
                },
                "responses": {
                    "201": _answer(
                        "Reserved (a ballot: subscribed)",
                        {"oneOf": [_ref("Reservation"), _ref("Subscription")]},
                    ),
                    "200": _answer(
                        "The same claim again (its idempotency key): the first answer",
                        {"oneOf": [_ref("Reservation"), _ref("Subscription")]},
                    ),
                    "400": _error(
                        "bad_amount, bad_idempotency_key, below_minimum, bad_step, bad_customer, "
                        "bad_json, "
                        "bad_msgpack, bad_body"
                    ),
                    "401": _NOT_YET,
                    "403": _error(
                        "wrong_campaign, wrong_customer, revoked, not_admitted, "
                        "campaign_closed, bad_origin"
                    ),
                    "404": _error("unknown_campaign"),
                    "408": _TIMEOUT,
                    "409": _error(
                        "sold_out, over_customer_limit, earlier_claims, reservation_pending, "
                        "idempotency_key_reused, already_subscribed, closed, wrong_policy"
                    ),
                    "413": _TOO_LARGE,
                    "415": _UNSUPPORTED,
                    "503": busy,
                },
            }
        },
        "/q/{campaign}/receipt/{seq}": {
            "get": {
                "operationId": "receipt",
                "summary": "The signed join receipt and its inclusion proof",
                "description": "For the seq's holder only: the customer, named as on "
                "every customer route, with their own ticket (?ticket= or the fg_ticket "
                "cookie) or pass (X-Gate-Pass or the fg_pass cookie) for this seq. Any "
                "other request gets 404 unknown_receipt, the answer for a seq that does "
                "not exist.",
                "security": customer,
                "parameters": [
                    campaign,
                    {
                        "name": "seq",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 1},
                    },
                    ticket,
                    pass_header,
                ],
                "responses": {
                    "200": _answer("docs/audit-format.md", _ref("Receipt")),
                    "404": _error("unknown_receipt, unknown_campaign"),
                    "503": busy,
                },
            }
        },
        "/q/{campaign}": {
            "get": {
                "operationId": "page",
                "summary": "The waiting page (HTML) for browsers",
                "security": [*customer, {}],
                "parameters": [
                    campaign,
                    _query("lang", {"enum": ["ko", "en"]}),
                    _query(
                        "return",
                        {"type": "string"},
                        "A same-site path to go to once admitted",
                    ),
                    ticket,
                ],
                "responses": {
                    "200": {
                        "description": "The page",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    "303": {"description": "Admitted: to the target, pass cookie set"},
                    "400": _error("bad_customer"),
                    "401": _error("untrusted_identity, bad_identity"),
                    "403": _error("revoked"),
                    "404": _error("unknown_campaign"),
                    "503": busy,
                },
            }
        },
        "/.well-known/fairgate/keys": {
            "get": {
                "operationId": "keys",
                "summary": "The public keys that sign receipts and checkpoints",
                "security": [],
                "responses": {"200": _answer("By key id", _ref("Keys"))},
            }
        },
        "/.well-known/fairgate/checkpoint/{campaign}": {
            "get": {
                "operationId": "checkpointNote",
                "summary": "The latest checkpoint as a C2SP signed note, with the "
                "witnesses' cosignatures so far (docs/audit-format.md)",
                "security": [],
                "parameters": [
                    campaign,
                    _query("size", {"type": "integer", "minimum": 0}, "That checkpoint"),
                ],
                "responses": {
                    "200": {
                        "description": "The note",
                        "headers": {
                            name: {"schema": {"type": "string"}}
                            for name in (
                                "Fairgate-Cosignatures",
                                "Fairgate-Witness-Quorum",
                                "Fairgate-Published",
                                "Fairgate-Witnessed-Size",
                            )
                        },
                        "content": _TEXT,
                    },
                    "400": _error("bad_size"),
                    "404": _error("unknown_checkpoint, unknown_campaign"),
                    "503": _busy("checkpoint_unverified"),
                },
            }
        },
        "/.well-known/fairgate/consistency/{campaign}": {
            "get": {
                "operationId": "consistencyProof",
                "summary": "RFC 6962 consistency proof, a base64 hash a line",
                "security": [],
                "parameters": [
                    campaign,
                    _query("old", {"type": "integer", "minimum": 0}, required=True),
                    _query("new", {"type": "integer", "minimum": 0}, required=True),
                ],
                "responses": {
                    "200": {"description": "The proof", "content": _TEXT},
                    "400": _error("bad_size"),
                    "404": _error("unknown_checkpoint, unknown_campaign"),
                    "503": _busy("checkpoint_unverified"),
                },
            }
        },
        "/.well-known/fairgate/cosign/{campaign}": {
            "post": {
                "operationId": "cosign",
                "summary": "A witness hands in its cosignature: the served note with "
                "its tlog-cosignature line(s) appended",
                "security": [],
                "parameters": [campaign],
                "requestBody": {"required": True, "content": _TEXT},
                "responses": {
                    "200": _answer("Who cosigned, K of N, the published size", _ref("Witnessing")),
                    "400": _error("bad_note, bad_cosignature, bad_body_encoding"),
                    "403": _error("no_witnesses, unknown_witness, bad_cosignature, bad_origin"),
                    "404": _error("unknown_origin, unknown_checkpoint, unknown_campaign"),
                    "408": _TIMEOUT,
                    "409": _error("not_this_checkpoint"),
                    "413": _TOO_LARGE,
                    "503": _busy("checkpoint_unverified"),
                },
            }
        },
        "/.well-known/fairgate/witnessed/{campaign}": {
            "get": {
                "operationId": "witnessed",
                "summary": "The witnesses, who cosigned the latest checkpoint, K of N, "
                "the largest published size",
                "security": [],
                "parameters": [campaign],
                "responses": {
                    "200": _answer("Where the latest checkpoint stands", _ref("Witnessing")),
                    "404": _error("unknown_checkpoint, unknown_campaign"),
                    "503": _busy("checkpoint_unverified"),
                },
            }
        },
        "/.well-known/fairgate/commitment/{campaign}": {
            "get": {
                "operationId": "commitment",
                "summary": "What the campaign committed to before opening: entry 1, the "
                "first checkpoint as a signed note, and entry 1's inclusion proof",
                "security": [],
                "parameters": [campaign],
                "responses": {
                    "200": _answer("docs/audit-format.md", _ref("Commitment")),
                    "404": _error("unknown_checkpoint, unknown_campaign"),
                    "503": _busy("checkpoint_unverified"),
                },
            }
        },
    }
    auth_operation = {
        "summary": "The proxies' pass check (nginx auth_request, Envoy ext_authz, Traefik "
        "ForwardAuth): any method, no body read",
        "security": customer,
        "parameters": [
            pass_header,
            {
                "name": "X-Gate-Campaign",
                "in": "header",
                "description": "The campaign the pass must be for (or ?campaign=)",
                "schema": {"type": "string"},
            },
            _query("campaign", {"type": "string"}),
        ],
        "responses": {
            "200": _answer(
                "Pass good: the answer's X-Gate-Campaign, X-Gate-Seq and X-Gate-Customer "
                "headers go upstream",
                _ref("AuthAnswer"),
                headers={
                    "X-Gate-Campaign": {"required": True, "schema": {"type": "string"}},
                    "X-Gate-Seq": {"required": True, "schema": {"type": "integer"}},
                    "X-Gate-Customer": {"required": True, "schema": {"type": "string"}},
                },
            ),
            "401": _NOT_YET,
            "403": _error("wrong_campaign, wrong_customer, campaign_closed, revoked"),
            "503": busy,
        },
    }
    paths["/gate/auth"] = {
        method: {**copy.deepcopy(auth_operation), "operationId": f"auth{method.title()}"}
        for method in ("get", "post")
    }
    paths["/gate/revoked"] = {
        "get": {
            "operationId": "revoked",
            "summary": "A campaign's revocation list for a proxy that checks passes itself "
            "(docs/proxy.md, the edge check): plain text, one `name value` a line; to a "
            "trusted proxy only",
            "security": [],
            "parameters": [_query("campaign", {"type": "string"}, required=True)],
            "responses": {
                "200": {
                    "description": "fairgate-revoked 1, campaign, state, digest_key, version, "
                    "time_ms (Redis time), stale_after_ms, revoked (seqs)",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "401": _error("untrusted_proxy"),
                "404": _error("unknown_campaign"),
                "503": busy,
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fairgate public API",
            "version": "1",
            "description": (
                "A fair waiting room for a flash promotion. An app joins (one ticket per "
                "customer: a retried join returns the same one), polls the status with the "
                "ticket after `poll_after_ms` (add jitter of its own; on 503 wait "
                "`Retry-After` seconds: the place is kept), and once `state` is `admitted` "
                "takes the `pass` from the answer and sends it as `X-Gate-Pass` to claim. "
                'Errors are `{"error": {"code", "message"}}`; any route may answer 503 '
                "with Retry-After. Send `Accept: application/msgpack` for msgpack "
                "answers. Every GET also answers HEAD. " + _IDENTITY
            ),
        },
        "paths": paths,
        "components": {
            "schemas": {**_SCHEMAS, **_PUBLIC_SCHEMAS},
            "securitySchemes": {customer_scheme: scheme},
        },
    }


def _bearer_document(
    title: str, description: str, paths: dict[str, Any], schemas: dict[str, Any], who: str
) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "1", "description": description},
        "paths": {**_health_paths(), **paths},
        "components": {
            "schemas": {**_SCHEMAS, **schemas},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": who}},
        },
        "security": [{"bearer": []}],
    }


def admin_document(config: Config) -> dict[str, Any]:
    """The admin listener: every path but /healthz and /openapi.json needs an admin
    token (config.admin_tokens)."""
    del config  # the same for every configuration; the parameter keeps the three alike
    campaign = _campaign_parameter()
    unauthorized = _error("bad_admin_token")
    unknown = _error("unknown_campaign")
    busy = _busy()
    lost = _error("campaign_lost_in_failover")

    def body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
        return {
            "required": required,
            "content": {
                "application/json": {"schema": schema},
                "application/msgpack": {"schema": schema},
            },
        }

    bad_body = "bad_json, bad_msgpack, bad_body, bad_text"
    state_change = {
        "parameters": [campaign],
        "requestBody": body(_OBJECT, required=False),
        "responses": {
            "200": _answer("The campaign after the change", _ref("Campaign")),
            "400": _error(bad_body),
            "401": unauthorized,
            "404": unknown,
            "408": _TIMEOUT,
            "409": _error("bad_state, campaign_lost_in_failover"),
            "413": _TOO_LARGE,
            "415": _UNSUPPORTED,
            "503": busy,
        },
    }
    customer_action = {
        "parameters": [campaign],
        "requestBody": body(_ref("CustomerAction")),
        "responses": {
            "200": _answer("Done", _ref("CustomerActionAnswer")),
            "400": _error(f"bad_customer, bad_reason, {bad_body}"),
            "401": unauthorized,
            "404": _error("unknown_campaign, no_ticket"),
            "408": _TIMEOUT,
            "409": lost,
            "413": _TOO_LARGE,
            "415": _UNSUPPORTED,
            "503": busy,
        },
    }

    def read(summary: str, answer: dict[str, Any], **more: Any) -> dict[str, Any]:
        responses = {
            "200": answer,
            "401": unauthorized,
            "404": unknown,
            "409": lost,
            "503": busy,
        }
        responses.update(more.pop("responses", {}))
        return {
            "get": {"summary": summary, "parameters": [campaign], **more, "responses": responses}
        }

    paths: dict[str, Any] = {
        "/admin/campaigns": {
            "post": {
                "operationId": "createCampaign",
                "summary": "Create a campaign; answered once its commitment is signed",
                "requestBody": body(_ref("CampaignSpec")),
                "responses": {
                    "201": _answer("Created, with its commitment", _ref("Campaign")),
                    "400": _error(f"bad_spec, {bad_body}"),
                    "401": unauthorized,
                    "408": _TIMEOUT,
                    "409": _error("campaign_exists, campaign_lost_in_failover"),
                    "413": _TOO_LARGE,
                    "415": _UNSUPPORTED,
                    "503": busy,
                },
            },
            "get": {
                "operationId": "listCampaigns",
                "summary": "Every campaign, with its state and counts",
                "responses": {
                    "200": _answer("The campaigns", _ref("CampaignList")),
                    "401": unauthorized,
                    "503": busy,
                },
            },
        },
        "/admin/campaigns/{campaign}": {
            **read("A campaign: its spec, state and stats", _answer("", _ref("Campaign"))),
            "patch": {
                "operationId": "updateCampaign",
                "summary": "Change a running campaign (rate, burst, closes_at, ...)",
                "parameters": [campaign],
                "requestBody": body(_ref("CampaignPatch")),
                "responses": {
                    "200": _answer("The campaign after the change", _ref("Campaign")),
                    "400": _error(f"bad_spec, bad_patch, {bad_body}"),
                    "401": unauthorized,
                    "404": unknown,
                    "408": _TIMEOUT,
                    "409": _error("bad_state, campaign_lost_in_failover"),
                    "413": _TOO_LARGE,
                    "415": _UNSUPPORTED,
                    "503": busy,
                },
            },
        },
        "/admin/campaigns/{campaign}/stats": read(
            "The campaign's counts and rates", _answer("", _ref("Stats"))
        ),
        "/admin/campaigns/{campaign}/audit": read(
            "Audit entries about a customer, a seq range and/or a time range, decoded "
            "(a lookup of a customer is itself logged)",
            _answer("The entries (docs/audit-format.md)", _OBJECT),
            parameters=[
                campaign,
                _query("customer", {"type": "string", "minLength": 1, "maxLength": 256}),
                _query("from_seq", {"type": "integer", "minimum": 1}),
                _query("to_seq", {"type": "integer", "minimum": 1}),
                _query("since", {"type": "string", "format": "date-time"}),
                _query("until", {"type": "string", "format": "date-time"}),
                _query("after", {"type": "integer", "minimum": 0}),
                _query("limit", {"type": "integer", "minimum": 1}),
            ],
            responses={"400": _error("bad_query"), "500": _error("audit_gap: the log has a hole")},
        ),
        "/admin/campaigns/{campaign}/audit/export": read(
            "The whole log as JSON Lines, streamed",
            {
                "description": "One JSON object a line (docs/audit-format.md)",
                "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
            },
        ),
        "/admin/campaigns/{campaign}/audit/dispute": read(
            "One customer's account with its proofs (the lookup is itself logged)",
            _answer("The account (docs/audit-format.md)", _OBJECT),
            parameters=[
                campaign,
                _query(
                    "customer",
                    {"type": "string", "minLength": 1, "maxLength": 256},
                    required=True,
                ),
            ],
            responses={"400": _error("bad_query"), "500": _error("audit_gap: the log has a hole")},
        ),
        "/admin/campaigns/{campaign}/checkpoints": read(
            "Every signed checkpoint, the keys, the latest one's witnesses",
            _answer("", _ref("Checkpoints")),
        ),
        "/admin/campaigns/{campaign}/block": {
            "post": {"summary": "Block a customer (before or after joining)", **customer_action}
        },
        "/admin/campaigns/{campaign}/revoke": {
            "post": {"summary": "Revoke a customer's admission", **customer_action}
        },
    }
    for action, summary in (
        ("pause", "Stop admitting (places are kept)"),
        ("resume", "Admit again"),
        ("close", "Close the campaign (irreversible)"),
    ):
        paths[f"/admin/campaigns/{{campaign}}/{action}"] = {
            "post": {
                "operationId": f"{action}Campaign",
                "summary": summary,
                **copy.deepcopy(state_change),
            }
        }
    for path, item in paths.items():
        for method, operation in item.items():
            operation.setdefault("operationId", _operation_id(method, path))
    return _bearer_document(
        "fairgate admin API",
        "Campaigns and live controls, on the admin listener (never reachable through the "
        "public one). Every call that changes something is an audit entry naming the "
        "token's operator. "
        'Errors are `{"error": {"code", "message"}}`.',
        paths,
        _ADMIN_SCHEMAS,
        "An admin token (admin_tokens / GATE_ADMIN_TOKENS)",
    )


def _operation_id(method: str, path: str) -> str:
    words = [part.strip("{}") for part in path.split("/") if part and part != "admin"]
    return method + "".join(word.title().replace("_", "") for word in words)


def core_document(config: Config) -> dict[str, Any]:
    """The core listener: the core system confirms or releases a reservation."""
    del config
    campaign = _campaign_parameter()
    reservation = {
        "name": "reservation",
        "in": "path",
        "required": True,
        "description": "The claim's answer's `reservation`",
        "schema": {"type": "string", "pattern": "^r[0-9]{1,20}(-[A-Za-z0-9_-]{8})?$"},
    }

    def operation(action: str, summary: str, request: dict[str, Any]) -> dict[str, Any]:
        return {
            "post": {
                "operationId": f"{action}Reservation",
                "summary": summary,
                "parameters": [campaign, reservation],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {"schema": request},
                        "application/msgpack": {"schema": request},
                    },
                },
                "responses": {
                    "200": _answer("Done (or done already)", _ref("ReservationState")),
                    "400": _error("bad_reservation, bad_reason, bad_json, bad_msgpack, bad_body"),
                    "401": _error("bad_core_token"),
                    "404": _error("unknown_campaign, unknown_reservation"),
                    "408": _TIMEOUT,
                    "409": _error(
                        "reservation_confirmed, reservation_released, reservation_expired"
                    ),
                    "413": _TOO_LARGE,
                    "415": _UNSUPPORTED,
                    "503": _busy(),
                },
            }
        }

    return _bearer_document(
        "fairgate core API",
        "The core system's callbacks, on the core listener (config.core_host, core_port; "
        "never exposed by the shipped proxy configs): confirm a reservation once the "
        "deposit is booked, release it when it fails. Unanswered reservations expire. "
        'Errors are `{"error": {"code", "message"}}`.',
        {
            "/q/{campaign}/reservations/{reservation}/confirm": operation(
                "confirm", "The deposit is booked: the amount is taken for good", _OBJECT
            ),
            "/q/{campaign}/reservations/{reservation}/release": operation(
                "release", "The deposit failed: the amount returns to the pool", _ref("Release")
            ),
        },
        _CORE_SCHEMAS,
        "A core-system token (core_tokens / GATE_CORE_TOKENS)",
    )
