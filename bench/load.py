"""What a benchmark request looks like, and the result of one load run.

A `Target` is one kind of request against one server. For joins every request carries a
new customer id (`X-Customer-Id: <prefix>-<connection>-<counter>`), so each one creates a
ticket; the same ids are sent to the hello-world reference so both sides pay the same.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child `python -m bench.…`: it finds this checkout's packages."""
    env = {**os.environ, **(extra or {})}
    paths = [str(REPO_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


@dataclass(frozen=True)
class Target:
    url: str  # http://127.0.0.1:PORT/path?query
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    unique_customer_prefix: str | None = None  # joins: a new X-Customer-Id per request

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme != "http" or parts.hostname != "127.0.0.1" or parts.port is None:
            raise ValueError(f"load targets are http://127.0.0.1:PORT only, not {self.url!r}")

    @property
    def port(self) -> int:
        port = urlsplit(self.url).port
        assert port is not None
        return port

    @property
    def path(self) -> str:
        parts = urlsplit(self.url)
        return parts.path + (f"?{parts.query}" if parts.query else "")

    def with_prefix(self, prefix: str) -> Target:
        """The same target with another customer-id prefix (a fresh set of customers)."""
        if self.unique_customer_prefix is None:
            return self
        return Target(self.url, self.method, self.headers, prefix)


@dataclass
class LoadResult:
    tool: str  # wrk | openloop | closedloop
    mode: str  # closed | open
    duration_s: float
    connections: int
    requests: int  # completed responses
    ok: int  # 2xx
    errors: int  # non-2xx, socket errors, timeouts
    rate_target: float | None = None  # open loop: the scheduled arrival rate
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50, p90, p99, p999, max
    generator_lag_ms: dict[str, float] = field(default_factory=dict)  # open loop only
    unfinished: int = 0  # open loop: scheduled but not answered by the hard deadline
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["throughput_rps"] = round(self.throughput, 1)
        return data


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max of a list of seconds, in milliseconds (nearest rank)."""
    if not values:
        return {}
    ordered = sorted(values)
    n = len(ordered)

    def rank(q: float) -> float:
        index = min(n - 1, max(0, int(q * n + 0.999999) - 1))
        return round(ordered[index] * 1000, 3)

    return {
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "p999": rank(0.999),
        "max": round(ordered[-1] * 1000, 3),
        "count": n,
    }
