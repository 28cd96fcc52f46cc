"""Who the customer is: the only two ways the gate learns it.

- ``identity = "header"``: the bank's reverse proxy authenticates the customer and names
  them in ``customer_header``. The header counts only from a trusted peer (a CIDR of
  ``trusted_proxies``) and, when ``proxy_secret`` is set, with that secret in
  ``proxy_secret_header``; from anyone else it is refused, never quietly ignored, so a
  misconfigured proxy shows up at once instead of letting clients name any customer.
- ``identity = "jwt"``: the bank's login issued a signed token (an OIDC id token or a
  session JWT). It is checked against the JWKS (a file or an http(s) URL), the issuer, the
  audience and its expiry; the customer id is the claim ``jwt_claim``. A token whose
  ``kid`` the JWKS lacks reloads it once (key rotation), at most every
  ``jwt_reload_interval_ms``, so random kids cannot turn the gate into a JWKS flooder.

The raw customer id never leaves the gate: tokens, receipts and logs carry a keyed digest.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from multidict import CIMultiDict, CIMultiDictProxy

from gate.config import Config
from gate.errors import BadRequest, Unauthorized, Unavailable

log = logging.getLogger("gate.identity")

MAX_CUSTOMER_ID = 256
MAX_JWT_CHARS = 8000  # an id token is 1-2 KB; aiohttp refuses header lines over 8190
MAX_JWKS_BYTES = 1 << 20
JWKS_MAX_AGE_S = 300.0  # a JWKS URL is fetched again this often (keys removed upstream)
JWKS_FETCH_TIMEOUT_S = 5.0
LEEWAY_S = 30  # clock skew allowed on exp / nbf / iat
VERIFIED_FOR_S = 60.0  # a verified token is believed again without a check this long
VERIFIED_CACHE_SIZE = 100_000  # tokens remembered (by sha256), about 20 MB
PEER_CACHE_SIZE = 4096  # peer addresses whose trust is remembered (HeaderIdentity)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def valid_customer_id(value: str, where: str) -> str:
    """A customer id as the gate keeps it (stripped, printable, bounded)."""
    value = value.strip()
    if not value:
        raise Unauthorized(f"{where} is empty", code="no_identity")
    if len(value) > MAX_CUSTOMER_ID or not value.isprintable():
        raise BadRequest(f"{where} is not a valid customer id", code="bad_customer")
    return value


@dataclass(frozen=True)
class Credentials:
    """What a request shows about its customer, independent of the web framework."""

    peer: str | None
    headers: CIMultiDictProxy[str] | CIMultiDict[str]  # every value of a repeated header
    cookies: Mapping[str, str]


class HeaderIdentity:
    """The customer header, believed only from a trusted proxy."""

    def __init__(self, config: Config):
        self.header = config.customer_header
        self.networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(cidr, strict=False) for cidr in config.trusted_proxies
        )
        self.secret = config.proxy_secret.encode()
        self.secret_header = config.proxy_secret_header
        self._peers: dict[str, bool] = {}

    def _in_networks(self, peer: str) -> bool:
        """The peer address is in one of the trusted networks."""
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def trusted(self, credentials: Credentials) -> bool:
        if self.networks:
            # The proxies are a few peers, each sending many requests: their verdict is
            # remembered per peer address (the networks never change in this process).
            peer = credentials.peer or ""
            inside = self._peers.get(peer)
            if inside is None:
                inside = self._in_networks(peer)
                if len(self._peers) >= PEER_CACHE_SIZE:
                    self._peers.clear()  # full: start again
                self._peers[peer] = inside
            if not inside:
                return False
        if self.secret:
            presented = credentials.headers.get(self.secret_header, "")
            return hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), self.secret)
        return True

    def customer(self, credentials: Credentials) -> str | None:
        values = credentials.headers.getall(self.header, [])
        if not values:
            return None
        trusted = self.trusted(credentials)
        if not trusted or len(values) > 1:
            # The peer, never the value: the value may be someone else's customer id.
            log.warning(
                "event=untrusted_identity peer=%s header=%s trusted_peer=%s count=%d",
                credentials.peer,
                self.header,
                trusted,
                len(values),
            )
            # Twice, even from the proxy: one that appends its header after the client's
            # instead of replacing it; believing either could be believing the client.
            why = "is accepted only from the bank's proxy" if not trusted else "came twice"
            raise Unauthorized(f"the {self.header} header {why}", code="untrusted_identity")
        return valid_customer_id(values[0], f"the {self.header} header")


@dataclass
class _KeySet:
    keys: dict[str, jwt.PyJWK] = field(default_factory=dict)
    loaded_at: float = 0.0  # monotonic; 0: never


def parse_jwks(document: Any) -> dict[str, jwt.PyJWK]:
    """The signature keys of a JWKS by kid ("" for a key without one); encryption keys
    and keys of unknown types are skipped, as RFC 7517 lets a verifier do."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("a JWKS is an object with a list of keys")
    keys: dict[str, jwt.PyJWK] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if "d" in entry:  # a private key has no business in a published set
            continue
        try:
            key = jwt.PyJWK(entry)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue
        kid = entry.get("kid", "")
        keys[kid if isinstance(kid, str) else ""] = key
    return keys


