"""Configuration: one frozen dataclass from a TOML file plus ``GATE_*`` environment variables.

The environment wins over the file. Every value is validated once, at start, and a bad
one stops start-up with a message that names the field.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gate.errors import ConfigError

Tokens = tuple[tuple[str, str], ...]
# A list setting: a comma-separated string (GATE_* variables) or a TOML list of strings.
Items = tuple[str, ...]
_HEADER_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_COOKIE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# deploy/systemd/fairgate.env ships "CHANGE-ME-…" tokens: a gate started with them would
# take a bearer token that anyone who has read the repository knows.
_PLACEHOLDER_RE = re.compile(r"change[-_]?me", re.IGNORECASE)
# Asymmetric algorithms only: a shared-secret (HS*) token could be minted by anyone who
# can read the JWKS, and "none" is no signature at all.
JWT_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


@dataclass(frozen=True)
class Config:
    redis_url: str = ""
    data_dir: Path = Path("./.gate-data")
    host: str = "127.0.0.1"
    port: int = 8080
    admin_host: str = "127.0.0.1"
    admin_port: int = 8081
    admin_tokens: Tokens = ()
    # The core system's confirm/release callbacks: their own listener, never the public one.
    core_host: str = "127.0.0.1"
    core_port: int = 8082
    core_tokens: Tokens = ()
    # Who the customer is: "header" (set by a trusted proxy) or "jwt" (the bank's login).
    identity: str = "header"
    customer_header: str = "X-Customer-Id"
    # The customer header counts only from these peers (CIDRs; empty: any peer, which
    # needs proxy_secret) and, when proxy_secret is set, with that secret in
    # proxy_secret_header (compared in constant time).
    trusted_proxies: Items = ("127.0.0.1/32", "::1/128")
    proxy_secret: str = ""
    proxy_secret_header: str = "X-Gate-Proxy-Secret"
    # identity = "jwt": a token signed by a key of the JWKS (a file or an http(s) URL),
    # from this issuer for this audience; the customer id is the claim jwt_claim. The
    # token comes as `Authorization: Bearer`, or in the cookie jwt_cookie when set.
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_jwks: str = ""
    jwt_claim: str = "sub"
    jwt_algorithms: Items = ("RS256", "ES256", "EdDSA")
    jwt_cookie: str = ""
    # A token with a kid the JWKS lacks reloads it (key rotation), at most this often.
    jwt_reload_interval_ms: int = 10000
    # Origins, besides the request's own Host, whose pages may POST to the public
    # listener with cookies (e.g. "https://www.bank.example").
    public_origins: Items = ()
    signing_keys: Path | None = None
    # The customer-digest keys, a file apart from the signing keys (gate/signing.py);
    # default: data_dir/digest-keys.json, created when absent if signing_keys is not
    # set either; with signing_keys set it must be set too (unless the signing key file
    # still holds a digest key, the form of before): gate/service.load_keys.
    digest_keys: Path | None = None
    # Where a campaign's own waiting-page template (spec page.template) is looked up.
    page_templates_dir: Path | None = None
    workers: int = 1
    admin_url: str = "http://127.0.0.1:8081"
    admin_token: str = ""
    # Durability: with an external Redis that runs `appendfsync everysec`, wait for this
    # many replicas to acknowledge each write (join, pass, claim, confirm, admin change;
    # replays too) before answering it (gate/room/durability.py).
    redis_wait_replicas: int = 0
    redis_wait_timeout_ms: int = 200
    # WAITAOF instead of WAIT (Redis 7.2+; else WAIT, logged once at start): the primary's
    # AOF and redis_wait_replicas replicas' AOFs have the write fsynced.
    redis_wait_aof: bool = False
    # Fewer acknowledgements than wanted within redis_wait_timeout_ms: "hold" answers 503
    # + Retry-After (the write stays, unacknowledged; a retry waits again), "continue"
    # answers, counts fairgate_durability_degraded_total and logs a warning.
    redis_replica_loss: str = "hold"
    # Refuse traffic (readyz 503) when Redis runs with AOF off, or appendfsync weaker than
    # always and no replica to wait for. An evicting maxmemory-policy is refused always.
    redis_check_persistence: bool = True
    redis_timeout_ms: int = 500
    # The embedded Redis (no redis_url): unanswered PINGs for this long (a process that
    # exists but is hung, e.g. SIGSTOPped) and the gate kills it and restarts it on its AOF.
    embedded_redis_hang_ms: int = 10000
    admit_interval_ms: int = 50
    refresh_interval_ms: int = 10
    # A cache older than this no longer proves that a pass was not revoked: fail closed.
    stale_after_ms: int = 1000
    join_batch_window_ms: float = 1.0
    join_batch_max: int = 500
    max_body_bytes: int = 16384
    # Every listener: a request head must be complete this long after its first byte, a
    # body read this long after the handler asks for it (408), and an idle keep-alive
    # connection is closed after keepalive_timeout_s.
    header_timeout_ms: int = 10000
    body_timeout_ms: int = 10000
    keepalive_timeout_s: int = 15
    # Requests in flight per listener per process on the public and core listeners; one
    # more is answered 503 with Retry-After at once (0: no bound). The admin listener has
    # no bound, so that operators can pause or close under any load.
    max_concurrent_requests: int = 1000
    # While this process's event loop runs more than this late, new joins, status polls
    # and waiting pages are answered 503 + Retry-After at once (gate/overload.py); 0: off.
    # Off by default (a laptop or a shared test machine lags for reasons of its own); the
    # shipped production settings (deploy/) turn it on at 20 ms.
    shed_lag_ms: int = 0
    cookie_secure: bool = True
    log_level: str = "INFO"
    # One event per line: "logfmt" (key=value, quoted where needed) or "json".
    log_format: str = "logfmt"
    # Metrics recording (gate/metrics.py); false: /metrics shows only what is read at
    # scrape time (campaign state from Redis), nothing is counted on the request path.
    metrics: bool = True
    # The public listener's fast path for a waiting customer's poll, a pass check of a
    # customer already let in and an API client's join (gate/http/fast.py): the same
    # answers for less CPU. false: every request through the application's router and
    # middleware.
    http_fast_path: bool = True
    # The audit log's sealer (gate/audit/sealer.py): a checkpoint at most this often while
    # there are new entries; the lease one process holds per campaign to seal it; how
    # many sealed entries stay in Redis before older ones move to segment files (0: all).
    seal_interval_ms: int = 1000
    seal_lease_ms: int = 3000
    # Every entry is sealed within this many ms of its time (docs/audit-format.md, "Seal
    # bound"): recorded in each new campaign's spec, where `gate audit verify` checks it;
    # the sealer seals at least twice per bound, and records a seal-gap entry when it finds
    # an entry older than the bound unsealed. 0: no bound (none recorded, none checked).
    seal_bound_ms: int = 1000
    audit_keep_in_redis: int = 100000
    # Memory each process may give to recently used join batches, to answer retried
    # joins and receipt reads without reading the log (least recently used out first).
    receipt_cache_bytes: int = 16 * 1024 * 1024
    # Witnessed checkpoints (docs/audit-format.md, `gate witness`): a checkpoint note's
    # origin is "<checkpoint_origin>/<campaign>" (empty: "fairgate.<host of the first
    # public origin>", else "fairgate.local"); the witnesses whose cosignatures the gate
    # takes (C2SP vkeys, type 0x04); how many of them make a checkpoint published.
    checkpoint_origin: str = ""
    witness_keys: Items = ()
    witness_quorum: int = 1

    @property
    def keys_path(self) -> Path:
        return self.signing_keys if self.signing_keys is not None else self.data_dir / "keys.json"

    @property
    def digest_keys_path(self) -> Path:
        if self.digest_keys is not None:
            return self.digest_keys
        return self.data_dir / "digest-keys.json"

    @property
    def origin_prefix(self) -> str:
        """What a campaign's checkpoint notes name as their log: origin_prefix/campaign."""
        if self.checkpoint_origin:
            return self.checkpoint_origin
        if self.public_origins:
            return f"fairgate.{urlsplit(self.public_origins[0]).hostname}"
        return "fairgate.local"


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _parse_tokens(name: str, raw: Any) -> Tokens:
    """``name:token`` pairs (or bare tokens, named by position), comma separated or a list."""
    items: list[str]
    if isinstance(raw, str):
        items = [part.strip() for part in raw.split(",") if part.strip()]
    elif isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        items = [x.strip() for x in raw if x.strip()]
    else:
        raise ConfigError(f"{name}: expected a comma-separated string or a list of strings")
    pairs: list[tuple[str, str]] = []
    for index, item in enumerate(items):
        label, sep, token = item.partition(":")
        if not sep:
            label, token = f"token{index + 1}", item
        if not label or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", label):
            raise ConfigError(f"{name}: bad token name {label!r}")
        if len(token) < 16:
            raise ConfigError(f"{name}: token {label!r} is shorter than 16 characters")
        if _PLACEHOLDER_RE.search(token):
            raise ConfigError(
                f"{name}: token {label!r} is a placeholder: set a random secret "
                "(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        pairs.append((label, token))
    return tuple(pairs)


def _parse_items(name: str, raw: Any) -> Items:
    if isinstance(raw, str):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        return tuple(x.strip() for x in raw if x.strip())
    raise ConfigError(f"{name}: expected a comma-separated string or a list of strings")


def _origin_ok(origin: str) -> bool:
    parts = urlsplit(origin)
    try:
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and not parts.path
        and not parts.query
        and not parts.fragment
        and not parts.username
        and origin == origin.lower()
    )


