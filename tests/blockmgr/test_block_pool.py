"""Exact block ids and eviction order of the block pool and free queue.

These pin the policy: a change of allocation or eviction order fails here.
"""

from __future__ import annotations

from pagedserve.blockmgr.block import Block, FreeBlockQueue
from pagedserve.blockmgr.block_pool import BlockPool
from pagedserve.blockmgr.journal import Journal


def test_free_queue_remove_from_middle_and_reinsert() -> None:
    blocks = [Block(i) for i in range(5)]
    queue = FreeBlockQueue(blocks, extent_blocks=1)
    place = queue.remove(blocks[2])
    assert queue.block_ids() == [0, 1, 3, 4]
    assert queue.num_blocks == 4
    assert blocks[2].prev_free is None and blocks[2].next_free is None
    queue.insert_after(blocks[1], blocks[2], place)
    assert queue.block_ids() == [0, 1, 2, 3, 4]
    assert queue.extents.extent_ids() == [0, 1, 2, 3, 4]
    assert queue.head() is blocks[0]
    queue.remove(blocks[0])
    queue.append(blocks[0])
    assert queue.block_ids() == [1, 2, 3, 4, 0]
    assert queue.extents.extent_ids() == [1, 2, 3, 4, 0]


def test_allocate_takes_lowest_ids_first_and_release_goes_to_tail() -> None:
    pool = BlockPool(6, Journal())
    first = pool.allocate(2)
    second = pool.allocate(3)
    assert [b.block_id for b in first] == [0, 1]
    assert [b.block_id for b in second] == [2, 3, 4]
    for block in reversed(first):
        pool.release(block)
    # 5 was never taken; then 1 before 0 because a sequence is freed tail first.
    assert pool.free_block_ids() == [5, 1, 0]
    assert [b.block_id for b in pool.allocate(2)] == [5, 1]


def test_allocate_returns_none_and_takes_nothing_when_short() -> None:
    pool = BlockPool(3, Journal())
    pool.allocate(2)
    assert pool.allocate(2) is None
    assert pool.num_allocatable == 1
    assert pool.can_allocate(1) and not pool.can_allocate(2)


def test_cached_block_stays_findable_until_reused_then_is_evicted_lru() -> None:
    pool = BlockPool(3, Journal())
    a, b, c = pool.allocate(3)
    assert pool.register(a, b"hash-a", None, (1, 2), "m")
    assert pool.register(b, b"hash-b", b"hash-a", (3, 4), "m")
    pool.release(b)
    pool.release(a)
    pool.release(c)
    assert pool.free_block_ids() == [1, 0, 2]
    assert pool.num_cached_free() == 2
    assert pool.lookup(b"hash-a", None, (1, 2), "m") is a
    taken = pool.take()  # evicts b, the least recently freed
    assert taken is b and b.cache_entry is None
    assert pool.lookup(b"hash-b", b"hash-a", (3, 4), "m") is None
    assert pool.lookup(b"hash-a", None, (1, 2), "m") is a


def test_touch_revives_cached_block_out_of_the_middle_of_the_queue() -> None:
    pool = BlockPool(4, Journal())
    blocks = pool.allocate(4)
    pool.register(blocks[1], b"h1", None, (7,), "m")
    for block in blocks:
        pool.release(block)
    pool.touch(blocks[1])
    assert blocks[1].ref_count == 1
    assert pool.free_block_ids() == [0, 2, 3]


def test_register_keeps_first_block_for_a_hash() -> None:
    pool = BlockPool(2, Journal())
    a, b = pool.allocate(2)
    assert pool.register(a, b"same", None, (1,), "m")
    assert not pool.register(b, b"same", None, (1,), "m")
    assert b.cache_entry is None
    assert pool.cache_index() == {b"same": a}


def test_lookup_rejects_a_hash_hit_with_other_tokens_or_parent() -> None:
    pool = BlockPool(1, Journal())
    (a,) = pool.allocate(1)
    pool.register(a, b"h", b"parent", (1, 2), "m")
    assert pool.lookup(b"h", b"parent", (1, 2), "m") is a
    assert pool.lookup(b"h", b"parent", (1, 3), "m") is None
    assert pool.lookup(b"h", b"other-parent", (1, 2), "m") is None
    assert pool.lookup(b"h", b"parent", (1, 2), "other-model") is None


def test_journal_rollback_restores_queue_order_and_evicted_entries() -> None:
    journal = Journal()
    pool = BlockPool(4, journal)
    blocks = pool.allocate(4)
    pool.register(blocks[0], b"h0", None, (1,), "m")
    pool.register(blocks[2], b"h2", None, (2,), "m")
    for block in blocks:
        pool.release(block)
    journal.commit()
    before_queue = pool.free_block_ids()
    before_index = pool.cache_index()

    pool.touch(blocks[2])
    pool.take()  # evicts block 0's entry
    pool.take()
    pool.register(blocks[1], b"h1", None, (3,), "m")
    pool.release(blocks[2])
    journal.rollback()

    assert pool.free_block_ids() == before_queue
    assert pool.cache_index() == before_index
    assert [b.ref_count for b in blocks] == [0, 0, 0, 0]
    assert blocks[0].cache_entry is not None and blocks[1].cache_entry is None
