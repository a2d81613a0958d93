"""Placement: which free block a sequence gets (extents.py), with exact ids.

The property test checks every interleaving against the reference model;
these pin the policy's intent on small cases one can follow by hand.
"""

from __future__ import annotations

import pytest

from pagedserve.blockmgr.client import BlockManagerClient
from pagedserve.blockmgr.config import BlockManagerConfig
from pagedserve.blockmgr.errors import NotFoundError
from pagedserve.blockmgr.extents import DEFAULT_EXTENT_BLOCKS
from pagedserve.blockmgr.ops import AllocateOp, AppendOp, FreeOp
from pagedserve.blockmgr.service import serve

from .helpers import free_queue, make_manager, make_pool_info, table


def grow_in_turn(manager, executor_id, seq_ids, num_blocks_each, block_size=4) -> None:
    """Each sequence takes one more block in turn, as concurrent decoding does."""
    for _ in range(num_blocks_each):
        for seq_id in seq_ids:
            manager.step(executor_id, [AppendOp(seq_id, [7] * block_size)])


def test_sequences_growing_together_each_fill_their_own_extent() -> None:
    manager, pool_id, ex, _ = make_manager(num_blocks=16, block_size_tokens=4, extent_blocks=4)
    manager.step(ex, [AllocateOp(1, [1] * 4), AllocateOp(2, [2] * 4)])
    grow_in_turn(manager, ex, [1, 2], 4)
    # Extent 0 for the first, 1 for the second; full, each moves on to the
    # oldest wholly free extent (2, then 3).
    assert table(manager, ex, 1) == [0, 1, 2, 3, 8]
    assert table(manager, ex, 2) == [4, 5, 6, 7, 12]
    # 3 of each table's 4 neighbouring pairs are consecutive.
    assert manager.get_stats(pool_id).consecutive_block_ratio == 6 / 8


def test_least_recently_used_order_without_extents() -> None:
    manager, pool_id, ex, _ = make_manager(num_blocks=16, block_size_tokens=4, extent_blocks=1)
    manager.step(ex, [AllocateOp(1, [1] * 4), AllocateOp(2, [2] * 4)])
    grow_in_turn(manager, ex, [1, 2], 2)
    assert table(manager, ex, 1) == [0, 2, 4]
    assert table(manager, ex, 2) == [1, 3, 5]
    assert manager.get_stats(pool_id).consecutive_block_ratio == 0.0


def test_new_sequences_leave_open_groups_alone() -> None:
    # Extents of 2 blocks in groups of 4: groups are blocks 0-7 and 8-15, both
    # open (their first two extents wholly free).
    manager, pool_id, ex, _ = make_manager(
        num_blocks=16, block_size_tokens=4, extent_blocks=2, group_extents=4
    )
    pool = manager.allocator(pool_id).block_pool
    assert pool.open_group_ids() == [0, 4]
    step = manager.step(ex, [AllocateOp(seq_id, [seq_id] * 4) for seq_id in (1, 2, 3)])
    # Extent 0 leads an open group: the first takes extent 1, which closes
    # the group; then extent 0 is an extent like any other.
    assert [result.new_block_ids for result in step.results] == [(2,), (0,), (4,)]
    assert pool.open_group_ids() == [4]


def test_a_sequence_that_outgrows_its_extent_grows_through_an_open_group() -> None:
    manager, pool_id, ex, _ = make_manager(
        num_blocks=16, block_size_tokens=4, extent_blocks=2, group_extents=4
    )
    manager.step(ex, [AllocateOp(seq_id, [seq_id] * 4) for seq_id in (1, 2, 3)])
    grow_in_turn(manager, ex, [2], 5)
    # Block 2 is taken: from extent 0 it moves to the open group (blocks
    # 8-15) and goes on through its extents.
    assert table(manager, ex, 2) == [0, 1, 8, 9, 10, 11]
    assert manager.allocator(pool_id).block_pool.open_group_ids() == []
    # In groups of one extent, each run ends with its extent.
    single, _, ex, _ = make_manager(num_blocks=16, block_size_tokens=4, extent_blocks=2)
    single.step(ex, [AllocateOp(seq_id, [seq_id] * 4) for seq_id in (1, 2, 3)])
    grow_in_turn(single, ex, [2], 5)
    assert table(single, ex, 2) == [2, 3, 6, 7, 8, 9]


def test_a_run_does_not_grow_into_the_next_group() -> None:
    # Extents of 2 blocks in groups of 2: groups are blocks 0-3, 4-7, 8-11, 12-15.
    manager, pool_id, ex, _ = make_manager(
        num_blocks=16, block_size_tokens=4, extent_blocks=2, group_extents=2
    )
    pool = manager.allocator(pool_id).block_pool
    for seq_id, block in ((1, 2), (2, 0), (3, 6), (4, 4), (5, 10)):
        step = manager.step(ex, [AllocateOp(seq_id, [seq_id] * 4)])
        assert step.results[0].new_block_ids == (block,)
    manager.step(ex, [FreeOp(2), FreeOp(1), FreeOp(4)])
    assert pool.open_group_ids() == [6, 0]
    assert pool.free_extent_ids() == [4, 6, 7, 0, 1, 2]
    # Block 8 is free, but it leads the next group (not open: block 10 is
    # taken); the run goes on in the group open the longest, then through it.
    grow_in_turn(manager, ex, [3], 4)
    assert table(manager, ex, 3) == [6, 7, 12, 13, 14]


