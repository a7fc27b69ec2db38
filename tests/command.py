"""The `edgeveil` command as a user runs it: a real process, no standard input. And child
processes that never outlive their test: every process a test starts is started here, and is
killed and reaped when its block ends, however it ends (a failed assertion, a timeout, a
cancelled task); subprocess.run(timeout=...) kills its child on a timeout by itself."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def edgeveil(*args: str, cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
    )


@contextlib.contextmanager
def child_process(args: Sequence[str], **popen: Any) -> Iterator[subprocess.Popen[Any]]:
    """subprocess.Popen(args, **popen), killed (if still running) and reaped at the end."""
    proc = subprocess.Popen(args, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        with proc:  # closes its pipes and waits for it
            pass


@contextlib.asynccontextmanager
async def async_child_process(
    *args: str, **kwargs: Any
) -> AsyncIterator[asyncio.subprocess.Process]:
    """asyncio.create_subprocess_exec(*args, **kwargs), killed and reaped at the end."""
    proc = await asyncio.create_subprocess_exec(*args, **kwargs)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
