"""Progress bars for the technician commands: rich on a terminal, nothing when piped."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yield advance(n). Draws a bar on a terminal only (quiet in logs, pipes and tests)."""
    if not sys.stdout.isatty() or total <= 0:
        yield lambda _n: None
        return
    from rich.progress import (  # noqa: PLC0415 - rich only on a terminal
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