def test_a_freed_extent_is_reused_after_older_ones() -> None:
    manager, pool_id, ex, _ = make_manager(num_blocks=12, block_size_tokens=4, extent_blocks=4)
    manager.step(ex, [AllocateOp(1, [1] * 8)])  # blocks 0, 1 of extent 0
    manager.step(ex, [FreeOp(1)])
    allocator = manager.allocator(pool_id)
    # Extent 0 came free again after 1 and 2 had been free all along.
    assert allocator.block_pool.free_extent_ids() == [1, 2, 0]
    assert manager.step(ex, [AllocateOp(2, [2] * 4)]).results[0].new_block_ids == (4,)


def test_no_wholly_free_extent_falls_back_to_the_queue_head_and_refuses_nothing() -> None:
    manager, pool_id, ex, _ = make_manager(num_blocks=8, block_size_tokens=4, extent_blocks=4)
    # Two sequences own one block of each extent; the other six are free.
    manager.step(ex, [AllocateOp(1, [1] * 4), AllocateOp(2, [2] * 4)])
    assert manager.allocator(pool_id).block_pool.free_extent_ids() == []
    head = free_queue(manager, pool_id)[0]
    step = manager.step(ex, [AllocateOp(3, [3] * 24)])  # all six
    assert step.results[0].ok and step.results[0].new_block_ids[0] == head
    assert sorted(table(manager, ex, 3)) == [1, 2, 3, 5, 6, 7]
    assert manager.num_free_blocks(pool_id) == 0


def test_a_rolled_back_step_leaves_placement_as_it_was() -> None:
    manager, pool_id, ex, _ = make_manager(num_blocks=16, block_size_tokens=4, extent_blocks=4)
    manager.step(ex, [AllocateOp(1, [1] * 4)])
    pool = manager.allocator(pool_id).block_pool
    before = (pool.free_block_ids(), pool.free_extent_ids())
    with pytest.raises(NotFoundError, match="seq_id"):
        manager.step(ex, [AppendOp(1, [1] * 8), AllocateOp(2, [2] * 4), AppendOp(99, [1])])
    assert (pool.free_block_ids(), pool.free_extent_ids()) == before
    assert manager.step(ex, [AllocateOp(2, [2] * 4)]).results[0].new_block_ids == (4,)


def test_the_service_places_by_its_default_extents() -> None:
    running = serve(BlockManagerConfig(port=0))
    try:
        with BlockManagerClient(f"127.0.0.1:{running.port}") as client:
            pool_id = client.register_pool(make_pool_info(num_blocks=256, block_size_tokens=4))
            ex = client.register_executor(pool_id).executor_id
            client.step(ex, [AllocateOp(1, [1] * 4), AllocateOp(2, [2] * 4)])
            # Four extents, one open group (module docstring of extents.py): the
            # first sequence leaves its leading extent alone, which closes it.
            second = DEFAULT_EXTENT_BLOCKS
            tables = {1: [second], 2: [0]}
            for _ in range(3):
                step = client.step(ex, [AppendOp(1, [1] * 4), AppendOp(2, [2] * 4)])
                for seq_id, result in zip((1, 2), step.results, strict=True):
                    tables[seq_id] += result.new_block_ids
            assert tables == {1: [second, second + 1, second + 2, second + 3], 2: [0, 1, 2, 3]}
            assert client.get_stats(pool_id).consecutive_block_ratio == 1.0
    finally:
        running.stop(grace_s=0.5)


@pytest.mark.parametrize("batch,context", [(3, 80), (8, 400)])
def test_a_served_workload_gets_whole_tables_in_runs(batch, context) -> None:
    """The decode benchmark's served tables: every measured sequence comes back
    whole, and extents lay it out in longer runs than LRU order does."""
    from benchmarks.served_tables import mean_run_blocks, served_block_tables

    runs = {}
    for extent_blocks in (1, 16):
        tables, _ = served_block_tables(batch, context, 16, extent_blocks, group_extents=1)
        assert len(tables) == batch
        assert all(len(table) == -(-context // 16) for table in tables)
        assert all(len(set(table)) == len(table) for table in tables)
        runs[extent_blocks] = mean_run_blocks(tables)
    assert runs[16] > 2 * runs[1]


def test_groups_lengthen_a_served_workloads_runs() -> None:
    """Sequences of 256 blocks in extents of 16: runs end with each extent in
    groups of one, and go on through the group's four extents in groups of 4."""
    from benchmarks.served_tables import mean_run_blocks, served_block_tables

    runs = {}
    for group_extents in (1, 4):
        tables, _ = served_block_tables(4, 4096, 16, 16, group_extents=group_extents)
        assert all(len(table) == 256 and len(set(table)) == 256 for table in tables)
        runs[group_extents] = mean_run_blocks(tables)
    assert runs[1] < 20 and runs[4] > 1.5 * runs[1]


def test_the_hit_rate_benchmark_finds_a_prefix_every_request_shares() -> None:
    """benchmarks/prefix_hits.py with one prefix: every placement finds it
    (at least 256 of each prompt's at most 2,304 tokens) in every request."""
    from benchmarks.prefix_hits import prefix_hit_rate

    for extent_blocks, group_extents in ((1, 1), (4, 1), (4, 4)):
        rate = prefix_hit_rate(
            extent_blocks, group_extents, seed=0, batch=4, num_prefixes=1,
            max_output=128, warm_up=4, requests=16,
        )  # fmt: skip
        assert 0.1 < rate <= 1.0