def _validate_identity(cfg: Config) -> None:
    if cfg.identity not in ("header", "jwt"):
        raise ConfigError(f"identity: {cfg.identity!r} must be 'header' or 'jwt'")
    for network in cfg.trusted_proxies:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(f"trusted_proxies: {network!r} is not a CIDR") from None
    if cfg.proxy_secret and len(cfg.proxy_secret) < 16:
        raise ConfigError("proxy_secret: shorter than 16 characters")
    if not _HEADER_RE.fullmatch(cfg.proxy_secret_header):
        raise ConfigError(f"proxy_secret_header: {cfg.proxy_secret_header!r} is not a header name")
    if cfg.identity == "header" and not cfg.trusted_proxies and not cfg.proxy_secret:
        raise ConfigError(
            "trusted_proxies: empty, and no proxy_secret: any client could name any customer"
        )
    for origin in cfg.public_origins:
        if not _origin_ok(origin):
            raise ConfigError(
                f"public_origins: {origin!r} is not an origin (lower-case scheme://host[:port])"
            )
    unknown = [alg for alg in cfg.jwt_algorithms if alg not in JWT_ALGORITHMS]
    if unknown or not cfg.jwt_algorithms:
        raise ConfigError(
            f"jwt_algorithms: {', '.join(unknown) or 'none given'}; "
            f"choose from {', '.join(sorted(JWT_ALGORITHMS))}"
        )
    if cfg.jwt_cookie and not _COOKIE_RE.fullmatch(cfg.jwt_cookie):
        raise ConfigError(f"jwt_cookie: {cfg.jwt_cookie!r} is not a cookie name")
    if not cfg.jwt_claim or len(cfg.jwt_claim) > 128 or not cfg.jwt_claim.isprintable():
        raise ConfigError("jwt_claim: 1 to 128 printable characters")
    if cfg.jwt_reload_interval_ms < 100 or cfg.jwt_reload_interval_ms > 3_600_000:
        raise ConfigError("jwt_reload_interval_ms: must be between 100 and 3600000")
    if cfg.identity != "jwt":
        return
    for name in ("jwt_issuer", "jwt_audience", "jwt_jwks"):
        if not getattr(cfg, name):
            raise ConfigError(f"{name}: required when identity = 'jwt'")
    if cfg.jwt_jwks.startswith(("http://", "https://")):
        if not urlsplit(cfg.jwt_jwks).hostname:
            raise ConfigError(f"jwt_jwks: {cfg.jwt_jwks!r} is not a URL")
    elif not Path(cfg.jwt_jwks).is_file():
        raise ConfigError(f"jwt_jwks: {cfg.jwt_jwks!r} is neither an http(s) URL nor a file")


