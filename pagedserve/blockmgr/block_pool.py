"""Device block allocation: ref counts, the free queue, and the prefix-cache index.

Invariants (checked by the property tests):
- a block is in the free queue exactly when its ref count is 0 (except blocks
  whose release is deferred to the end of a step, see `pin`);
- a block has a cache entry exactly when the index maps that entry's hash to it;
- free + used + cached == num_blocks, where "cached" blocks are the
  unreferenced ones with a cache entry (evictable, still findable) and
  "free" the rest;
- an unreferenced block outside the queue is either deferred (inside a step)
  or held for an executor: it was an end of a copy that executor has been
  told to perform, and no other executor may write it before that executor's
  next step shows the copy is done.

Placement (which free block a sequence gets) follows extents.py: the block
after the sequence's last one when it is free and in the same extent (or
starts a wholly free extent of the same group); else, for a sequence that
outgrew its extent, the first block of the group open the longest, and for
a new sequence the first block of the oldest wholly free extent that does
not lead an open group; else the oldest wholly free extent's; else the
queue's head. With extents of one block (groups are then ignored) that is
exactly least-recently-freed order.

Every mutation is logged in the shared Journal so a failed step can undo it.
"""

from __future__ import annotations

from pagedserve.blockmgr.block import Block, FreeBlockQueue
from pagedserve.blockmgr.extents import ExtentPlace
from pagedserve.blockmgr.journal import Journal
from pagedserve.blockmgr.prefix_hash import CacheEntry


