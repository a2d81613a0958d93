"""The device block record and the free-block queue threaded through it.

The queue is a doubly linked list whose links live in the Block records
themselves, so that taking a cached block out on a prefix-cache hit is O(1)
and allocates nothing. Order is eviction order: blocks are returned at the
tail, and the head is the least recently freed. The queue also tells its
FreeExtents of every block that joins or leaves it, so that placement can
find a wholly free run of blocks in O(1) (see extents.py).
"""

from __future__ import annotations

from collections.abc import Iterator

from pagedserve.blockmgr.extents import ExtentPlace, FreeExtents
from pagedserve.blockmgr.prefix_hash import CacheEntry


class Block:
    """One device block: its id, how many sequence tables hold it, and what the
    prefix cache knows about its contents (None until it is registered)."""

    __slots__ = ("block_id", "ref_count", "cache_entry", "prev_free", "next_free", "held_by")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_count = 0
        self.cache_entry: CacheEntry | None = None
        # Links of the free queue; both None exactly when not in the queue.
        self.prev_free: Block | None = None
        self.next_free: Block | None = None
        # The executor's held list while the block waits, unreferenced, for
        # that executor to perform a copy it was given (see BlockPool.hold).
        self.held_by: list[Block] | None = None

    def __repr__(self) -> str:
        return (
            f"Block({self.block_id}, ref={self.ref_count}, cached={self.cache_entry is not None})"
        )


class _QueueEnd:
    """One of the two end nodes of the free queue; has links but is no block."""

    __slots__ = ("prev_free", "next_free")

    def __init__(self) -> None:
        self.prev_free: Block | _QueueEnd | None = None
        self.next_free: Block | _QueueEnd | None = None


class FreeBlockQueue:
    """Unreferenced blocks in eviction order (head first).

    Two end nodes that are not blocks of the pool bound the list so that every
    real block in the queue has both neighbours set, which keeps insert and
    remove branch-free.
    """

    __slots__ = ("_head", "_tail", "num_blocks", "extents")

    def __init__(self, blocks: list[Block], extent_blocks: int, group_extents: int = 1) -> None:
        self._head = _QueueEnd()
        self._tail = _QueueEnd()
        self._head.next_free = self._tail
        self._tail.prev_free = self._head
        self.num_blocks = 0
        self.extents = FreeExtents(len(blocks), extent_blocks, group_extents)
        for block in blocks:
            self.append(block)

    def head(self) -> Block:
        """The least recently freed block; the caller checks num_blocks first."""
        block = self._head.next_free
        assert block is not self._tail, "head of an empty free queue"
        return block

    def remove(self, block: Block) -> ExtentPlace | None:
        """Unlinks a block that is in the queue, in O(1). Returns where its
        extent left the list of wholly free extents (None when it was not in
        it), for an undo to pass back to `insert_after`."""
        prev_block = block.prev_free
        next_block = block.next_free
        prev_block.next_free = next_block
        next_block.prev_free = prev_block
        block.prev_free = None
        block.next_free = None
        self.num_blocks -= 1
        return self.extents.block_taken(block.block_id)

    def append(self, block: Block) -> None:
        """Puts a block at the tail (evicted last)."""
        self.insert_after(self._tail.prev_free, block)

    def insert_after(
        self,
        prev_block: Block | _QueueEnd,
        block: Block,
        extent_place: ExtentPlace | None = None,
    ) -> None:
        """Links `block` right after `prev_block`, which must be in the queue
        or the head end. `extent_place` is what `remove` returned, when undoing it."""
        next_block = prev_block.next_free
        block.prev_free = prev_block
        block.next_free = next_block
        prev_block.next_free = block
        next_block.prev_free = block
        self.num_blocks += 1
        self.extents.block_freed(block.block_id, extent_place)

    def __iter__(self) -> Iterator[Block]:
        block = self._head.next_free
        while block is not self._tail:
            yield block
            block = block.next_free

    def block_ids(self) -> list[int]:
        """Block ids in eviction order (head first); for tests and stats."""
        return [block.block_id for block in self]
