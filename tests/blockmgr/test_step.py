"""Step semantics through the core: append, copy-on-write, fork, swap,
running out of blocks, and exact block ids for small cases."""

from __future__ import annotations

from pagedserve.blockmgr.ops import (
    NO_ROOM,
    AllocateOp,
    AppendOp,
    ComputedOp,
    ForkOp,
    FreeOp,
    SwapInOp,
    SwapOutOp,
)

from .helpers import free_queue, held, make_manager, table


def test_allocate_takes_ceil_blocks_and_append_adds_at_boundaries() -> None:
    manager, pool_id, ex, _ = make_manager()
    step = manager.step(ex, [AllocateOp(1, [1, 2, 3, 4, 5])])
    assert step.results[0].new_block_ids == (0, 1)
    assert step.num_free_blocks == 6
    step = manager.step(ex, [AppendOp(1, [6, 7, 8]), AppendOp(1, [9])])
    assert step.results[0].new_block_ids == ()
    assert step.results[1].new_block_ids == (2,)
    assert table(manager, ex, 1) == [0, 1, 2]


def test_fork_shares_blocks_and_append_copies_the_partial_last_block() -> None:
    manager, pool_id, ex, _ = make_manager()
    manager.step(ex, [AllocateOp(1, [1, 2, 3, 4, 5, 6])])
    step = manager.step(ex, [ForkOp(1, 2)])
    assert step.results[0].new_block_ids == (0, 1)
    stats = manager.get_stats(pool_id)
    assert (stats.used_blocks, stats.shared_blocks, stats.logical_blocks) == (2, 2, 4)

    step = manager.step(ex, [AppendOp(2, [7])])
    result = step.results[0]
    assert result.replaced_positions == (1,) and result.replaced_block_ids == (2,)
    assert (step.copy_src_block_ids, step.copy_dst_block_ids) == ([1], [2])
    assert table(manager, ex, 1) == [0, 1] and table(manager, ex, 2) == [0, 2]
    # Block 1 is no longer shared: the parent writes into it without a copy.
    step = manager.step(ex, [AppendOp(1, [8])])
    assert step.copy_src_block_ids == [] and step.results[0].replaced_positions == ()


def test_full_shared_block_is_never_copied() -> None:
    manager, _, ex, _ = make_manager()
    manager.step(ex, [AllocateOp(1, [1, 2, 3, 4]), ForkOp(1, 2)])
    step = manager.step(ex, [AppendOp(2, [5])])
    assert step.copy_src_block_ids == []
    assert step.results[0].new_block_ids == (1,)
    assert table(manager, ex, 2) == [0, 1]


def test_out_of_blocks_fails_only_that_op_and_later_ops_run() -> None:
    manager, pool_id, ex, _ = make_manager(num_blocks=4)
    step = manager.step(
        ex, [AllocateOp(1, list(range(12))), AllocateOp(2, list(range(8))), AllocateOp(3, [1])]
    )
    assert step.results[0].new_block_ids == (0, 1, 2)
    assert step.results[1] == NO_ROOM
    assert step.results[2].new_block_ids == (3,)
    assert 2 not in manager.sequences(ex)
    assert step.num_free_blocks == 0
    assert manager.step(ex, [AppendOp(3, [2, 3, 4, 5])]).results[0] == NO_ROOM
    assert len(manager.sequences(ex)[3].token_ids) == 1


def test_copy_on_write_needs_a_free_block() -> None:
    manager, _, ex, _ = make_manager(num_blocks=2)
    manager.step(ex, [AllocateOp(1, [1, 2, 3, 4, 5]), ForkOp(1, 2)])
    step = manager.step(ex, [AppendOp(2, [6])])
    assert step.results[0] == NO_ROOM and step.copy_src_block_ids == []


def test_free_then_allocate_in_one_step_reuses_blocks() -> None:
    manager, pool_id, ex, _ = make_manager(num_blocks=2)
    manager.step(ex, [AllocateOp(1, [1, 2, 3, 4, 5])])
    step = manager.step(ex, [FreeOp(1), AllocateOp(2, [9, 9, 9, 9, 9])])
    assert step.results[1].new_block_ids == (1, 0)