class BlockPool:
    """The device blocks of one pool."""

    def __init__(
        self, num_blocks: int, journal: Journal, extent_blocks: int = 1, group_extents: int = 1
    ) -> None:
        self.num_blocks = num_blocks
        self.extent_blocks = extent_blocks
        self.blocks = [Block(block_id) for block_id in range(num_blocks)]
        self._free = FreeBlockQueue(self.blocks, extent_blocks, group_extents)
        self._cache_index: dict[bytes, Block] = {}
        self._journal = journal
        # Step-scoped: blocks read or written by a copy-on-write copy of the
        # step in progress must not be handed out again before the step ends,
        # or the executor's copy order (swap-ins before copies) would clobber them.
        self._pinned: set[Block] = set()
        self._deferred: list[Block] = []
        # Counts kept as references change (and as they are undone), so that
        # statistics never walk the pool: blocks referenced, referenced more
        # than once, all references, referenced blocks with a cache entry.
        self.num_used = 0
        self.num_shared = 0
        self.num_references = 0
        self._num_cached_used = 0

    # ---- queries -------------------------------------------------------

    @property
    def num_allocatable(self) -> int:
        """Blocks an allocation could take now: free plus evictable cached."""
        return self._free.num_blocks

    def can_allocate(self, num_blocks: int) -> bool:
        """True when `num_blocks` blocks can be allocated right now."""
        return num_blocks <= self._free.num_blocks

    def lookup(
        self,
        block_hash: bytes,
        parent_hash: bytes | None,
        token_ids: tuple[int, ...],
        extra_key: str,
    ) -> Block | None:
        """The cached block holding exactly these tokens after this parent, or
        None (nothing under this hash, or a colliding entry with other content)."""
        block = self._cache_index.get(block_hash)
        if block is None or not block.cache_entry.matches(parent_hash, token_ids, extra_key):
            return None
        return block

    def num_cached_free(self) -> int:
        """Unreferenced blocks that the prefix cache can still serve."""
        return len(self._cache_index) - self._num_cached_used

    def _set_ref_count(self, block: Block, ref_count: int) -> None:
        """Every change of a block's ref count goes through here (the counts)."""
        old = block.ref_count
        block.ref_count = ref_count
        self.num_references += ref_count - old
        used = (ref_count > 0) - (old > 0)
        self.num_used += used
        self.num_shared += (ref_count > 1) - (old > 1)
        if block.cache_entry is not None:
            self._num_cached_used += used

    def free_block_ids(self) -> list[int]:
        """Queued block ids in eviction order, head (next taken) first."""
        return self._free.block_ids()

    def free_extent_ids(self) -> list[int]:
        """Wholly free extents, oldest first (for tests and benchmarks)."""
        return self._free.extents.extent_ids()

    def open_group_ids(self) -> list[int]:
        """Open groups' leading extents, open the longest first (for tests)."""
        return self._free.extents.open_group_ids()

    def cache_index(self) -> dict[bytes, Block]:
        """A copy of hash -> block for every registered block (for stats and tests)."""
        return dict(self._cache_index)

    # ---- mutations -----------------------------------------------------

    def allocate(self, num_blocks: int) -> list[Block] | None:
        """Takes `num_blocks` blocks for a new run (see `take`), evicting
        their cache entries; None (and nothing taken) when too few are free."""
        if num_blocks > self._free.num_blocks:
            return None
        blocks: list[Block] = []
        last = None
        for _ in range(num_blocks):
            last = self.take(last)
            blocks.append(last)
        return blocks

    def take(self, after: Block | None = None) -> Block:
        """Takes one block to follow `after` in a sequence's table (None: the
        first of a run), evicting its cache entry; the caller has checked that
        one is free."""
        block = self._placed_after(after)
        previous = block.prev_free
        extent_place = self._free.remove(block)
        entry = block.cache_entry
        if entry is not None:
            del self._cache_index[entry.block_hash]
            block.cache_entry = None
        block.ref_count = 1  # from 0, without a cache entry: _set_ref_count's counts, inline
        self.num_used += 1
        self.num_references += 1
        self._journal.record(self._undo_take, block, (entry, previous, extent_place))
        return block

    def _placed_after(self, after: Block | None) -> Block:
        """The free block placement gives to follow `after` (extents.py)."""
        if after is None:
            extent = self._free.extents.oldest_outside_open_groups()
        else:
            next_id = after.block_id + 1
            if next_id < self.num_blocks:
                candidate = self.blocks[next_id]
                if candidate.prev_free is not None and (  # in the free queue
                    next_id % self.extent_blocks  # the common case: the same extent
                    or self._free.extents.grows_into(next_id // self.extent_blocks)
                ):
                    return candidate
            extents = self._free.extents
            extent = extents.longest_open_group()
            if extent is None:
                extent = extents.oldest()
        if extent is not None:
            return self.blocks[extent * self.extent_blocks]
        return self._free.head()

    def touch(self, block: Block) -> None:
        """Adds a reference: a prefix-cache hit or a fork. An unreferenced
        (cached) block leaves the free queue in O(1); a held one (a cache hit
        on a swap-out source only reads it) leaves its holder's list."""
        previous = extent_place = None
        if block.ref_count == 0:
            if block.held_by is not None:
                self._unhold(block)
            else:
                previous = block.prev_free
                extent_place = self._free.remove(block)
        self._set_ref_count(block, block.ref_count + 1)
        self._journal.record(self._undo_touch, block, (previous, extent_place))

    def _unhold(self, block: Block) -> None:
        held = block.held_by
        position = held.index(block)
        del held[position]
        block.held_by = None
        self._journal.record(self._undo_unhold, block, (held, position))

    def release(self, block: Block) -> None:
        """Drops a reference; at zero the block joins the tail of the free queue
        (keeping its cache entry, so it stays findable until reused)."""
        block.ref_count -= 1  # _set_ref_count's counts, inline (the hot path)
        self.num_references -= 1
        if block.ref_count == 1:
            self.num_shared -= 1
        if block.ref_count:
            self._journal.record(self._undo_release, block)
            return
        self.num_used -= 1
        if block.cache_entry is not None:
            self._num_cached_used -= 1
        if block in self._pinned:
            self._deferred.append(block)
            self._journal.record(self._undo_defer, block)
        else:
            self._free.append(block)
            self._journal.record(self._undo_release_to_queue, block)

    def register(
        self,
        block: Block,
        block_hash: bytes,
        parent_hash: bytes | None,
        token_ids: tuple[int, ...],
        extra_key: str,
    ) -> bool:
        """Makes a computed full block findable by the prefix cache. Returns False
        (block left unregistered) when the hash is already taken: by identical
        content computed concurrently by another block (the first is kept), or
        by different content (a collision, which must not be served)."""
        if block_hash in self._cache_index:
            return False
        block.cache_entry = CacheEntry(block_hash, parent_hash, token_ids, extra_key)
        self._cache_index[block_hash] = block
        self._num_cached_used += block.ref_count > 0
        self._journal.record(self._undo_register, block)
        return True

    def pin(self, block: Block) -> None:
        """Defers the block's return to the free queue until `finish_step`
        should its ref count reach zero during this step."""
        self._pinned.add(block)

    def hold(self, candidates: list[Block], held: list[Block]) -> None:
        """After a commit: each candidate (an end of one of the step's copies)
        that ended the step unreferenced leaves the queue, or its deferral, for
        the executor's `held` list, in candidate order. Not journaled."""
        deferred = set(self._deferred)
        for block in candidates:
            if block.ref_count or block.held_by is not None:
                continue
            if block in deferred:
                deferred.discard(block)
                self._deferred.remove(block)
            elif block.prev_free is not None:
                self._free.remove(block)
            else:
                continue
            block.held_by = held
            held.append(block)

    def release_held(self, held: list[Block]) -> None:
        """The executor showed its copies ran (or left): its held blocks join
        the tail of the free queue, in order. Journaled, as part of a step."""
        if not held:
            return
        blocks = list(held)
        for block in blocks:
            block.held_by = None
            self._free.append(block)
        held.clear()
        self._journal.record(self._undo_release_held, held, blocks)

    def finish_step(self) -> None:
        """Ends the step (after commit or rollback): deferred blocks join the queue."""
        for block in self._deferred:
            self._free.append(block)
        self._deferred.clear()
        self._pinned.clear()

    # ---- undo ----------------------------------------------------------

    # Undone in reverse order, a removed block's old queue neighbour (or the
    # head end) and its extent's old list neighbour are back in place.

    def _undo_take(
        self, block: Block, taken: tuple[CacheEntry | None, Block, ExtentPlace | None]
    ) -> None:
        entry, previous, extent_place = taken
        self._set_ref_count(block, 0)
        if entry is not None:
            block.cache_entry = entry
            self._cache_index[entry.block_hash] = block
        self._free.insert_after(previous, block, extent_place)

    def _undo_touch(self, block: Block, touched: tuple[Block | None, ExtentPlace | None]) -> None:
        previous, extent_place = touched
        self._set_ref_count(block, block.ref_count - 1)
        if previous is not None:
            self._free.insert_after(previous, block, extent_place)

    def _undo_unhold(self, block: Block, place: tuple[list[Block], int]) -> None:
        held, position = place
        held.insert(position, block)
        block.held_by = held

    def _undo_release_held(self, held: list[Block], blocks: list[Block]) -> None:
        for block in blocks:
            self._free.remove(block)
            block.held_by = held
        held[:] = blocks

    def _undo_release(self, block: Block, _unused: None) -> None:
        self._set_ref_count(block, block.ref_count + 1)

    def _undo_defer(self, block: Block, _unused: None) -> None:
        self._deferred.pop()
        self._set_ref_count(block, block.ref_count + 1)

    def _undo_release_to_queue(self, block: Block, _unused: None) -> None:
        self._free.remove(block)
        self._set_ref_count(block, block.ref_count + 1)

    def _undo_register(self, block: Block, _unused: None) -> None:
        del self._cache_index[block.cache_entry.block_hash]
        block.cache_entry = None
        self._num_cached_used -= block.ref_count > 0
