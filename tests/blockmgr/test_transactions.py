"""Invalid input fails the whole Step with a typed error naming the op, and
leaves the state exactly as before, whatever the earlier ops did."""

from __future__ import annotations

import pytest

from pagedserve.blockmgr.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from pagedserve.blockmgr.ops import (
    AllocateOp,
    AppendOp,
    ComputedOp,
    ForkOp,
    FreeOp,
    SwapInOp,
    SwapOutOp,
)

from .helpers import make_manager
from .snapshot import snapshot

# Ops that change a lot before the bad op: allocation with a cache hit and an
# eviction, copy-on-write, swap-out, registration of computed blocks.
BUSY_PREFIX = [
    AllocateOp(10, [1, 2, 3, 4, 5, 6, 7, 8, 9]),
    ForkOp(1, 11),
    AppendOp(11, [42]),
    ComputedOp(1, 6),
    SwapOutOp(2),
    FreeOp(3),
    AllocateOp(12, [7, 7, 7, 7, 7]),
]

BAD_OPS = [
    (FreeOp(99), NotFoundError, "free.seq_id"),
    (FreeOp(3), NotFoundError, "free.seq_id"),  # double free: freed by BUSY_PREFIX
    (ForkOp(3, 20), NotFoundError, "fork.parent_seq_id"),
    (ForkOp(1, 2), AlreadyExistsError, "fork.child_seq_id"),
    (AllocateOp(1, [1]), AlreadyExistsError, "allocate.seq_id"),
    (AllocateOp(30, []), InvalidArgumentError, "allocate.token_ids"),
    (AllocateOp(30, [0] * 1000), InvalidArgumentError, "allocate.token_ids"),
    (AppendOp(1, []), InvalidArgumentError, "append.token_ids"),
    (AppendOp(2, [1]), FailedPreconditionError, "append.seq_id"),  # swapped out
    (ComputedOp(1, 100), FailedPreconditionError, "computed.num_computed_tokens"),
    (ComputedOp(1, 2), FailedPreconditionError, "computed.num_computed_tokens"),  # backwards
    (SwapOutOp(2), FailedPreconditionError, "swap_out.seq_id"),  # already swapped
    (SwapInOp(1), FailedPreconditionError, "swap_in.seq_id"),  # not swapped
    ("not an op", InvalidArgumentError, "no operation set"),
]


def _prepared():
    manager, pool_id, ex, clock = make_manager(num_blocks=16, num_swap_blocks=8)
    manager.step(
        ex,
        [
            AllocateOp(1, [1, 2, 3, 4, 5, 6, 7]),
            AllocateOp(2, [9, 9, 9, 9, 9]),
            AllocateOp(3, [5, 6]),
            ComputedOp(1, 4),
            AllocateOp(4, [1, 2, 3, 4, 0, 0, 0, 0, 1]),
            ComputedOp(4, 8),
            FreeOp(4),
        ],
    )
    return manager, ex


@pytest.mark.parametrize(("bad_op", "error_class", "field"), BAD_OPS)
def test_bad_op_after_busy_prefix_changes_nothing(bad_op, error_class, field) -> None:
    manager, ex = _prepared()
    before = snapshot(manager)
    with pytest.raises(error_class) as raised:
        manager.step(ex, [*BUSY_PREFIX, bad_op])
    assert f"ops[{len(BUSY_PREFIX)}]" in str(raised.value)
    assert field in str(raised.value)
    assert snapshot(manager) == before


def test_busy_prefix_alone_is_valid_and_changes_state() -> None:
    # Guards the test above: the prefix really mutates, so "unchanged" means rollback.
    manager, ex = _prepared()
    before = snapshot(manager)
    step = manager.step(ex, BUSY_PREFIX)
    assert all(result.ok for result in step.results)
    assert step.results[0].num_cached_tokens == 4
    assert step.copy_src_block_ids and step.swap_out_device_block_ids
    assert snapshot(manager) != before


def test_swap_out_after_a_copy_into_the_sequence_is_refused() -> None:
    manager, ex = _prepared()
    before = snapshot(manager)
    with pytest.raises(FailedPreconditionError, match=r"ops\[2\]: swap_out"):
        manager.step(ex, [ForkOp(1, 11), AppendOp(11, [1]), SwapOutOp(11)])
    with pytest.raises(FailedPreconditionError, match=r"ops\[2\]: swap_out"):
        manager.step(ex, [SwapOutOp(1), SwapInOp(1), SwapOutOp(1)])
    assert snapshot(manager) == before


def test_unknown_executor_is_not_found() -> None:
    manager, _ = _prepared()
    with pytest.raises(NotFoundError, match="executor_id"):
        manager.step("nobody", [FreeOp(1)])


def test_executors_cannot_see_each_others_sequences() -> None:
    manager, ex = _prepared()
    pool_id = manager.list_pools()[0].pool_id
    other = manager.register_executor(pool_id).executor_id
    with pytest.raises(NotFoundError):
        manager.step(other, [FreeOp(1)])
    # The same seq id is free for the other executor to use.
    step = manager.step(other, [AllocateOp(1, [1, 2, 3, 4, 5])])
    assert step.results[0].num_cached_tokens == 4  # the prefix cache is per pool
    assert manager.sequences(ex)[1].token_ids == [1, 2, 3, 4, 5, 6, 7]