def test_swap_out_and_in_with_exact_ids() -> None:
    manager, pool_id, ex, _ = make_manager()
    manager.step(ex, [AllocateOp(1, [1, 2, 3, 4, 5]), AllocateOp(2, [6])])
    step = manager.step(ex, [SwapOutOp(1)])
    assert step.swap_out_device_block_ids == [0, 1]
    assert step.swap_out_host_block_ids == [0, 1]
    assert manager.get_stats(pool_id).swapped_blocks == 2
    # The sources stay out of reach of other executors until this executor's
    # next step shows it has copied them out; then they rejoin the queue.
    assert free_queue(manager, pool_id) == [3, 4, 5, 6, 7]
    assert held(manager, ex) == [1, 0]
    assert step.num_free_blocks == 7
    step = manager.step(ex, [SwapInOp(1)])
    assert step.results[0].new_block_ids == (3, 4)
    assert (step.swap_in_host_block_ids, step.swap_in_device_block_ids) == ([0, 1], [3, 4])
    assert manager.get_stats(pool_id).swapped_blocks == 0
    assert free_queue(manager, pool_id) == [5, 6, 7, 1, 0]


def test_swap_needs_room_on_the_other_side() -> None:
    manager, _, ex, _ = make_manager(num_blocks=4, num_swap_blocks=1)
    manager.step(ex, [AllocateOp(1, [1, 2, 3, 4, 5])])
    assert manager.step(ex, [SwapOutOp(1)]).results[0] == NO_ROOM
    manager2, _, ex2, _ = make_manager(num_blocks=2, num_swap_blocks=4)
    manager2.step(ex2, [AllocateOp(1, [1, 2, 3, 4, 5]), SwapOutOp(1), AllocateOp(2, [7])])
    assert manager2.step(ex2, [SwapInOp(1)]).results[0] == NO_ROOM


def test_forks_swapped_together_share_their_full_blocks_copies() -> None:
    # Block size 4: tokens 1-4 fill block 0, token 5 sits alone in block 1.
    manager, pool_id, ex, _ = make_manager(num_blocks=6, num_swap_blocks=6)
    manager.step(ex, [AllocateOp(1, [1, 2, 3, 4, 5]), ForkOp(1, 2)])
    step = manager.step(ex, [SwapOutOp(1), SwapOutOp(2)])
    # One host copy of the full block for both; the partly filled one, which
    # either fork may write next, is copied for each.
    assert step.swap_out_device_block_ids == [0, 1, 1]
    assert step.swap_out_host_block_ids == [0, 1, 2]
    stats = manager.get_stats(pool_id)
    assert (stats.used_blocks, stats.swapped_blocks) == (0, 3)
    step = manager.step(ex, [SwapInOp(1), SwapInOp(2)])
    assert step.results[0].new_block_ids == (2, 3)
    assert step.results[1].new_block_ids == (2, 4)  # block 2 is shared again
    assert (step.swap_in_host_block_ids, step.swap_in_device_block_ids) == ([0, 1, 2], [2, 3, 4])
    stats = manager.get_stats(pool_id)
    assert (stats.used_blocks, stats.shared_blocks, stats.swapped_blocks) == (3, 1, 0)
    step = manager.step(ex, [AppendOp(2, [6])])
    assert step.copy_src_block_ids == []  # its last block is its own


def test_forks_swapped_in_apart_take_copies_of_their_own() -> None:
    manager, pool_id, ex, _ = make_manager(num_blocks=6, num_swap_blocks=6)
    manager.step(ex, [AllocateOp(1, [1, 2, 3, 4, 5]), ForkOp(1, 2)])
    manager.step(ex, [SwapOutOp(1), SwapOutOp(2)])
    step = manager.step(ex, [SwapInOp(2)])
    assert (step.swap_in_host_block_ids, step.swap_in_device_block_ids) == ([0, 2], [2, 3])
    # Host block 0 still holds sequence 1's first block.
    assert manager.get_stats(pool_id).swapped_blocks == 2
    step = manager.step(ex, [SwapInOp(1)])
    assert (step.swap_in_host_block_ids, step.swap_in_device_block_ids) == ([0, 1], [4, 5])
    stats = manager.get_stats(pool_id)
    assert (stats.used_blocks, stats.shared_blocks, stats.swapped_blocks) == (4, 0, 0)


