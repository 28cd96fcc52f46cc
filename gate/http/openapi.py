"""The public listener's JSON flow as an OpenAPI 3.1 document (`GET /openapi.json`), for
banks' own apps: join, poll status at `poll_after_ms`, take the pass, claim with it.

Written by hand, next to the handlers it describes; tests/test_page.py checks that every
path in it is a route of the public listener and that real answers carry its fields.
"""

from __future__ import annotations

from typing import Any

_CAMPAIGN = {
    "name": "campaign",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"},
}
_IDENTITY = (
    "Who the customer is comes from the bank's side, never from the app's own say-so: "
    "with `identity = \"header\"` the bank's proxy sets the customer header (a client's "
    'own is refused); with `identity = "jwt"` the app sends the bank\'s login token as '
    "`Authorization: Bearer`."
)
_ERROR = {"$ref": "#/components/responses/Error"}
_BUSY = {"$ref": "#/components/responses/Busy"}


def _json(schema_ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}}


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


def openapi_document() -> dict[str, Any]:
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
                'Errors are `{"error": {"code", "message"}}`. Send '
                "`Accept: application/msgpack` for msgpack answers. " + _IDENTITY
            ),
        },
        "paths": {
            "/q/{campaign}/join": {
                "post": {
                    "operationId": "join",
                    "summary": "Join the queue (idempotent per customer)",
                    "parameters": [_CAMPAIGN],
                    "responses": {
                        "201": {"description": "A new ticket", "content": _json("JoinAnswer")},
                        "200": {"description": "The ticket held", "content": _json("JoinAnswer")},
                        "401": _ERROR,
                        "403": _ERROR,
                        "404": _ERROR,
                        "409": _ERROR,
                        "503": _BUSY,
                    },
                }
            },
            "/q/{campaign}/status": {
                "get": {
                    "operationId": "status",
                    "summary": "Where the ticket stands; the pass once admitted",
                    "parameters": [
                        _CAMPAIGN,
                        {
                            "name": "ticket",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string", "maxLength": 512},
                        },
                    ],
                    "responses": {
                        "200": {"description": "The ticket's state", "content": _json("Status")},
                        "400": _ERROR,
                        "401": _ERROR,
                        "403": _ERROR,
                        "503": _BUSY,
                    },
                }
            },
            "/q/{campaign}/claim": {
                "post": {
                    "operationId": "claim",
                    "summary": "Reserve an amount with the pass",
                    "parameters": [
                        _CAMPAIGN,
                        {
                            "name": "X-Gate-Pass",
                            "in": "header",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Claim"}},
                            "application/msgpack": {
                                "schema": {"$ref": "#/components/schemas/Claim"}
                            },
                        },
                    },
                    "responses": {
                        "201": {"description": "Reserved", "content": _json("Reservation")},
                        "400": _ERROR,
                        "401": _ERROR,
                        "403": _ERROR,
                        "409": _ERROR,
                        "415": _ERROR,
                        "503": _BUSY,
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
                    "parameters": [
                        _CAMPAIGN,
                        {
                            "name": "seq",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "integer", "minimum": 1},
                        },
                        {"name": "ticket", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {
                            "description": "docs/audit-format.md",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "404": _ERROR,
                    },
                }
            },
            "/.well-known/fairgate/keys": {
                "get": {
                    "operationId": "keys",
                    "summary": "The public keys that sign receipts and checkpoints",
                    "responses": {
                        "200": {
                            "description": "By key id",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            "/.well-known/fairgate/checkpoint/{campaign}": {
                "get": {
                    "operationId": "checkpointNote",
                    "summary": "The latest checkpoint as a C2SP signed note, with the "
                    "witnesses' cosignatures so far (docs/audit-format.md)",
                    "parameters": [
                        _CAMPAIGN,
                        {"name": "size", "in": "query", "schema": {"type": "integer"}},
                    ],
                    "responses": {
                        "200": {
                            "description": "Headers Fairgate-Cosignatures, "
                            "Fairgate-Witness-Quorum, Fairgate-Published, "
                            "Fairgate-Witnessed-Size",
                            "content": {"text/plain": {}},
                        },
                        "400": _ERROR,
                        "404": _ERROR,
                    },
                }
            },
            "/.well-known/fairgate/consistency/{campaign}": {
                "get": {
                    "operationId": "consistencyProof",
                    "summary": "RFC 6962 consistency proof, a base64 hash a line",
                    "parameters": [
                        _CAMPAIGN,
                        {
                            "name": "old",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "integer", "minimum": 0},
                        },
                        {
                            "name": "new",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "integer", "minimum": 0},
                        },
                    ],
                    "responses": {
                        "200": {"description": "The proof", "content": {"text/plain": {}}},
                        "400": _ERROR,
                        "404": _ERROR,
                    },
                }
            },
            "/.well-known/fairgate/cosign/{campaign}": {
                "post": {
                    "operationId": "cosign",
                    "summary": "A witness hands in its cosignature: the served note with "
                    "its tlog-cosignature line(s) appended",
                    "parameters": [_CAMPAIGN],
                    "requestBody": {"content": {"text/plain": {}}},
                    "responses": {
                        "200": {
                            "description": "Who cosigned, K of N, the published size",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "400": _ERROR,
                        "403": _ERROR,
                        "404": _ERROR,
                        "409": _ERROR,
                        "413": _ERROR,
                    },
                }
            },
            "/.well-known/fairgate/witnessed/{campaign}": {
                "get": {
                    "operationId": "witnessed",
                    "summary": "The witnesses, who cosigned the latest checkpoint, K of N, "
                    "the largest published size",
                    "parameters": [_CAMPAIGN],
                    "responses": {
                        "200": {
                            "description": "JSON",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "404": _ERROR,
                    },
                }
            },
            "/q/{campaign}": {
                "get": {
                    "operationId": "page",
                    "summary": "The waiting page (HTML) for browsers",
                    "parameters": [
                        _CAMPAIGN,
                        {"name": "lang", "in": "query", "schema": {"enum": ["ko", "en"]}},
                        {
                            "name": "return",
                            "in": "query",
                            "description": "A same-site path to go to once admitted",
                            "schema": {"type": "string"},
                        },
                        {"name": "ticket", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {"description": "The page", "content": {"text/html": {}}},
                        "303": {"description": "Admitted: to the target, pass cookie set"},
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "JoinAnswer": {
                    "type": "object",
                    "required": ["campaign", "ticket", "seq", "created", "state"],
                    "properties": {
                        **_VIEW_PROPERTIES,
                        "ticket": {"type": "string", "description": "Keep it; poll with it"},
                        "created": {"type": "boolean"},
                        "receipt": {"type": ["object", "null"]},
                    },
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
                        "pass": {
                            "type": "string",
                            "description": "When admitted: send as X-Gate-Pass",
                        },
                        "pass_expires_at": {"type": "integer", "description": "Unix seconds"},
                        "not_before": {
                            "type": "integer",
                            "description": "Paced arrival: the pass (given already, state "
                            "still waiting) is valid from this Redis time, unix microseconds",
                        },
                        "retry_after_ms": {
                            "type": "integer",
                            "description": "Paced arrival: come back (or go on) after this",
                        },
                    },
                },
                "Claim": {
                    "type": "object",
                    "required": ["amount"],
                    "properties": {
                        "amount": {"type": "string", "description": "Decimal, smallest unit"},
                        "idempotency_key": {"type": "string"},
                    },
                },
                "Reservation": {
                    "type": "object",
                    "properties": {
                        "campaign": {"type": "string"},
                        "reservation": {"type": "string"},
                        "amount": {"type": "string"},
                        "unit": {"type": "string"},
                        "expires_at": {"type": "number"},
                        "partial": {"type": "boolean"},
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        }
                    },
                },
            },
            "responses": {
                "Error": {"description": "Refused", "content": _json("Error")},
                "Busy": {
                    "description": "The gate cannot reach its state: retry after Retry-After",
                    "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                    "content": _json("Error"),
                },
            },
        },
    }
