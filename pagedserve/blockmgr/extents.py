"""Extents: the pool cut into runs of consecutive block ids, for placement.

A decode step reads every block of a sequence. Spread over the pool one
block here and one there, those reads cost the attention kernel 0.5-3% on an
H100 against the same blocks laid consecutively (docs/kernels-notes.md,
v9-v10), so the pool places a sequence's blocks next to each other where it
can, without reserving anything:

- a sequence that needs a block takes the one after its last block when that
  one is free and in the same extent;
- otherwise it starts a run at the first block of the extent that has been
  wholly free the longest (its "age" is when its last block came free, so
  extents are evicted least recently used first, as blocks are);
- when no extent is wholly free, it takes the head of the free queue, as a
  plain LRU pool would. Nothing is ever refused for placement's sake.

This module keeps the second list: the extents whose every block is in the
free queue, oldest first, as a doubly linked list over integer arrays. The
free queue reports every block that joins or leaves it. A block leaving can
take its extent out of the list; the position it left is returned so that an
undo can put it back exactly there, which keeps a rolled-back step's state,
and so every later placement, identical to never having run it.
"""

from __future__ import annotations

# 64 blocks (1,024 tokens at 16 tokens a block). Over the tables this pool
# hands out while serving (benchmarks/served_tables.py), the decode kernel read
# within 0.5% of fully consecutive blocks at every shape with extents of 64,
# and up to 1.2% slower than that with extents of 16 (H100, notes v11). Nothing
# is reserved: a sequence's unused part of its extent stays free for anyone
# once no wholly free extent is left.
DEFAULT_EXTENT_BLOCKS = 64


class FreeExtents:
    """Wholly free extents of one pool, in the order they came free."""

    __slots__ = ("extent_blocks", "_end", "_size", "_num_free", "_prev", "_next")

    def __init__(self, num_blocks: int, extent_blocks: int) -> None:
        self.extent_blocks = extent_blocks
        num_extents = -(-num_blocks // extent_blocks)
        # The end node, past the last extent, closes the list into a ring.
        self._end = num_extents
        self._size = [extent_blocks] * num_extents
        self._size[-1] = num_blocks - (num_extents - 1) * extent_blocks
        self._num_free = [0] * num_extents
        self._prev = [num_extents] * (num_extents + 1)
        self._next = [num_extents] * (num_extents + 1)

    def oldest(self) -> int | None:
        """The extent wholly free the longest, or None when none is."""
        extent = self._next[self._end]
        return None if extent == self._end else extent

    def extent_ids(self) -> list[int]:
        """Wholly free extents, oldest first (for tests)."""
        extents = []
        extent = self._next[self._end]
        while extent != self._end:
            extents.append(extent)
            extent = self._next[extent]
        return extents

    def block_freed(self, block_id: int, place: int | None = None) -> None:
        """A block joined the free queue. If that frees its whole extent, the
        extent joins the list: after `place` (a position `block_taken`
        returned, when undoing) or, by default, at the end (newest)."""
        extent = block_id // self.extent_blocks
        self._num_free[extent] += 1
        if self._num_free[extent] == self._size[extent]:
            self._link_after(self._prev[self._end] if place is None else place, extent)

    def block_taken(self, block_id: int) -> int | None:
        """A block left the free queue. Returns the position its extent left
        in the list (the node before it), or None when it was not listed."""
        extent = block_id // self.extent_blocks
        was_listed = self._num_free[extent] == self._size[extent]
        self._num_free[extent] -= 1
        if not was_listed:
            return None
        before, after = self._prev[extent], self._next[extent]
        self._next[before] = after
        self._prev[after] = before
        return before

    def _link_after(self, before: int, extent: int) -> None:
        after = self._next[before]
        self._prev[extent] = before
        self._next[extent] = after
        self._next[before] = extent
        self._prev[after] = extent