def test_a_freed_fork_leaves_the_shared_host_copy_to_the_other() -> None:
    manager, pool_id, ex, _ = make_manager(num_blocks=6, num_swap_blocks=3)
    manager.step(ex, [AllocateOp(1, [1, 2, 3, 4, 5]), ForkOp(1, 2)])
    manager.step(ex, [SwapOutOp(1), SwapOutOp(2)])
    manager.step(ex, [FreeOp(1)])
    assert manager.get_stats(pool_id).swapped_blocks == 2
    # Host block 1 (sequence 1's own) is free again; 0 and 2 are sequence 2's.
    step = manager.step(ex, [AllocateOp(3, [9]), SwapOutOp(3)])
    assert step.swap_out_host_block_ids == [1]
    step = manager.step(ex, [SwapInOp(2)])
    assert step.swap_in_host_block_ids == [0, 2]


def test_swap_outs_share_only_within_a_run_of_swap_outs() -> None:
    manager, pool_id, ex, _ = make_manager(num_blocks=8, num_swap_blocks=6)
    manager.step(ex, [AllocateOp(1, [1, 2, 3, 4, 5]), ForkOp(1, 2)])
    step = manager.step(ex, [SwapOutOp(1), SwapInOp(1), SwapOutOp(2)])
    # The swap-in between them took host block 0's one reference (it is freed
    # when the step ends): sequence 2 takes a copy of its own.
    assert step.swap_out_host_block_ids == [0, 1, 2, 3]
    assert manager.get_stats(pool_id).swapped_blocks == 2
    step = manager.step(ex, [SwapInOp(2)])
    assert step.swap_in_host_block_ids == [2, 3]


def test_swap_ins_share_only_within_a_run_of_swap_ins() -> None:
    manager, pool_id, ex, _ = make_manager(num_blocks=8, num_swap_blocks=6)
    manager.step(ex, [AllocateOp(1, [1, 2, 3, 4, 5]), ForkOp(1, 2)])
    manager.step(ex, [SwapOutOp(1), SwapOutOp(2)])
    step = manager.step(ex, [SwapInOp(1), FreeOp(1), SwapInOp(2)])
    # The free between them released sequence 1's copy of host block 0 (it
    # could be handed out again): sequence 2 takes a copy of its own.
    assert step.swap_in_host_block_ids == [0, 1, 0, 2]
    assert len(set(step.swap_in_device_block_ids)) == 4
    stats = manager.get_stats(pool_id)
    assert (stats.used_blocks, stats.shared_blocks, stats.swapped_blocks) == (2, 0, 0)


def test_a_swap_in_never_shares_a_block_handed_out_again_in_its_step() -> None:
    # Extents of two blocks: sequence 3's allocation runs on into block 2,
    # which sequence 1's swap-in filled from host block 0 and its free released.
    manager, _, ex, _ = make_manager(num_blocks=4, num_swap_blocks=8, extent_blocks=2)
    manager.step(ex, [AllocateOp(1, [1, 2, 3, 4, 5]), ForkOp(1, 2)])
    manager.step(ex, [SwapOutOp(1), SwapOutOp(2)])
    step = manager.step(ex, [SwapInOp(1), FreeOp(1), AllocateOp(3, [7] * 9), SwapInOp(2)])
    assert step.results[2].new_block_ids == (0, 1, 2)
    # Block 2 holds sequence 3's keys now: sequence 2 needs two fresh blocks,
    # and one is free.
    assert step.results[3] == NO_ROOM


def test_forks_swapped_out_apart_take_copies_of_their_own() -> None:
    manager, _, ex, _ = make_manager(num_blocks=6, num_swap_blocks=6)
    manager.step(ex, [AllocateOp(1, [1, 2, 3, 4, 5]), ForkOp(1, 2)])
    manager.step(ex, [SwapOutOp(1)])
    step = manager.step(ex, [SwapOutOp(2)])
    assert (step.swap_out_device_block_ids, step.swap_out_host_block_ids) == ([0, 1], [2, 3])


