"""The audit test vectors (tests/vectors/, docs/audit-format.md "Test vectors"): the
project's own `gate audit verify` must reach every verdict of the manifest, as an
independent verifier must.

Each vector is an export (with the published keys, and the checkpoints or receipts the
auditor holds where it needs them) and its verdict: OK, or a failure of a kind that names
an entry, a range of entries, a checkpoint, a receipt or a held checkpoint file. The files
are written once by tests/vectors/make_vectors.py and committed.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tests.helpers import Result, gate_cli

VECTORS = Path(__file__).parent / "vectors"
ARGUMENT_FILES = ("--keys", "--checkpoint", "--receipt")


def manifest() -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = json.loads((VECTORS / "manifest.json").read_text())["vectors"]
    return vectors


async def run_vector(vector: dict[str, Any]) -> Result:
    """`gate audit verify FILE ARGS`, the files named by their paths in tests/vectors."""
    args: list[str] = []
    for before, word in zip(["", *vector["args"]], vector["args"], strict=False):
        args.append(str(VECTORS / word) if before in ARGUMENT_FILES else word)
    return await gate_cli("audit", "verify", str(VECTORS / vector["file"]), *args)


def where_named(out: str) -> tuple[list[str], str]:
    """The places a FAILED line names (`entry 8`, `checkpoint #2`, ...) and its message."""
    line = next(text for text in out.splitlines() if text.startswith("FAILED "))
    where, _, message = line.removeprefix("FAILED ").partition(": ")
    return where.split(", "), message


def check_verdict(vector: dict[str, Any], result: Result) -> list[str]:
    """What differs from the manifest's verdict (empty: the verdict is reached)."""
    expect, name = vector["expect"], vector["name"]
    if "Traceback" in result.err:
        return [f"{name}: a traceback: {result.err[-500:]}"]
    if expect["ok"]:
        wrong = [] if result.code == 0 else [f"{name}: exit {result.code}: {result.out}"]
        if result.code == 0 and f"entries: {expect['entries']} " not in result.out:
            wrong.append(f"{name}: not {expect['entries']} entries: {result.out}")
        return wrong
    if result.code != 1 or "FAILED " not in result.out:
        return [f"{name}: exit {result.code}, expected 1 (FAILED): {result.out}{result.err}"]
    where, message = where_named(result.out)
    wanted = []
    if expect["index"] is not None:
        wanted.append(f"entry {expect['index']}")
    if expect["entries"] is not None:
        wanted.append(f"entries {expect['entries'][0]}..{expect['entries'][1]}")
    if expect["checkpoint"] is not None:
        wanted.append(f"checkpoint #{expect['checkpoint']}")
    if expect["receipt"] is not None:
        wanted.append(f"receipt {VECTORS / expect['receipt']}")
    if expect["held"] is not None:
        wanted.append(f"held checkpoint {VECTORS / expect['held']}")
    wrong = [f"{name}: does not name {w}: {where}" for w in wanted if w not in where]
    extra = [w for w in where if w not in wanted and not w.startswith("line ")]
    if extra:
        wrong.append(f"{name}: names {extra} too, expected {wanted} (and a line)")
    if expect["says"] not in message:
        wrong.append(f"{name}: does not say {expect['says']!r}: {message}")
    return wrong


async def test_the_verifier_reaches_every_vectors_verdict() -> None:
    vectors = manifest()
    names = {vector["name"] for vector in vectors}
    # the cases docs/audit-format.md lists, each present
    assert {
        "clean",
        "unsealed-tail",
        "unsealed-tail-allowed",
        "swapped-pair",
        "truncation",
        "equivocation",
        "time-travel",
        "early-expiry",
        "claim-without-pass",
        "bad-signature",
        "wrong-key-id",
        "batch-signature",
        "seal-delay",
    } <= names
    limit = asyncio.Semaphore(4)

    async def one(vector: dict[str, Any]) -> Result:
        async with limit:
            return await run_vector(vector)

    results = await asyncio.gather(*(one(vector) for vector in vectors))
    wrong = [
        w
        for vector, result in zip(vectors, results, strict=True)
        for w in check_verdict(vector, result)
    ]
    assert not wrong, "\n".join(wrong)
    verdicts = {v["name"]: v["expect"]["kind"] if not v["expect"]["ok"] else "OK" for v in vectors}
    print(json.dumps(verdicts, indent=1))
    by_name = dict(zip([v["name"] for v in vectors], results, strict=True))
    first, last = next(v for v in vectors if v["name"] == "unsealed-tail")["expect"]["entries"]
    assert f"unsealed: entries {first}..{last} NOT verified" in by_name["unsealed-tail-allowed"].out


def test_a_wrong_verdict_is_noticed() -> None:
    """The checks above can fail: a verifier that said OK, named another entry, or another
    place, is reported."""
    vector = next(v for v in manifest() if v["name"] == "time-travel")
    index = vector["expect"]["index"]
    said_ok = Result(0, "campaign vectors: OK\n", "")
    other_entry = Result(
        1, f"FAILED entry {index + 1}, line {index + 2}: {vector['expect']['says']}\n", ""
    )
    no_reason = Result(1, f"FAILED entry {index}, line {index + 1}: something else\n", "")
    right = Result(1, f"FAILED entry {index}, line {index + 1}: {vector['expect']['says']}\n", "")
    assert check_verdict(vector, said_ok)
    assert check_verdict(vector, other_entry)
    assert check_verdict(vector, no_reason)
    assert not check_verdict(vector, right)
