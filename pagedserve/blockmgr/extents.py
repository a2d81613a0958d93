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

Groups of `group_extents` consecutive extents let long sequences' runs go on
past an extent (at 32k tokens, runs of 64 blocks read 1% slower than
consecutive ones; notes v25); they apply to extents of more than one block.
A group is open when its leading extent and the one after are wholly free.
Then:

- a run at the end of its extent goes on into the next one when that one is
  wholly free and in the same group;
- a run that cannot (its sequence has outgrown an extent) starts at the
  group that has been open the longest, else as above;
- a new sequence's first run starts at the oldest wholly free extent that
  does not lead an open group, else as above.

Long runs so take open groups and new sequences leave them alone, and both
take what they take oldest first. With groups of one extent no group is
ever open, and the rules are the ones above the list.

This module keeps the lists: the extents whose every block is in the free
queue, oldest first, and the open groups' leading extents, in the order
they opened, as doubly linked lists over integer arrays. The free queue
reports every block that joins or leaves it. A block leaving can take its
extent out of the list (and close a group); the positions it left are
returned so that an undo can put them back exactly there, which keeps a
rolled-back step's state, and so every later placement, identical to never
having run it.
"""

from __future__ import annotations

# 64 blocks (1,024 tokens at 16 tokens a block). Over the tables this pool
# hands out while serving (benchmarks/served_tables.py), the decode kernel read
# within 0.5% of fully consecutive blocks at every shape with extents of 64,
# and up to 1.2% slower than that with extents of 16 (H100, notes v11). Nothing
# is reserved: a sequence's unused part of its extent stays free for anyone
# once no wholly free extent is left.
DEFAULT_EXTENT_BLOCKS = 64
# 8 extents (512 blocks, 8k tokens). In served_tables' workload runs of 224
# blocks at 8k tokens and 388 at 32k (65 in groups of one); 62-64 at 1k. In
# benchmarks/prefix_hits.py's eviction-bound workloads the prefix cache hit
# 1.2-3.1 points more often than in groups of one (notes v25).
DEFAULT_GROUP_EXTENTS = 8


# Where an extent and the group it held open stood in the lists (the nodes
# before them), for an undo to put them back.
ExtentPlace = tuple[int, int]


class FreeExtents:
    """Wholly free extents of one pool, in the order they came free, and the
    open groups (module docstring), in the order they opened."""

    __slots__ = (
        "extent_blocks", "group_extents", "_end", "_size", "_num_free", "_prev", "_next",
        "_open_prev", "_open_next",
    )  # fmt: skip

    def __init__(self, num_blocks: int, extent_blocks: int, group_extents: int = 1) -> None:
        self.extent_blocks = extent_blocks
        # Extents of one block are plain least-recently-freed order, whatever the groups.
        self.group_extents = group_extents if extent_blocks > 1 else 1
        num_extents = -(-num_blocks // extent_blocks)
        # The end node, past the last extent, closes each list into a ring.
        self._end = num_extents
        self._size = [extent_blocks] * num_extents
        self._size[-1] = num_blocks - (num_extents - 1) * extent_blocks
        self._num_free = [0] * num_extents
        self._prev = [num_extents] * (num_extents + 1)
        self._next = [num_extents] * (num_extents + 1)
        self._open_prev = [num_extents] * (num_extents + 1)
        self._open_next = [num_extents] * (num_extents + 1)

    def oldest(self) -> int | None:
        """The extent wholly free the longest, or None when none is."""
        extent = self._next[self._end]
        return None if extent == self._end else extent

    def oldest_outside_open_groups(self) -> int | None:
        """The oldest wholly free extent that does not lead an open group,
        else the oldest, else None."""
        oldest = extent = self._next[self._end]
        if self.group_extents == 1:
            return None if oldest == self._end else oldest
        while extent != self._end:
            if not self._leads_open_group(extent):
                return extent
            extent = self._next[extent]
        return None if oldest == self._end else oldest

    def longest_open_group(self) -> int | None:
        """The leading extent of the group open the longest, or None."""
        extent = self._open_next[self._end]
        return None if extent == self._end else extent

    def grows_into(self, extent: int) -> bool:
        """Whether a run that has reached the end of the extent before
        `extent` goes on into it: it is wholly free and in the same group."""
        return extent % self.group_extents != 0 and self._num_free[extent] == self._size[extent]

    def extent_ids(self) -> list[int]:
        """Wholly free extents, oldest first (for tests)."""
        return self._ring(self._next)

    def open_group_ids(self) -> list[int]:
        """Open groups' leading extents, open the longest first (for tests)."""
        return self._ring(self._open_next)

    def block_freed(self, block_id: int, place: ExtentPlace | None = None) -> None:
        """A block joined the free queue. If that frees its whole extent, the
        extent joins the list, and a group it opens the open groups: after
        `place` (what `block_taken` returned, when undoing) or, by default,
        at the end (newest)."""
        extent = block_id // self.extent_blocks
        self._num_free[extent] += 1
        if self._num_free[extent] != self._size[extent]:
            return
        before, open_before = place or (self._prev[self._end], self._open_prev[self._end])
        _link_after(self._prev, self._next, before, extent)
        if self.group_extents > 1:
            opened = self._group_opened_by(extent)
            if opened is not None:
                _link_after(self._open_prev, self._open_next, open_before, opened)

    def block_taken(self, block_id: int) -> ExtentPlace | None:
        """A block left the free queue. Returns the positions its extent (and
        the group it closes) left in the lists, or None when it was not listed."""
        extent = block_id // self.extent_blocks
        if self._num_free[extent] != self._size[extent]:
            self._num_free[extent] -= 1
            return None
        open_before = self._end
        if self.group_extents > 1:
            closed = self._group_opened_by(extent)
            if closed is not None:
                open_before = _unlink(self._open_prev, self._open_next, closed)
        self._num_free[extent] -= 1
        return _unlink(self._prev, self._next, extent), open_before

    def _leads_open_group(self, extent: int) -> bool:
        """Whether `extent` leads an open group (groups of more than one extent)."""
        return (
            extent % self.group_extents == 0
            and extent + 1 < self._end
            and self._num_free[extent] == self._size[extent]
            and self._num_free[extent + 1] == self._size[extent + 1]
        )

    def _group_opened_by(self, extent: int) -> int | None:
        """The leading extent of the open group that `extent` (wholly free)
        helps hold open: itself or the one before it; else None (groups of
        more than one extent)."""
        position = extent % self.group_extents
        if position == 0 and self._leads_open_group(extent):
            return extent
        if position == 1 and self._leads_open_group(extent - 1):
            return extent - 1
        return None

    def _ring(self, next_of: list[int]) -> list[int]:
        extents = []
        extent = next_of[self._end]
        while extent != self._end:
            extents.append(extent)
            extent = next_of[extent]
        return extents


def _link_after(prev_of: list[int], next_of: list[int], before: int, extent: int) -> None:
    after = next_of[before]
    prev_of[extent] = before
    next_of[extent] = after
    next_of[before] = extent
    prev_of[after] = extent


def _unlink(prev_of: list[int], next_of: list[int], extent: int) -> int:
    """Takes `extent` out of its ring; returns the node that was before it."""
    before, after = prev_of[extent], next_of[extent]
    next_of[before] = after
    prev_of[after] = before
    return before
