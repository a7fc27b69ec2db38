"""The technician commands' error: one line that says what went wrong and what to do."""

from __future__ import annotations

from ..errors import EdgeveilError


class NodeCommandError(EdgeveilError):
    """A problem a technician can fix (wrong file, busy port, board not in MicroPython...).
    The message is one line: what is wrong, then what to do."""
