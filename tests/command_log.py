"""Every command the clients of a test's own redis-server send, read back from its slow
log (threshold 0 us: each command is logged with its arguments; the commands a script
runs are logged too, from the client "?:0", and left out here: the EVALSHA stands for
them). For tests that count Redis work: script calls by SHA, reads of one key, round
trips."""

from __future__ import annotations

import redis as sync_redis

LOG_MAX = 500_000
SCRIPT_CLIENT = b"?:0"  # the client a script's own commands are logged under


class CommandLog:
    def __init__(self, url: str) -> None:
        self.client = sync_redis.Redis.from_url(url)
        self._saved: dict[str, str] = {}

    def __enter__(self) -> CommandLog:
        for name in ("slowlog-log-slower-than", "slowlog-max-len"):
            self._saved[name] = str(self.client.config_get(name)[name])
        self.client.config_set("slowlog-max-len", LOG_MAX)
        self.client.config_set("slowlog-log-slower-than", 0)
        self.client.slowlog_reset()
        return self

    def __exit__(self, *exc: object) -> None:
        for name, value in self._saved.items():
            self.client.config_set(name, value)
        self.client.slowlog_reset()
        self.client.close()

    def commands(self) -> list[list[bytes]]:
        """The clients' commands logged so far, oldest first, each as its arguments."""
        entries = self.client.execute_command("SLOWLOG", "GET", LOG_MAX)
        assert len(entries) < LOG_MAX, "the slow log overflowed: the count would be short"
        return [list(entry[3]) for entry in reversed(entries) if entry[4] != SCRIPT_CLIENT]

    def count(self, *prefix: bytes | str) -> int:
        """How many logged commands begin with these arguments (the name case-blind)."""
        want = [p.encode() if isinstance(p, str) else p for p in prefix]
        found = 0
        for args in self.commands():
            if len(args) < len(want):
                continue
            if args[0].upper() != want[0].upper():
                continue
            if args[1 : len(want)] == want[1:]:
                found += 1
        return found

    def script_calls(self, sha: str) -> int:
        """EVALSHA calls of the script with this SHA (EVAL is not used by the gate)."""
        return self.count("EVALSHA", sha)
