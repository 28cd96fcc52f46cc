"""The processes of `gate demo`: the parent starts each child (`child`); a child (the
customers, the crowd, the simulated core) runs its work with `run_child`, which ends it
when the parent is gone, and writes its result with `write_result`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

# --- the parent's side ---------------------------------------------------------------------


@contextlib.asynccontextmanager
async def child(*args: str, stdout: int | None = None) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python ARGS...` as a child that exits when our end of its stdin closes (never
    written to: it reads EOF when we die); stopped after use, SIGTERM then SIGKILL."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdin=asyncio.subprocess.PIPE, stdout=stdout
    )
    try:
        yield process
    finally:
        if process.stdin is not None:
            process.stdin.close()
        await stop(process)


async def stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL after 10 s; nothing when it has already exited."""
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout=10)
        except TimeoutError:
            process.kill()
            await process.wait()


# --- the child's side ----------------------------------------------------------------------


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed, else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _exit_with_parent() -> None:
    """The parent holds our stdin open and never writes: EOF means it is gone."""
    # os.read, not sys.stdin: a daemon thread must hold no interpreter lock at exit.
    while os.read(0, 4096):
        pass
    os._exit(3)


T = TypeVar("T")


def run_child(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """The body of a `gate demo` child process (customers, crowd, simulated core): runs
    `work()` in uvloop's event loop where installed. The parent handles Ctrl-C and stops
    this process (no traceback from here); the process ends when its parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, name="parent-watch", daemon=True).start()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(work())


def write_result(path: str, result: Any) -> None:
    """A child's result as JSON, whole or not at all (written aside, then renamed)."""
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(path)
