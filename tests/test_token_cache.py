"""The per-process caches of the poll's and the auth check's hot path (gate/tokens.py,
gate/identity.py) never answer what the full computation would not: a token verified
once is still refused for the wrong kind, or once its key is no longer the one loaded;
a cached customer digest is the one for that key, campaign and customer only; a peer's
remembered trust is the one its address earns."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

import pytest
from multidict import CIMultiDict

from gate.config import Config
from gate.identity import Credentials, HeaderIdentity
from gate.signing import SigningKeys, generate_keys_document, parse_keys
from gate.tokens import PASS, PREQUEUE_TICKET, TICKET, TokenError, TokenSigner, customer_digest
from tests.helpers import admitted_pass, as_customer, create_campaign, join


@pytest.fixture
def keys() -> SigningKeys:
    return parse_keys(generate_keys_document(digest_key=True), "test")


def _fresh_digest(keys: SigningKeys, campaign: str, customer: str) -> bytes:
    message = campaign.encode() + b"\x00" + customer.encode()
    key = keys.digest_key_for(None)
    return hmac.new(key, message, hashlib.sha256).digest()[:16]


def test_a_verified_token_is_still_refused_for_the_wrong_kind(keys: SigningKeys) -> None:
    signer = TokenSigner(keys)
    digest = customer_digest(keys, "c1", "alice")
    ticket = signer.issue(TICKET, "c1", 1, digest)
    assert signer.verify(ticket, TICKET).seq == 1  # verified, remembered
    with pytest.raises(TokenError, match="wrong kind"):
        signer.verify(ticket, PASS)
    assert signer.verify(ticket, PASS, TICKET).kind == TICKET
    pass_token = signer.issue(PASS, "c1", 1, digest, exp=2_000_000_000)
    assert signer.verify(pass_token, PASS).kind == PASS
    with pytest.raises(TokenError, match="wrong kind"):
        signer.verify(pass_token, TICKET, PREQUEUE_TICKET)


def test_a_verified_token_is_refused_once_its_key_is_replaced(keys: SigningKeys) -> None:
    signer = TokenSigner(keys)
    ticket = signer.issue(TICKET, "c1", 1, customer_digest(keys, "c1", "alice"))
    assert signer.verify(ticket, TICKET).seq == 1
    kid = keys.hmac_current
    keys.hmac_keys[kid] = secrets.token_bytes(32)  # the same kid, another secret
    with pytest.raises(TokenError, match="bad token signature"):
        signer.verify(ticket, TICKET)
    del keys.hmac_keys[kid]
    with pytest.raises(TokenError, match="unknown key"):
        signer.verify(ticket, TICKET)


def test_a_refused_token_stays_refused(keys: SigningKeys) -> None:
    signer = TokenSigner(keys)
    ticket = signer.issue(TICKET, "c1", 1, customer_digest(keys, "c1", "alice"))
    payload, mac = ticket.split(".")
    forged = f"{payload}.{mac[:-2]}{'AA' if mac[-2:] != 'AA' else 'BA'}"
    for _ in range(2):
        with pytest.raises(TokenError):
            signer.verify(forged, TICKET)
    assert signer.verify(ticket, TICKET).seq == 1


def test_cached_digests_are_per_key_campaign_and_customer(keys: SigningKeys) -> None:
    other = parse_keys(generate_keys_document(digest_key=True), "other")
    for _ in range(2):  # the second round is answered from the cache
        for campaign, customer in (("c1", "alice"), ("c1", "bob"), ("c2", "alice")):
            assert customer_digest(keys, campaign, customer) == _fresh_digest(
                keys, campaign, customer
            )
            assert customer_digest(other, campaign, customer) == _fresh_digest(
                other, campaign, customer
            )
    assert customer_digest(keys, "c1", "alice") != customer_digest(other, "c1", "alice")
    assert customer_digest(keys, "c1", "alice") != customer_digest(keys, "c1", "bob")
    assert customer_digest(keys, "c1", "alice") != customer_digest(keys, "c2", "alice")


def test_the_caches_stay_bounded_and_right_when_full(
    keys: SigningKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gate.tokens

    monkeypatch.setattr(gate.tokens, "VERIFIED_CACHE_SIZE", 4)
    monkeypatch.setattr(gate.tokens, "DIGEST_CACHE_SIZE", 4)
    signer = TokenSigner(keys)
    customers = [f"customer-{n}" for n in range(11)]
    for _ in range(2):
        for seq, customer in enumerate(customers, start=1):
            digest = customer_digest(keys, "c1", customer)
            assert digest == _fresh_digest(keys, "c1", customer)
            token = signer.verify(signer.issue(TICKET, "c1", seq, digest), TICKET)
            assert (token.seq, token.digest) == (seq, digest)
            assert len(gate.tokens._digests) <= 4
            assert len(signer._verified) <= 4


def test_remembered_peer_trust_is_per_address() -> None:
    identity = HeaderIdentity(Config(trusted_proxies=("10.0.0.0/8",)))

    def ask(peer: str) -> bool:
        headers: CIMultiDict[str] = CIMultiDict({identity.header: "alice"})
        return identity.trusted(Credentials(peer, headers, {}))

    for _ in range(2):  # the second round is answered from the cache
        assert ask("10.1.2.3")
        assert not ask("192.168.1.1")
        assert ask("::ffff:10.1.2.3")
        assert not ask("not-an-address")
        assert not ask("")


async def _code(response: Any) -> tuple[int, str]:
    body = await response.json()
    return response.status, body.get("error", {}).get("code", "ok")


async def test_warm_caches_still_refuse_another_customer_campaign_or_kind(
    public: Any, admin: Any
) -> None:
    """The poll and the auth check answered from warm caches (the same ticket and pass,
    the same customer, several times) still refuse them to anyone else, for another
    campaign, and as the other kind of token."""
    await create_campaign(admin)
    await create_campaign(admin, "c2")
    ticket = (await join(public, "c1", "alice"))["ticket"]
    pass_token = await admitted_pass(public, "c1", "alice")
    public.session.cookie_jar.clear()

    async def poll(campaign: str, customer: str, text: str = ticket) -> tuple[int, str]:
        r = await public.get(
            f"/q/{campaign}/status", params={"ticket": text}, headers=as_customer(customer)
        )
        return await _code(r)

    async def check(campaign: str, customer: str, text: str = pass_token) -> tuple[int, str]:
        headers = as_customer(customer, **{"X-Gate-Pass": text, "X-Gate-Campaign": campaign})
        return await _code(await public.get("/gate/auth", headers=headers))

    for _ in range(3):
        assert await poll("c1", "alice") == (200, "ok")
        assert await check("c1", "alice") == (200, "ok")
    assert await poll("c1", "mallory") == (403, "wrong_customer")
    assert await poll("c2", "alice") == (403, "wrong_campaign")
    assert await poll("c1", "alice", pass_token) == (403, "bad_ticket")
    assert await check("c1", "mallory") == (403, "wrong_customer")
    assert await check("c2", "alice") == (403, "wrong_campaign")
    assert await check("c1", "alice", ticket) == (401, "bad_pass")
    assert await poll("c1", "alice") == (200, "ok")
    assert await check("c1", "alice") == (200, "ok")