def _validate_witnesses(cfg: Config) -> None:
    from gate.audit.note import ED25519_COSIGNATURE, NoteError, parse_vkey, valid_key_name

    prefix = cfg.checkpoint_origin
    if prefix and (not valid_key_name(prefix) or len(prefix) > 200):
        raise ConfigError(
            f"checkpoint_origin: {prefix[:80]!r} must be 1 to 200 printable characters, "
            "no spaces, no '+'"
        )
    names: set[str] = set()
    for text in cfg.witness_keys:
        try:
            verifier = parse_vkey(text)
        except NoteError as exc:
            raise ConfigError(f"witness_keys: {exc}") from None
        if verifier.signature_type != ED25519_COSIGNATURE:
            raise ConfigError(f"witness_keys: {verifier.name}: not a cosignature key (type 0x04)")
        if verifier.name in names:
            raise ConfigError(f"witness_keys: {verifier.name} is listed twice")
        names.add(verifier.name)
    if cfg.witness_keys and not 1 <= cfg.witness_quorum <= len(cfg.witness_keys):
        raise ConfigError(
            f"witness_quorum: must be between 1 and the {len(cfg.witness_keys)} witness_keys"
        )


def _validate_durability(cfg: Config) -> None:
    if cfg.redis_replica_loss not in ("hold", "continue"):
        raise ConfigError(
            f"redis_replica_loss: {cfg.redis_replica_loss!r} must be 'hold' or 'continue'"
        )
    if cfg.redis_wait_replicas > 64:
        raise ConfigError("redis_wait_replicas: must be between 0 and 64")
    # WAIT 0 would block forever; a wait longer than the socket's timeout would end as a
    # dropped connection instead of a count.
    waits = cfg.redis_wait_replicas > 0 or cfg.redis_wait_aof
    if waits and not 1 <= cfg.redis_wait_timeout_ms < cfg.redis_timeout_ms:
        raise ConfigError(
            f"redis_wait_timeout_ms: must be between 1 and redis_timeout_ms - 1 "
            f"({cfg.redis_timeout_ms - 1})"
        )
    if (
        cfg.redis_url.startswith(("redis+sentinel://", "redis+cluster://"))
        and cfg.redis_wait_replicas == 0
        and cfg.redis_replica_loss != "continue"
    ):
        raise ConfigError(
            "redis_wait_replicas: 0 with a redis+sentinel:// or redis+cluster:// URL: a "
            "failover promotes a "
            "replica that may lack acknowledged writes; set redis_wait_replicas = 1 or more "
            '(or redis_replica_loss = "continue" to accept that loss)'
        )