def test_swap_out_frees_room_for_an_append_in_the_same_step() -> None:
    manager, _, ex, _ = make_manager(num_blocks=2, num_swap_blocks=2)
    manager.step(ex, [AllocateOp(1, [1, 2, 3, 4]), AllocateOp(2, [5, 6, 7, 8])])
    step = manager.step(ex, [SwapOutOp(2), AppendOp(1, [9])])
    assert step.results[1].new_block_ids == (1,)
    assert step.swap_out_device_block_ids == [1]


def test_copy_source_is_not_handed_out_again_in_the_same_step() -> None:
    # Fork, copy-on-write, then free the parent: the copy source must keep its
    # contents until the executor has copied it, and swap-ins run before copies,
    # so a swap-in of the same step must not get it.
    manager, pool_id, ex, _ = make_manager(num_blocks=3, num_swap_blocks=4)
    manager.step(ex, [AllocateOp(9, [1]), SwapOutOp(9), AllocateOp(1, [1, 2])])
    assert table(manager, ex, 1) == [1] and free_queue(manager, pool_id) == [2]
    assert held(manager, ex) == [0]  # swapped out of: back at ex's next step
    step = manager.step(
        ex, [ForkOp(1, 2), AppendOp(2, [3]), FreeOp(1), AllocateOp(5, [7]), SwapInOp(9)]
    )
    assert (step.copy_src_block_ids, step.copy_dst_block_ids) == ([1], [2])
    assert step.results[3].new_block_ids == (0,)
    assert step.results[4] == NO_ROOM
    # After the step the source waits for this executor's next step.
    assert free_queue(manager, pool_id) == [] and held(manager, ex) == [1]
    assert manager.step(ex, [SwapInOp(9)]).results[0].new_block_ids == (1,)


def test_computed_then_stats_report_cached_blocks() -> None:
    manager, pool_id, ex, _ = make_manager()
    manager.step(ex, [AllocateOp(1, list(range(10))), ComputedOp(1, 10), FreeOp(1)])
    stats = manager.get_stats(pool_id)
    assert (stats.free_blocks, stats.used_blocks, stats.cached_blocks) == (6, 0, 2)
    assert stats.free_blocks + stats.used_blocks + stats.cached_blocks == stats.total_blocks


def test_kv_utilization_counts_filled_slots_of_used_blocks() -> None:
    manager, pool_id, ex, _ = make_manager()
    manager.step(ex, [AllocateOp(1, [1, 2, 3, 4, 5]), ForkOp(1, 2)])
    # Two used blocks, 8 slots, 5 hold tokens (the shared ones count once).
    assert manager.get_stats(pool_id).kv_utilization == 5 / 8


def test_copy_ends_are_kept_from_other_executors_until_the_next_step() -> None:
    manager, pool_id, ex, _ = make_manager(num_blocks=3, num_swap_blocks=4)
    other = manager.register_executor(pool_id).executor_id
    manager.step(ex, [AllocateOp(1, [1, 2, 3, 4, 5])])
    step = manager.step(ex, [SwapOutOp(1)])
    assert step.swap_out_device_block_ids == [0, 1]
    # The other executor must not get (and overwrite) 0 or 1 before ex has
    # performed the swap-out copies: only block 2 is available to it.
    assert not manager.can_allocate(pool_id, 2)
    assert manager.step(other, [AllocateOp(7, [9, 9, 9, 9, 9])]).results[0].ok is False
    assert manager.step(other, [AllocateOp(7, [9])]).results[0].new_block_ids == (2,)
    # ex's next step releases them, whatever it contains.
    manager.step(ex, [])
    assert free_queue(manager, pool_id) == [1, 0] and held(manager, ex) == []
    assert manager.step(other, [AllocateOp(8, [9, 9])]).results[0].new_block_ids == (1,)


def test_leaving_releases_held_blocks() -> None:
    manager, pool_id, ex, _ = make_manager(num_blocks=2, num_swap_blocks=2)
    manager.step(ex, [AllocateOp(1, [1, 2, 3, 4, 5]), SwapOutOp(1)])
    stats = manager.get_stats(pool_id)
    assert (stats.free_blocks, stats.used_blocks, stats.swapped_blocks) == (2, 0, 2)
    assert manager.unregister_executor(ex) == 1
    assert sorted(free_queue(manager, pool_id)) == [0, 1]
