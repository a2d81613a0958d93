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

Groups (off by default: groups of one extent) make long sequences' runs
longer than an extent. The pool is cut into groups of `group_extents`
consecutive extents; a run that reaches the end of its extent goes on into
the next one when that one is wholly free and in the same group, and new
runs start in the extents that lead a group before any other. The others
are then mostly left for runs to grow into. The price is eviction order:
leading extents are taken before older ones that do not lead, which evicts
cached prefixes sooner (docs/blockmgr.md, "Placement", has both figures).

This module keeps the second list: the extents whose every block is in the
free queue, as doubly linked lists over integer arrays, oldest first: one
of the extents that lead a group, one of the others. The
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
# Groups of one extent: runs stop at an extent's end, and extents are taken
# strictly oldest first. Groups of 4 (runs of 256 blocks) read within 0.2%
# of fully consecutive blocks at b32 x 32k (0.996 of SDPA against 1.006 with
# groups of one, H100, notes v25), but cost an eviction-bound prefix-cache
# workload 5-9 points of hit rate (benchmarks/prefix_hits.py): a choice for
# long-context deployments, not a default.
DEFAULT_GROUP_EXTENTS = 1


class FreeExtents:
    """Wholly free extents of one pool, in the order they came free (those
    that lead a group of `group_extents` first)."""

    __slots__ = (
        "extent_blocks", "group_extents", "_lead_end", "_inner_end", "_size", "_num_free",
        "_prev", "_next",
    )  # fmt: skip

    def __init__(self, num_blocks: int, extent_blocks: int, group_extents: int = 1) -> None:
        self.extent_blocks = extent_blocks
        self.group_extents = group_extents
        num_extents = -(-num_blocks // extent_blocks)
        # Two rings, each closed by an end node past the last extent: the
        # extents that lead a group, and the others.
        self._lead_end = num_extents
        self._inner_end = num_extents + 1
        self._size = [extent_blocks] * num_extents
        self._size[-1] = num_blocks - (num_extents - 1) * extent_blocks
        self._num_free = [0] * num_extents
        self._prev = [0] * (num_extents + 2)
        self._next = [0] * (num_extents + 2)
        for end in (self._lead_end, self._inner_end):
            self._prev[end] = self._next[end] = end

    def oldest(self) -> int | None:
        """The extent a new run starts in: the leading extent wholly free the
        longest, else the other extent wholly free the longest, else None."""
        for end in (self._lead_end, self._inner_end):
            if self._next[end] != end:
                return self._next[end]
        return None

    def grows_into(self, extent: int) -> bool:
        """Whether a run that has reached the end of the extent before
        `extent` goes on into it: it is wholly free and in the same group."""
        return extent % self.group_extents != 0 and self._num_free[extent] == self._size[extent]

    def extent_ids(self) -> list[int]:
        """Wholly free extents in the order new runs take them (for tests)."""
        extents = []
        for end in (self._lead_end, self._inner_end):
            extent = self._next[end]
            while extent != end:
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
            if place is None:
                end = self._inner_end if extent % self.group_extents else self._lead_end
                place = self._prev[end]
            self._link_after(place, extent)

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
