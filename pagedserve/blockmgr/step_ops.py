"""Validation of each Step op, then dispatch to the allocator.

Each function checks everything that can make its op invalid *before* the op
changes anything, and raises a typed error naming the op's index and field.
The manager undoes the earlier ops of the step when one raises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pagedserve.blockmgr.allocator import SequenceAllocator, Sequences
from pagedserve.blockmgr.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    op_error,
)
from pagedserve.blockmgr.ops import (
    AllocateOp,
    AppendOp,
    ComputedOp,
    ForkOp,
    FreeOp,
    OpResult,
    SwapInOp,
    SwapOutOp,
)
from pagedserve.blockmgr.sequence import Sequence


def max_sequence_tokens(allocator: SequenceAllocator) -> int:
    """Longest sequence the pool could ever hold; longer requests are invalid, not short."""
    return allocator.block_pool.num_blocks * allocator.block_size_tokens


def _live(sequences: Sequences, op_index: int, field: str, seq_id: int) -> Sequence:
    seq = sequences.get(seq_id)
    if seq is None:
        raise op_error(NotFoundError, op_index, f"{field}: no live sequence {seq_id}")
    return seq


def _on_device(sequences: Sequences, op_index: int, field: str, seq_id: int) -> Sequence:
    seq = _live(sequences, op_index, field, seq_id)
    if seq.host_block_ids is not None:
        raise op_error(
            FailedPreconditionError, op_index, f"{field}: sequence {seq_id} is swapped out"
        )
    return seq


def _check_new_tokens(
    allocator: SequenceAllocator, op_index: int, field: str, num_old_tokens: int, token_ids: Any
) -> None:
    if not token_ids:
        raise op_error(InvalidArgumentError, op_index, f"{field}: no tokens")
    limit = max_sequence_tokens(allocator)
    if num_old_tokens + len(token_ids) > limit:
        raise op_error(
            InvalidArgumentError,
            op_index,
            f"{field}: {num_old_tokens + len(token_ids)} tokens exceed the pool's {limit} token slots",
        )


def apply_allocate(
    allocator: SequenceAllocator, sequences: Sequences, op_index: int, op: AllocateOp
) -> OpResult:
    """Allocate: NOT an error when short of blocks (NO_ROOM)."""
    if op.seq_id in sequences:
        raise op_error(
            AlreadyExistsError, op_index, f"allocate.seq_id: sequence {op.seq_id} is live"
        )
    _check_new_tokens(allocator, op_index, "allocate.token_ids", 0, op.token_ids)
    return allocator.allocate(
        sequences, op.seq_id, list(op.token_ids), op.cache_salt, op.use_prefix_cache
    )


def apply_append(
    allocator: SequenceAllocator, sequences: Sequences, op_index: int, op: AppendOp
) -> OpResult:
    """Append to a device-resident sequence."""
    seq = _on_device(sequences, op_index, "append.seq_id", op.seq_id)
    _check_new_tokens(allocator, op_index, "append.token_ids", len(seq.token_ids), op.token_ids)
    return allocator.append(seq, op.token_ids)


def apply_computed(
    allocator: SequenceAllocator, sequences: Sequences, op_index: int, op: ComputedOp
) -> OpResult:
    """Computed count must stay within the sequence and never go backwards."""
    seq = _on_device(sequences, op_index, "computed.seq_id", op.seq_id)
    count = op.num_computed_tokens
    if count > len(seq.token_ids):
        raise op_error(
            FailedPreconditionError,
            op_index,
            f"computed.num_computed_tokens: {count} exceeds the sequence's {len(seq.token_ids)} tokens",
        )
    if count < seq.num_computed_tokens:
        raise op_error(
            FailedPreconditionError,
            op_index,
            f"computed.num_computed_tokens: {count} is below the {seq.num_computed_tokens} already computed",
        )
    return allocator.computed(seq, count)


def apply_fork(
    allocator: SequenceAllocator, sequences: Sequences, op_index: int, op: ForkOp
) -> OpResult:
    """The child id must be new; the parent live and on the device."""
    parent = _on_device(sequences, op_index, "fork.parent_seq_id", op.parent_seq_id)
    if op.child_seq_id in sequences:
        raise op_error(
            AlreadyExistsError, op_index, f"fork.child_seq_id: sequence {op.child_seq_id} is live"
        )
    return allocator.fork(sequences, parent, op.child_seq_id)


def apply_free(
    allocator: SequenceAllocator, sequences: Sequences, op_index: int, op: FreeOp
) -> OpResult:
    """Free a live sequence (device or swapped); a second free is NOT_FOUND."""
    seq = _live(sequences, op_index, "free.seq_id", op.seq_id)
    return allocator.free(sequences, seq)


def apply_swap_out(
    allocator: SequenceAllocator, sequences: Sequences, op_index: int, op: SwapOutOp
) -> OpResult:
    """Swap out a device sequence none of whose blocks this step already wrote by a copy."""
    seq = _on_device(sequences, op_index, "swap_out.seq_id", op.seq_id)
    if allocator.was_copied_into(seq):
        # The executor performs swap-outs before the other copies of a step, so
        # the swap-out would read the block before this step's copy fills it.
        raise op_error(
            FailedPreconditionError,
            op_index,
            f"swap_out.seq_id: sequence {op.seq_id} holds a block copied into earlier in this step",
        )
    return allocator.swap_out(seq)


def apply_swap_in(
    allocator: SequenceAllocator, sequences: Sequences, op_index: int, op: SwapInOp
) -> OpResult:
    """Swap in a swapped-out sequence."""
    seq = _live(sequences, op_index, "swap_in.seq_id", op.seq_id)
    if seq.host_block_ids is None:
        raise op_error(
            FailedPreconditionError,
            op_index,
            f"swap_in.seq_id: sequence {op.seq_id} is not swapped out",
        )
    return allocator.swap_in(seq)


OpApplier = Callable[[SequenceAllocator, Sequences, int, Any], OpResult]

APPLIERS: dict[type, OpApplier] = {
    AllocateOp: apply_allocate,
    AppendOp: apply_append,
    ComputedOp: apply_computed,
    ForkOp: apply_fork,
    FreeOp: apply_free,
    SwapOutOp: apply_swap_out,
    SwapInOp: apply_swap_in,
}


def apply_op(
    allocator: SequenceAllocator, sequences: Sequences, op_index: int, op: Any
) -> OpResult:
    """Validates and applies one op; raises InvalidArgumentError for an unknown op type."""
    applier = APPLIERS.get(type(op))
    if applier is None:
        raise op_error(InvalidArgumentError, op_index, f"no operation set ({type(op).__name__})")
    return applier(allocator, sequences, op_index, op)