class JwtIdentity:
    """A bearer token (or cookie) signed by the bank's login, checked against its JWKS."""

    def __init__(self, config: Config):
        self.source = config.jwt_jwks
        self.issuer = config.jwt_issuer
        self.audience = config.jwt_audience
        self.claim = config.jwt_claim
        self.algorithms = list(config.jwt_algorithms)
        self.cookie = config.jwt_cookie
        self.reload_interval_s = config.jwt_reload_interval_ms / 1000
        self._set = _KeySet()
        self._last_attempt = float("-inf")
        self._lock = asyncio.Lock()
        self._refresh: asyncio.Task[None] | None = None
        # sha256(token) -> (customer id, valid until: unix seconds), least recent first
        self._verified: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self.loads = 0  # successful JWKS loads (for tests and metrics)
        # The time a token's exp, nbf and iat are checked against: Redis's time as the
        # gate's cache measures it, once the gate binds it (Identity.bind_clock), so a
        # process whose wall clock lags neither accepts expired tokens nor refuses fresh
        # ones; this process's clock only until then.
        self.clock: Callable[[], float] = time.time

    async def close(self) -> None:
        if self._refresh is not None and not self._refresh.done():
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh

    def token_of(self, credentials: Credentials) -> str | None:
        authorization = credentials.headers.get("Authorization", "")
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        if self.cookie:
            return credentials.cookies.get(self.cookie) or None
        return None

    async def _read(self) -> Any:
        if self.source.startswith(("http://", "https://")):
            timeout = aiohttp.ClientTimeout(total=JWKS_FETCH_TIMEOUT_S)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(self.source, headers={"Accept": "application/json"}) as response,
            ):
                if response.status != 200:
                    raise ValueError(f"HTTP {response.status}")
                raw = await response.content.read(MAX_JWKS_BYTES + 1)
        else:
            raw = await asyncio.to_thread(Path(self.source).read_bytes)
        if len(raw) > MAX_JWKS_BYTES:
            raise ValueError("larger than 1 MiB")
        return json.loads(raw)

    async def _reload(self, why: str) -> None:
        """Load the JWKS again, unless another request just did (or tried)."""
        attempted = self._last_attempt
        async with self._lock:
            if self._last_attempt != attempted:
                return  # someone reloaded while we waited for the lock
            if time.monotonic() - self._last_attempt < self.reload_interval_s:
                return
            self._last_attempt = time.monotonic()
            try:
                keys = parse_jwks(await self._read())
            except (OSError, ValueError, aiohttp.ClientError, TimeoutError) as exc:
                # Keep the keys we have: a flaky JWKS endpoint must not log everyone out.
                log.warning("event=jwks_load_failed why=%s error=%s", why, exc.__class__.__name__)
                return
            self._set = _KeySet(keys, time.monotonic())
            self._verified.clear()  # a key may have been withdrawn
            self.loads += 1
            log.info("event=jwks_loaded why=%s keys=%d", why, len(keys))

    async def _key(self, kid: str) -> jwt.PyJWK | None:
        if not self._set.loaded_at:
            await self._reload("first_use")
            if not self._set.loaded_at:
                raise Unavailable("the bank's login keys cannot be loaded right now")
        elif time.monotonic() - self._set.loaded_at > JWKS_MAX_AGE_S and (
            self._refresh is None or self._refresh.done()
        ):
            # Keys removed upstream go away, in the background: a slow JWKS endpoint
            # must not hold up the customers whose keys we have.
            self._refresh = asyncio.create_task(self._reload("max_age"))
        key = self._set.keys.get(kid)
        if key is None and not kid and len(self._set.keys) == 1:
            key = next(iter(self._set.keys.values()))
        if key is None:
            await self._reload("unknown_kid")  # rotation; rate-limited
            key = self._set.keys.get(kid)
        return key

    async def customer(self, credentials: Credentials) -> str | None:
        token = self.token_of(credentials)
        if token is None:
            return None
        if len(token) > MAX_JWT_CHARS:
            raise Unauthorized("the identity token is too large", code="bad_identity")
        # A customer's browser sends the same token with every poll and every proxied
        # request: verify it once (0.15-0.2 ms of CPU), then answer from a bounded cache
        # until its expiry, a minute at most, or the next change of the JWKS.
        fingerprint = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        now = self.clock()
        cached = self._verified.get(fingerprint)
        if cached is not None:
            if now < cached[1]:
                self._verified.move_to_end(fingerprint)
                return cached[0]
            del self._verified[fingerprint]
        customer, expires = await self._verify(token)
        self._verified[fingerprint] = (customer, min(expires + LEEWAY_S, now + VERIFIED_FOR_S))
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return customer

    async def _verify(self, token: str) -> tuple[str, float]:
        """The customer id and the expiry (unix seconds) of a token not seen yet."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("the identity token is malformed", code="bad_identity") from None
        kid = header.get("kid", "")
        algorithm = header.get("alg")
        if not isinstance(kid, str) or algorithm not in self.algorithms:
            raise Unauthorized("the identity token's algorithm or kid", code="bad_identity")
        key = await self._key(kid)
        if key is None or key.algorithm_name != algorithm:
            raise Unauthorized("the identity token's key is unknown", code="bad_identity")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                # exp, nbf and iat are checked below, against the gate's clock
                options={
                    "require": ["exp", "iss", "aud"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError as exc:
            # The kind of failure only (bad signature, wrong issuer, ...): never the token.
            raise Unauthorized(
                f"the identity token is not valid ({exc.__class__.__name__})", code="bad_identity"
            ) from None
        self._check_times(claims)
        value = claims.get(self.claim)
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise Unauthorized(f"the identity token has no {self.claim} claim", code="bad_identity")
        customer = valid_customer_id(str(value), f"the token's {self.claim} claim")
        return customer, float(claims["exp"])

    def _check_times(self, claims: dict[str, Any]) -> None:
        """exp, nbf and iat as PyJWT checks them (LEEWAY_S either way), against
        self.clock: Redis's time once the gate is running."""
        now = self.clock()
        times: dict[str, float] = {}
        for name in ("exp", "nbf", "iat"):
            value = claims.get(name)
            if value is None and name != "exp":
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise Unauthorized(
                    f"the identity token's {name} is not a number", code="bad_identity"
                )
            times[name] = float(value)
        if times["exp"] <= now - LEEWAY_S:
            raise Unauthorized("the identity token has expired", code="bad_identity")
        if max(times.get("nbf", now), times.get("iat", now)) > now + LEEWAY_S:
            raise Unauthorized(
                "the identity token is not valid (ImmatureSignatureError)", code="bad_identity"
            )


class Identity:
    """The configured way of knowing the customer."""

    def __init__(self, config: Config):
        self.mode = config.identity
        self.header = HeaderIdentity(config)
        self.jwt = JwtIdentity(config) if config.identity == "jwt" else None
        # Where the customer id comes from, for the message of a request without one.
        self.source = (
            f"the {config.customer_header} header, set by the bank's proxy"
            if self.jwt is None
            else "a bearer token from the bank's login"
            + (f" or the {config.jwt_cookie} cookie" if config.jwt_cookie else "")
        )

    def bind_clock(self, clock: Callable[[], float]) -> None:
        """Check token times against `clock` (the gate's Redis time) from now on."""
        if self.jwt is not None:
            self.jwt.clock = clock

    async def customer(self, credentials: Credentials) -> str | None:
        """The customer id, None when the request names nobody; raises when it names
        someone in a way the gate must not believe."""
        if self.jwt is not None:
            return await self.jwt.customer(credentials)
        return self.header.customer(credentials)

    async def close(self) -> None:
        if self.jwt is not None:
            await self.jwt.close()


__all__ = ["Credentials", "Identity", "JwtIdentity", "parse_jwks", "valid_customer_id"]
