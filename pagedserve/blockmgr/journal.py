"""The undo log that makes a Step all-or-nothing.

Every mutation made while a step runs appends one entry naming the function
that reverses it. A step that fails on invalid input replays the entries in
reverse, which restores every structure exactly, including the order of the
free queue and prefix-cache entries evicted along the way. Entries are plain
3-tuples so that logging costs one small allocation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

UndoFn = Callable[[Any, Any], None]


class Journal:
    """Undo entries of the step in progress."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: list[tuple[UndoFn, Any, Any]] = []

    def record(self, undo: UndoFn, first: Any = None, second: Any = None) -> None:
        """Logs that `undo(first, second)` reverses the change just made."""
        self.entries.append((undo, first, second))

    def rollback(self) -> None:
        """Reverses every logged change, newest first, and empties the log."""
        entries = self.entries
        while entries:
            undo, first, second = entries.pop()
            undo(first, second)

    def commit(self) -> None:
        """Forgets the logged changes: they are now permanent."""
        self.entries.clear()