def _coerce(name: str, raw: Any) -> Any:
    f = _FIELDS[name]
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind == "int":
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError  # int() would quietly turn 8080.5 into 8080
            value = int(raw)
            if value < 0:
                raise ValueError
            return value
        if kind == "float":
            if isinstance(raw, bool):
                raise ValueError
            fvalue = float(raw)
            if not fvalue >= 0:
                raise ValueError
            return fvalue
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind == "Path":
            return Path(str(raw))
        if kind == "Path | None":
            return Path(str(raw)) if str(raw) else None
        if kind == "Tokens":
            return _parse_tokens(name, raw)
        if kind == "Items":
            return _parse_items(name, raw)
        if not isinstance(raw, str):
            raise ValueError
        return raw
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: invalid value {raw!r} (expected {kind})") from None


def _validate(cfg: Config) -> None:
    for name in ("port", "admin_port", "core_port"):
        value = getattr(cfg, name)
        if not 0 <= value <= 65535:
            raise ConfigError(f"{name}: {value} is not a TCP port")
    if cfg.workers < 1 or cfg.workers > 256:
        raise ConfigError(f"workers: {cfg.workers} must be between 1 and 256")
    if not _HEADER_RE.fullmatch(cfg.customer_header):
        raise ConfigError(f"customer_header: {cfg.customer_header!r} is not a header name")
    if cfg.redis_url and not re.match(
        r"^(redis|rediss|redis\+sentinel|redis\+cluster|unix)://", cfg.redis_url
    ):
        raise ConfigError(
            "redis_url: must start with redis://, rediss://, redis+sentinel://, "
            "redis+cluster:// or unix://"
        )
    if cfg.redis_url.startswith("redis+cluster://") and not re.fullmatch(
        r"redis\+cluster://([^@/]*@)?[^@/,]+:\d+(,[^@/,]+:\d+)*/?", cfg.redis_url
    ):
        raise ConfigError(
            "redis_url: a cluster URL lists its startup nodes: "
            "redis+cluster://[:password@]host:port[,host:port...]"
        )
    if cfg.admit_interval_ms < 5 or cfg.admit_interval_ms > 5000:
        raise ConfigError("admit_interval_ms: must be between 5 and 5000")
    if cfg.refresh_interval_ms < 1 or cfg.refresh_interval_ms > 1000:
        raise ConfigError("refresh_interval_ms: must be between 1 and 1000")
    if cfg.stale_after_ms < 100 or cfg.stale_after_ms > 60000:
        raise ConfigError("stale_after_ms: must be between 100 and 60000")
    if cfg.join_batch_max < 1 or cfg.join_batch_max > 5000:
        raise ConfigError("join_batch_max: must be between 1 and 5000")
    if cfg.join_batch_window_ms > 50:
        raise ConfigError("join_batch_window_ms: must be at most 50")
    if cfg.max_body_bytes < 256 or cfg.max_body_bytes > 1 << 20:
        raise ConfigError("max_body_bytes: must be between 256 and 1048576")
    for name in ("header_timeout_ms", "body_timeout_ms"):
        if not 100 <= getattr(cfg, name) <= 600000:
            raise ConfigError(f"{name}: must be between 100 and 600000")
    if cfg.keepalive_timeout_s < 1 or cfg.keepalive_timeout_s > 3600:
        raise ConfigError("keepalive_timeout_s: must be between 1 and 3600")
    if not 0 <= cfg.shed_lag_ms <= 60_000:
        raise ConfigError("shed_lag_ms: must be 0 (off) to 60000")
    if cfg.max_concurrent_requests > 1_000_000:
        raise ConfigError("max_concurrent_requests: must be 0 (no bound) or at most 1000000")
    if cfg.redis_timeout_ms < 10:
        raise ConfigError("redis_timeout_ms: must be at least 10")
    _validate_durability(cfg)
    if cfg.embedded_redis_hang_ms < 500 or cfg.embedded_redis_hang_ms > 600000:
        raise ConfigError("embedded_redis_hang_ms: must be between 500 and 600000")
    if cfg.seal_interval_ms < 10 or cfg.seal_interval_ms > 600000:
        raise ConfigError("seal_interval_ms: must be between 10 and 600000")
    if cfg.seal_lease_ms < 500 or cfg.seal_lease_ms > 600000:
        raise ConfigError("seal_lease_ms: must be between 500 and 600000")
    if cfg.seal_bound_ms != 0 and not 100 <= cfg.seal_bound_ms <= 3600000:
        raise ConfigError("seal_bound_ms: must be 0 (no bound) or between 100 and 3600000")
    if cfg.audit_keep_in_redis != 0 and cfg.audit_keep_in_redis < 10:
        raise ConfigError("audit_keep_in_redis: must be 0 (keep all) or at least 10")
    if cfg.receipt_cache_bytes < 0 or cfg.receipt_cache_bytes > 1 << 34:
        raise ConfigError("receipt_cache_bytes: must be between 0 (no cache) and 17179869184")
    if cfg.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("log_level: must be DEBUG, INFO, WARNING or ERROR")
    if cfg.log_format not in ("logfmt", "json"):
        raise ConfigError("log_format: must be logfmt or json")
    _validate_identity(cfg)
    _validate_witnesses(cfg)


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Config:
    """Build the configuration: defaults < TOML file < environment < explicit overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        section = data.get("gate", data)
        if not isinstance(section, dict):
            raise ConfigError(f"config file {path}: [gate] must be a table")
        for key, raw in section.items():
            if key not in _FIELDS:
                raise ConfigError(f"{key}: unknown setting in {path}")
            values[key] = _coerce(key, raw)
    environ = os.environ if env is None else env
    for name in _FIELDS:
        var = f"GATE_{name.upper()}"
        if var in environ:
            values[name] = _coerce(name, environ[var])
    for key, raw in overrides.items():
        if raw is None:
            continue
        if key not in _FIELDS:
            raise ConfigError(f"{key}: unknown setting")
        values[key] = _coerce(key, raw)
    cfg = Config(**values)
    _validate(cfg)
    return cfg


def default_config(**overrides: Any) -> Config:
    """A configuration from defaults and overrides only (tests, the demo)."""
    return load_config(None, env={}, **overrides)


__all__ = ["Config", "ConfigError", "default_config", "load_config"]
